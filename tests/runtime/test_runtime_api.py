"""Custom runtimes (`provided.*`): a real `bootstrap` speaking the Runtime API to RuntimeApiProcess.

The Python bootstrap uses only urllib, the way a user's own runtime would; the shell one is the
classic curl loop of Lambda's tutorial.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lamina_runtime.factory import environment_for, is_custom_runtime
from lamina_runtime.process import WorkerProcess
from lamina_runtime.protocol import InvocationResult
from lamina_runtime.runtime_api import RuntimeApiProcess, bootstrap_command, find_bootstrap

from .conftest import call

BOOTSTRAP = f"""\
#!{sys.executable}
import json, os, sys, traceback, urllib.request

API = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime"


def post(path, body, headers=None):
    request = urllib.request.Request(API + path, data=body, headers=headers or {{}}, method="POST")
    with urllib.request.urlopen(request) as response:
        return response.status


def fail(path, exc, kind):
    stack = traceback.format_tb(exc.__traceback__)
    error = {{"errorMessage": str(exc), "errorType": type(exc).__name__, "stackTrace": stack}}
    post(path, json.dumps(error).encode(), {{"Lambda-Runtime-Function-Error-Type": kind}})


sys.path.insert(0, os.environ["LAMBDA_TASK_ROOT"])
module, name = os.environ["_HANDLER"].rsplit(".", 1)
try:
    handler = getattr(__import__(module), name)
except Exception as exc:
    fail("/init/error", exc, "Runtime.InitError")
    sys.exit(1)

while True:
    with urllib.request.urlopen(API + "/invocation/next") as response:
        request_id = response.headers["Lambda-Runtime-Aws-Request-Id"]
        context = {{k.lower(): v for k, v in response.headers.items()}}
        event = json.loads(response.read())
    try:
        result = handler(event, context)
    except Exception as exc:
        fail(f"/invocation/{{request_id}}/error", exc, "Unhandled")
    else:
        post(f"/invocation/{{request_id}}/response", json.dumps(result).encode())
"""

FUNCTION = """\
import os, sys, time, urllib.error, urllib.request

print("init output", flush=True)
INITS = 0
INITS += 1


class CardDeclined(Exception):
    pass


def handler(event, context):
    action = event.get("action")
    if action == "fail":
        raise CardDeclined("card 4242 declined")
    if action == "exit":
        print("about to exit", flush=True)
        os._exit(3)
    if action == "sleep":
        print("sleeping", flush=True)
        time.sleep(30)
    if action == "print":
        print("to stdout", flush=True)
        print("to stderr", file=sys.stderr, flush=True)
    if action == "big":
        return "x" * 7_000_000
    if action == "bogus":
        api = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime"
        request = urllib.request.Request(api + "/invocation/no-such-id/response", data=b"{}", method="POST")
        try:
            urllib.request.urlopen(request)
        except urllib.error.HTTPError as exc:
            return {"status": exc.code, "body": exc.read().decode()}
    return {
        "event": event,
        "pid": os.getpid(),
        "inits": INITS,
        "headers": context,
        "env": {k: os.environ.get(k) for k in ("_HANDLER", "LAMBDA_TASK_ROOT", "AWS_EXECUTION_ENV", "X")},
        "now_ms": int(time.time() * 1000),
    }
"""

SHELL_BOOTSTRAP = """\
#!/bin/sh
set -eu
API="http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime"
while true; do
  HEADERS="$(mktemp)"
  EVENT_DATA=$(curl -sS -LD "$HEADERS" "$API/invocation/next")
  REQUEST_ID=$(grep -Fi Lambda-Runtime-Aws-Request-Id "$HEADERS" | tr -d '[:space:]' | cut -d: -f2)
  rm -f "$HEADERS"
  echo "handling $REQUEST_ID"
  curl -sS -o /dev/null "$API/invocation/$REQUEST_ID/response" -d "{\\"echo\\": $EVENT_DATA}"
done
"""

INIT_FAILS = "raise RuntimeError('no database configured')\n"


def _write(path: Path, text: str, executable: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    if executable:
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def task_root(tmp_path: Path) -> Callable[..., str]:
    """task_root(function=FUNCTION, bootstrap=BOOTSTRAP) -> a code dir with an executable bootstrap."""

    def make(function: str = FUNCTION, bootstrap: str = BOOTSTRAP, name: str = "code") -> str:
        root = tmp_path / name
        _write(root / "bootstrap", bootstrap, executable=True)
        _write(root / "function.py", function)
        return str(root)

    return make


@pytest.fixture
def make_env(make_worker) -> Callable[..., RuntimeApiProcess]:
    def make(code_dir: str, handler: str = "function.handler", **kwargs: object) -> RuntimeApiProcess:
        return make_worker(code_dir, handler, RuntimeApiProcess, **kwargs)

    return make


def report(result: InvocationResult) -> str:
    line = result.log.splitlines()[-1]
    assert line.startswith(f"REPORT RequestId: {result.request_id}\t")
    return line


async def test_success_returns_the_result_with_lambda_log_lines(task_root, make_env) -> None:
    env = make_env(task_root(), env={"X": "x"})
    init_ms = await env.start()
    assert init_ms > 0
    first, body = await call(env, {"n": 1})
    assert first.function_error is None
    assert body["event"] == {"n": 1} and body["inits"] == 1
    assert body["env"] == {
        "_HANDLER": "function.handler",
        "LAMBDA_TASK_ROOT": env.code_dir,
        "AWS_EXECUTION_ENV": None,
        "X": "x",
    }
    lines = first.log.splitlines()
    rid = first.request_id
    assert lines[0].startswith(
        "INIT_START Runtime Version: provided:al2023\tRuntime Version ARN: arn:aws:lambda:"
    )
    assert lines[1] == "init output"  # INIT's output leads the first invocation's log
    assert lines[2] == f"START RequestId: {rid} Version: $LATEST"
    assert lines[-2] == f"END RequestId: {rid}"
    assert f"Init Duration: {init_ms:.2f} ms" in report(first)
    assert first.init_duration_ms == pytest.approx(init_ms)
    assert first.max_memory_mb > 0

    second, body2 = await call(env, {"n": 2})
    assert body2["pid"] == body["pid"] and body2["inits"] == 1  # warm: same process, no new INIT
    assert second.init_duration_ms is None and "Init Duration" not in report(second)
    assert second.log.splitlines()[0] == f"START RequestId: {second.request_id} Version: $LATEST"
    assert env.invocations == 2 and not env.needs_restart


async def test_provisioned_environment_reports_no_init_duration(task_root, make_env) -> None:
    env = make_env(task_root(), env={"AWS_LAMBDA_INITIALIZATION_TYPE": "provisioned-concurrency"})
    await env.start()
    result, _ = await call(env)
    assert result.init_duration_ms is None and "Init Duration" not in report(result)


async def test_next_carries_lambda_headers(task_root, make_env) -> None:
    env = make_env(task_root(), function_name="custom", timeout_s=5)
    custom = {"custom": {"tenant": "t1"}, "client": {}, "env": {}}
    encoded = base64.b64encode(json.dumps(custom).encode()).decode()
    before = int(time.time() * 1000)
    result, body = await call(env, client_context=encoded)
    headers = body["headers"]
    assert headers["lambda-runtime-aws-request-id"] == result.request_id
    deadline = int(headers["lambda-runtime-deadline-ms"])
    assert body["now_ms"] < deadline <= before + 5000 + 1000
    assert (
        headers["lambda-runtime-invoked-function-arn"]
        == "arn:aws:lambda:us-east-1:000000000000:function:custom"
    )
    assert headers["lambda-runtime-trace-id"].startswith("Root=1-")
    assert json.loads(headers["lambda-runtime-client-context"]) == custom
    _, plain = await call(env)
    assert "lambda-runtime-client-context" not in plain["headers"]


async def test_error_post_is_an_unhandled_function_error(task_root, make_env) -> None:
    env = make_env(task_root())
    result, body = await call(env, {"action": "fail"})
    assert result.function_error == "Unhandled"
    assert result.error_type == "CardDeclined"
    assert body["errorType"] == "CardDeclined" and body["errorMessage"] == "card 4242 declined"
    assert any("raise CardDeclined" in line for line in body["stackTrace"])
    assert "Status:" not in report(result)  # the runtime answered: a function error, not a platform one
    ok, _ = await call(env)  # the environment survives a function error
    assert ok.function_error is None


async def test_unknown_request_id_is_refused_with_400(task_root, make_env) -> None:
    env = make_env(task_root())
    _, body = await call(env, {"action": "bogus"})
    assert body["status"] == 400
    assert json.loads(body["body"])["errorType"] == "InvalidRequestID"


async def test_a_response_over_6_mb_is_refused_with_413(task_root, make_env) -> None:
    env = make_env(task_root())
    result, body = await call(env, {"action": "big"})
    assert result.error_type == "Function.ResponseSizeTooLarge"
    assert "(6291556 bytes)" in body["errorMessage"]


async def test_init_error_is_the_first_invocations_result(task_root, make_env) -> None:
    env = make_env(task_root(function=INIT_FAILS))
    await env.start()
    result, body = await call(env)
    assert result.function_error == "Unhandled"
    assert body["errorType"] == "RuntimeError" and body["errorMessage"] == "no database configured"
    assert body["requestId"] == result.request_id
    assert "Init Duration" in report(result) and report(result).endswith(
        "Status: error\tError Type: RuntimeError"
    )
    assert (
        "INIT_REPORT Init Duration: " in result.log
        and "\tPhase: init\tStatus: error\tError Type: RuntimeError" in result.log
    )
    assert not env.alive


EXIT_3 = "Error: Runtime exited with error: exit status 3"


@pytest.mark.parametrize(
    ("action", "error_type", "error", "printed", "status"),
    [
        (
            "exit",
            "Runtime.ExitError",
            "Error: Runtime exited with error: exit status 3",
            "about to exit",
            "error",
        ),
        ("sleep", "Sandbox.Timedout", "Error: Task timed out after 1.00 seconds", "sleeping", "timeout"),
    ],
)
async def test_exit_or_timeout_resets_the_environment(
    task_root, make_env, action: str, error_type: str, error: str, printed: str, status: str
) -> None:
    """The bootstrap exiting mid-invocation or overrunning the timeout (killed) fails the invocation;
    the next one starts a fresh environment and pays a new INIT."""
    env = make_env(task_root(), timeout_s=1)
    _, first = await call(env)
    started = time.monotonic()
    result, body = await call(env, {"action": action})
    assert time.monotonic() - started < 5
    rid = result.request_id
    assert result.error_type == error_type
    assert body == {"errorType": error_type, "errorMessage": f"RequestId: {rid} {error}"}
    lines = result.log.splitlines()
    start = lines.index(f"START RequestId: {rid} Version: $LATEST")
    assert lines[start + 1] == printed  # what it printed first, then the platform's lines
    if action == "sleep":
        assert lines[start + 2].endswith(f"{rid} Task timed out after 1.00 seconds")
    assert report(result).endswith(
        f"Status: {status}" + ("\tError Type: Runtime.ExitError" if status == "error" else "")
    )
    assert env.needs_restart
    after, again = await call(env)
    assert after.function_error is None and again["pid"] != first["pid"]
    assert after.init_duration_ms is not None


async def test_stdout_and_stderr_of_the_bootstrap_are_in_the_invocation_log(
    task_root, tmp_path, make_env
) -> None:
    out = tmp_path / "container.log"
    with out.open("wb") as sink:
        env = make_env(task_root(), stdout=sink)
        result, _ = await call(env, {"action": "print"})
        await env.stop()
    rid = result.request_id
    lines = result.log.splitlines()
    start = lines.index(f"START RequestId: {rid} Version: $LATEST")
    assert lines[start + 1 : start + 3] == ["to stdout", "to stderr"]
    assert lines[start + 3] == f"END RequestId: {rid}"
    container = out.read_text()  # the real stdout got the same lines, platform lines included
    assert "to stdout\nto stderr\n" in container and f"REPORT RequestId: {rid}" in container


async def test_missing_bootstrap_is_an_invalid_entrypoint(tmp_path, make_env) -> None:
    _write(tmp_path / "code" / "function.py", FUNCTION)
    env = make_env(str(tmp_path / "code"))
    result, body = await call(env)
    assert result.error_type == "Runtime.InvalidEntrypoint"
    assert "Couldn't find valid bootstrap(s)" in body["errorMessage"]


async def test_a_bootstrap_without_exec_bit_runs_through_its_shebang(tmp_path, make_env) -> None:
    root = tmp_path / "code"
    _write(root / "bootstrap", BOOTSTRAP)  # as a ConfigMap or an extracted zip leaves it: 0644
    _write(root / "function.py", FUNCTION)
    env = make_env(str(root))
    result, body = await call(env, {"n": 1})
    assert result.function_error is None and body["event"] == {"n": 1}


@pytest.mark.skipif(shutil.which("curl") is None, reason="the shell bootstrap needs curl on PATH")
async def test_shell_bootstrap_with_curl(task_root, make_env) -> None:
    env = make_env(task_root(bootstrap=SHELL_BOOTSTRAP))
    result, body = await call(env, {"hello": "sh"})
    assert result.function_error is None
    assert body == {"echo": {"hello": "sh"}}
    assert f"handling {result.request_id}" in result.log.splitlines()
    second, body2 = await call(env, {"n": 2})
    assert body2 == {"echo": {"n": 2}} and second.init_duration_ms is None


def test_bootstrap_is_found_in_the_task_root_then_the_latest_layer(tmp_path: Path) -> None:
    root, early, late = tmp_path / "task", tmp_path / "layer1", tmp_path / "layer2"
    for d in (root, early, late):
        d.mkdir()
    assert find_bootstrap(str(root), [str(early), str(late)]) is None
    (early / "bootstrap").write_text("#!/bin/sh\n")
    assert find_bootstrap(str(root), [str(early), str(late)]) == str(early / "bootstrap")
    (late / "bootstrap").write_text("#!/bin/sh\n")  # a later layer overrides an earlier one, as in /opt
    assert find_bootstrap(str(root), [str(early), str(late)]) == str(late / "bootstrap")
    (root / "bootstrap").write_text("#!/usr/bin/env python3 -u\n")
    assert find_bootstrap(str(root), [str(early), str(late)]) == str(root / "bootstrap")
    assert bootstrap_command(str(root / "bootstrap")) == [
        "/usr/bin/env",
        "python3 -u",
        str(root / "bootstrap"),
    ]
    os.chmod(root / "bootstrap", 0o755)
    assert bootstrap_command(str(root / "bootstrap")) == [str(root / "bootstrap")]
    (late / "bootstrap").write_bytes(b"\x7fELF")
    assert bootstrap_command(str(late / "bootstrap")) is None


def test_factory_picks_the_environment_by_runtime(tmp_path: Path) -> None:
    for runtime in ("provided.al2023", "provided.al2", "provided"):
        assert is_custom_runtime(runtime)
        assert type(environment_for(runtime, "function.handler", str(tmp_path))) is RuntimeApiProcess
    for runtime in ("python3.12", "python3.11", None, ""):
        assert not is_custom_runtime(runtime)
        env = environment_for(runtime, "index.handler", str(tmp_path), (), {"A": "1"}, memory_mb=256)
        assert type(env) is WorkerProcess and env.memory_mb == 256 and env.user_env == {"A": "1"}
