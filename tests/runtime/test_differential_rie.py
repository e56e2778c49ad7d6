"""Differential test: the same handlers through AWS's Runtime Interface Emulator driving AWS's runtime
interface client (the Go module aws-lambda-runtime-interface-emulator built by scripts/build-rie, and
awslambdaric from PyPI), and through lamina's runtime. Error shapes, log lines, context fields and
environment variable names are compared; where lamina deliberately differs (it follows Lambda more
closely than the emulator does) the expected difference is written down with its one-line reason.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lamina_runtime.process import WorkerProcess
from lamina_runtime.protocol import InvocationRequest

pytestmark = pytest.mark.builds("rie")

REPO = Path(__file__).resolve().parents[2]
FUNCTION = "differential"

APP = """
import logging, os, sys

log = logging.getLogger("app")
print("module loaded")

def describe(event, context):
    print("handling", event.get("n"))
    log.warning("warned %s", event.get("n"))
    return {
        "public": sorted(n for n in dir(context) if not n.startswith("_")),
        "function_name": context.function_name,
        "function_version": context.function_version,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "invoked_function_arn": context.invoked_function_arn,
        "aws_request_id": context.aws_request_id,
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
        "remaining_ok": 0 < context.get_remaining_time_in_millis() <= 10000,
        "client_context": context.client_context,
        "identity": [context.identity.cognito_identity_id, context.identity.cognito_identity_pool_id],
        "w3c": context.w3c(),
        "tenant_id": context.tenant_id,
        "env": sorted(k for k in os.environ if k.startswith(("AWS_", "LAMBDA_", "_")) or k in ("TZ", "LANG")),
    }

def fails(event, context):
    raise KeyError("action")

def unserialisable(event, context):
    return {"items": {1, 2}}

def raw(event, context):
    return b"raw bytes"

def exits(event, context):
    os._exit(3)
"""

#: Lambda reserved variables lamina sets and the emulator does not, each with why.
ONLY_LAMINA_ENV = {
    "AWS_REGION": "Lambda sets the region (reserved variable); the emulator leaves it out",
    "AWS_DEFAULT_REGION": "Lambda sets it beside AWS_REGION; the emulator leaves it out",
    "AWS_EXECUTION_ENV": "Lambda names the runtime (AWS_Lambda_python3.x); the emulator leaves it out",
    "AWS_LAMBDA_INITIALIZATION_TYPE": "Lambda says on-demand or provisioned-concurrency; the emulator not",
    "LAMBDA_TASK_ROOT": "Lambda's reserved variable for the code's directory; the emulator omits it",
    "LAMBDA_RUNTIME_DIR": "Lambda's reserved variable for the runtime's directory; the emulator omits it",
    "TZ": "Lambda runs functions in UTC and says so in TZ; the emulator inherits the host's zone",
}
#: Variables the emulator sets and lamina's Python runtime does not, each with why.
ONLY_RIE_ENV = {
    "AWS_LAMBDA_RUNTIME_API": "lamina's Python worker is driven over a socketpair, not the Runtime "
    "API (its custom runtimes get AWS_LAMBDA_RUNTIME_API)",
    "AWS_LAMBDA_METADATA_API": "the metadata endpoint of Lambda Managed Instances, which lamina has not",
    "AWS_LAMBDA_METADATA_TOKEN": "the metadata endpoint of Lambda Managed Instances, which lamina has not",
    "AWS_ACCESS_KEY_ID": "execution credentials come from lamina's gateway settings, not the bare runtime",
    "AWS_SECRET_ACCESS_KEY": "execution credentials come from lamina's gateway settings, not the runtime",
    "AWS_SESSION_TOKEN": "execution credentials come from lamina's gateway settings, not the runtime",
    "AWS_LAMBDA_FUNCTION_TIMEOUT": "the emulator's own setting (the test sets it), passed on to the function",
}


@dataclass
class Outcome:
    payload: bytes
    log: str
    request_id: str

    def json(self) -> object:
        return json.loads(self.payload)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rie_binary() -> str:
    done = subprocess.run([str(REPO / "scripts" / "build-rie")], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"scripts/build-rie failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def code(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("differential")
    (root / "app.py").write_text(textwrap.dedent(APP))
    (root / "broken.py").write_text("def handler(event, context)\n    return 1\n")
    return root


class Emulator:
    """aws-lambda-rie running `python -m awslambdaric <handler>` for one handler."""

    def __init__(self, binary: str, code: Path, handler: str, log: Path) -> None:
        self.port = free_port()
        self.log = log
        env = {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", "/tmp"),
            "LANG": "en_US.UTF-8",
            "AWS_LAMBDA_FUNCTION_NAME": FUNCTION,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
            "AWS_LAMBDA_FUNCTION_TIMEOUT": "10",
        }
        self.out = log.open("wb")
        self.proc = subprocess.Popen(
            [binary, "--runtime-interface-emulator-address", f"127.0.0.1:{self.port}",
             sys.executable, "-m", "awslambdaric", handler],
            cwd=code, env=env, stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)

    def invoke(self, event: object) -> Outcome:
        request_id = str(uuid.uuid4())
        before = self.log.stat().st_size
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/2015-03-31/functions/function/invocations",
            data=json.dumps(event).encode(),
            headers={"X-Amzn-RequestId": request_id},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            # A failed INIT or a runtime exit: the emulator answers 502 with the error object, where
            # Lambda (and lamina's gateway) answer 200 with X-Amz-Function-Error: Unhandled.
            assert exc.code == 502, exc.code
            payload = exc.read()
        time.sleep(0.3)  # the emulator writes END / REPORT after it answered
        text = self.log.read_bytes()[before:].decode(errors="replace")
        return Outcome(payload, text, request_id)

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.out.close()


@pytest.fixture
def emulate(rie_binary: str, code: Path, tmp_path: Path) -> Iterator:
    emulators: list[Emulator] = []

    def run(handler: str, event: object = None) -> Outcome:
        emulator = Emulator(rie_binary, code, handler, tmp_path / f"rie-{len(emulators)}.log")
        emulators.append(emulator)
        return emulator.invoke(event or {})

    yield run
    for emulator in emulators:
        emulator.stop()


@pytest.fixture
async def lamina(code: Path) -> Iterator:
    workers: list[WorkerProcess] = []

    async def run(handler: str, event: object = None) -> Outcome:
        worker = WorkerProcess(
            handler, str(code), function_name=FUNCTION, memory_mb=128, timeout_s=10,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        workers.append(worker)
        request_id = str(uuid.uuid4())
        result = await worker.invoke(
            InvocationRequest(request_id=request_id, payload=json.dumps(event or {}).encode())
        )
        return Outcome(result.payload, result.log, request_id)

    yield run
    for worker in workers:
        await worker.stop()


def on_lambda(emulated: object, code: Path) -> object:
    """The emulator's stack traces name the directory it ran the code in; Lambda (and lamina) name
    /var/task. Everything else is left as it is."""
    text = json.dumps(emulated).replace(str(code), "/var/task")
    return json.loads(text)


async def test_context_fields_and_environment_names(emulate, lamina, code: Path) -> None:
    rie = emulate("app.describe", {"n": 1})
    ours = await lamina("app.describe", {"n": 1})
    theirs, mine = rie.json(), ours.json()
    assert isinstance(theirs, dict) and isinstance(mine, dict)
    assert mine["public"] == theirs["public"]  # the same attributes and methods on the context
    for field in (
        "function_name",
        "function_version",
        "memory_limit_in_mb",
        "remaining_ok",
        "client_context",
    ):
        assert mine[field] == theirs[field], field
    assert mine["identity"] == theirs["identity"] and mine["w3c"] == theirs["w3c"] == {}
    assert mine["tenant_id"] == theirs["tenant_id"] is None
    assert mine["aws_request_id"] == ours.request_id and theirs["aws_request_id"] == rie.request_id
    arn = r"arn:aws:lambda:[a-z0-9-]+:\d{12}:function:" + FUNCTION
    assert re.fullmatch(arn, mine["invoked_function_arn"]) and re.fullmatch(
        arn, theirs["invoked_function_arn"]
    )
    # Lambda's default log group is /aws/lambda/<function>; the emulator says /aws/lambda/Functions.
    assert mine["log_group_name"] == f"/aws/lambda/{FUNCTION}"
    assert theirs["log_group_name"] == "/aws/lambda/Functions"
    # Lambda's stream is <date>/[<version>]<id>; the emulator's is just the version.
    assert re.fullmatch(r"\d{4}/\d\d/\d\d/\[\$LATEST\][0-9a-f]{32}", mine["log_stream_name"])
    assert theirs["log_stream_name"] == "$LATEST"
    env_ours, env_theirs = set(mine["env"]), set(theirs["env"])
    assert env_ours - env_theirs == set(ONLY_LAMINA_ENV), env_ours - env_theirs
    assert env_theirs - env_ours == set(ONLY_RIE_ENV), env_theirs - env_ours


async def test_log_lines(emulate, lamina) -> None:
    rie = emulate("app.describe", {"n": 2})
    ours = await lamina("app.describe", {"n": 2})
    warned = r"\[WARNING\]\t\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\t{rid}\twarned 2"
    for outcome in (rie, ours):
        lines = outcome.log.splitlines()
        rid = outcome.request_id
        assert "module loaded" in lines and "handling 2" in lines
        assert any(re.fullmatch(warned.replace("{rid}", rid), line) for line in lines), lines
        assert f"START RequestId: {rid} Version: $LATEST" in lines and f"END RequestId: {rid}" in lines
        report = next(line for line in lines if line.startswith(f"REPORT RequestId: {rid}\t"))
        for field in (
            "Duration: ",
            "Billed Duration: ",
            "Memory Size: ",
            "Max Memory Used: ",
            "Init Duration: ",
        ):
            assert f"\t{field}" in report, (field, report)
    # Lambda writes INIT_START and the module's output before START; the emulator writes START first.
    mine = ours.log.splitlines()
    assert mine[0].startswith("INIT_START Runtime Version: python:") and mine[1] == "module loaded"
    assert mine.index("module loaded") < mine.index(f"START RequestId: {ours.request_id} Version: $LATEST")
    # Lambda's REPORT has Memory Size as configured and a measured Max Memory Used; the emulator
    # reports 3008 MB for both whatever the function used.
    assert "\tMemory Size: 128 MB\t" in next(line for line in mine if line.startswith("REPORT"))


@pytest.mark.parametrize(
    ("handler", "event"),
    [
        ("app.fails", {}),
        ("app.unserialisable", {}),
        ("missing.handler", {}),
        ("app.nowhere", {}),
        ("broken.handler", {}),
        ("nodot", {}),
    ],
)
async def test_error_shapes(emulate, lamina, code: Path, handler: str, event: object) -> None:
    rie = emulate(handler, event)
    ours = await lamina(handler, event)
    theirs, mine = on_lambda(rie.json(), code), ours.json()
    assert isinstance(theirs, dict) and isinstance(mine, dict)
    # The same keys, type and message; the request id is each invocation's own.
    assert set(mine) == set(theirs) == {"errorMessage", "errorType", "requestId", "stackTrace"}
    assert (mine["errorType"], mine["errorMessage"]) == (theirs["errorType"], theirs["errorMessage"])
    if handler == "broken.handler":
        # The emulator's client puts the source line with its newline; lamina strips it.
        assert [s.rstrip() for s in mine["stackTrace"]] == [s.rstrip() for s in theirs["stackTrace"]]
    else:
        assert mine["stackTrace"] == theirs["stackTrace"]
    assert mine["requestId"] == ours.request_id
    # The [ERROR] block: Lambda's log event keeps the lines apart with newlines (CloudWatch shows
    # them so), the emulator's stdout log sink joins them with carriage returns.
    rie_block = next(line for line in rie.log.splitlines() if line.startswith("[ERROR]"))
    first = rie_block.split("\r")
    mine_lines = ours.log.splitlines()
    at = mine_lines.index(first[0])
    assert mine_lines[at : at + len(first)] == [line.replace(str(code), "/var/task") for line in first]


async def test_bytes_results(emulate, lamina) -> None:
    assert emulate("app.raw").payload == (await lamina("app.raw")).payload == b"raw bytes"


async def test_a_runtime_exit(emulate, lamina) -> None:
    rie = emulate("app.exits")
    ours = await lamina("app.exits")
    theirs, mine = rie.json(), ours.json()
    assert isinstance(theirs, dict) and isinstance(mine, dict)
    assert mine["errorType"] == theirs["errorType"] == "Runtime.ExitError"
    # Lambda's message names the request; the emulator's does not.
    assert (
        mine["errorMessage"]
        == f"RequestId: {ours.request_id} Error: " + theirs["errorMessage"].split("Error: ", 1)[-1]
    )
