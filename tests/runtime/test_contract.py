"""The handler contract: what a handler sees (event, context, environment) and what comes back."""

from __future__ import annotations

import base64
import json
import os
import sys

from .conftest import call

ECHO = """
import os, sys
def handler(event, context):
    cc = context.client_context
    return {
        "event": event,
        "function_name": context.function_name,
        "function_version": context.function_version,
        "invoked_function_arn": context.invoked_function_arn,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "aws_request_id": context.aws_request_id,
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
        "identity": [context.identity.cognito_identity_id, context.identity.cognito_identity_pool_id],
        "client": None if cc is None else {
            "installation_id": cc.client.installation_id, "app_title": cc.client.app_title,
            "custom": cc.custom, "env": cc.env},
        "remaining": context.get_remaining_time_in_millis(),
        "env": {k: v for k, v in os.environ.items()},
        "cwd": os.getcwd(),
        "path_head": sys.path[:2],
    }
"""


async def test_context_fields(write_code, make_worker):
    code = write_code(ECHO)
    worker = make_worker(code, function_name="echo", memory_mb=256, timeout_s=30)
    result, out = await call(worker, {"a": [1, 2]})
    assert result.function_error is None
    assert out["event"] == {"a": [1, 2]}
    assert out["function_name"] == "echo"
    assert out["function_version"] == "$LATEST"
    assert out["invoked_function_arn"] == "arn:aws:lambda:us-east-1:000000000000:function:echo"
    assert out["memory_limit_in_mb"] == "256"  # a string, as in the official runtime
    assert out["aws_request_id"] == result.request_id
    assert out["log_group_name"] == "/aws/lambda/echo"
    assert "[$LATEST]" in out["log_stream_name"]
    assert out["identity"] == [None, None]
    assert out["client"] is None
    assert 0 < out["remaining"] <= 30_000


async def test_client_context_and_arn(write_code, make_worker):
    worker = make_worker(write_code(ECHO), function_name="echo")
    cc = {"client": {"installation_id": "inst-1", "app_title": "App"}, "custom": {"k": "v"}, "env": {"e": 1}}
    encoded = base64.b64encode(json.dumps(cc).encode()).decode()
    arn = "arn:aws:lambda:eu-west-1:123:function:echo:prod"
    _, out = await call(worker, {}, client_context=encoded, invoked_function_arn=arn)
    assert out["client"] == {
        "installation_id": "inst-1",
        "app_title": "App",
        "custom": {"k": "v"},
        "env": {"e": 1},
    }
    assert out["invoked_function_arn"] == arn


async def test_environment_variables(write_code, make_worker):
    code = write_code(ECHO)
    worker = make_worker(
        code, function_name="envfn", memory_mb=512, env={"GREETING": "hi", "AWS_REGION": "eu-west-1"}
    )
    _, out = await call(worker)
    env = out["env"]
    assert env["GREETING"] == "hi"
    assert env["_HANDLER"] == "index.handler"
    assert env["LAMBDA_TASK_ROOT"] == code
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "envfn"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "512"
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
    assert env["AWS_REGION"] == "eu-west-1"
    assert env["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert env["TZ"] == "UTC"
    assert env["AWS_EXECUTION_ENV"] == f"AWS_Lambda_python{sys.version_info[0]}.{sys.version_info[1]}"
    assert "LAMINA_CONTROL_FD" not in env  # internal plumbing is not visible to user code
    assert "LAMINA_LAYERS" not in env
    assert out["cwd"] == code
    assert out["path_head"][0] == code


async def test_empty_payload_is_empty_object(write_code, make_worker):
    worker = make_worker(write_code(ECHO))
    _, out = await call(worker, raw=b"")
    assert out["event"] == {}


async def test_init_runs_once_across_invocations(write_code, make_worker):
    code = write_code(
        """
        import os
        INITS = 0
        INITS += 1
        calls = 0
        def handler(event, context):
            global calls
            calls += 1
            return {"inits": INITS, "calls": calls, "pid": os.getpid()}
        """
    )
    worker = make_worker(code)
    outs = [(await call(worker))[1] for _ in range(3)]
    assert [o["calls"] for o in outs] == [1, 2, 3]
    assert {o["inits"] for o in outs} == {1}
    assert {o["pid"] for o in outs} == {worker.pid}
    assert worker.invocations == 3


async def test_report_lines_init_duration_only_on_first(write_code, make_worker):
    worker = make_worker(write_code("def handler(e, c):\n    return 1\n"), memory_mb=192)
    first, _ = await call(worker)
    second, _ = await call(worker)
    rid = first.request_id
    lines = first.log.splitlines()
    # INIT_START (a cold start's first line), then the invocation's lines
    version = "python:{}.{}.{}".format(*sys.version_info[:3])
    assert lines[0].startswith(f"INIT_START Runtime Version: {version}\tRuntime Version ARN: arn:aws:lambda:")
    assert lines[1] == f"START RequestId: {rid} Version: $LATEST"
    assert second.log.splitlines()[0] == f"START RequestId: {second.request_id} Version: $LATEST"
    assert lines[-2] == f"END RequestId: {rid}"
    report = lines[-1].split("\t")
    assert report[0] == f"REPORT RequestId: {rid}"
    assert report[1].startswith("Duration: ") and report[1].endswith(" ms")
    assert report[2].startswith("Billed Duration: ")
    assert report[3] == "Memory Size: 192 MB"
    assert report[4].startswith("Max Memory Used: ")
    assert report[5].startswith("Init Duration: ")
    assert first.init_duration_ms is not None and first.init_duration_ms > 0
    assert "Init Duration" not in second.log
    assert second.init_duration_ms is None
    assert first.max_memory_mb > 0


async def test_output_captured_per_invocation(write_code, make_worker, tmp_path):
    code = write_code(
        """
        import sys, logging
        print("from init")
        log = logging.getLogger("app")
        def handler(event, context):
            print("out", event["n"])
            print("err", event["n"], file=sys.stderr)
            log.warning("warned %s", event["n"])
            return event["n"]
        """
    )
    sink = tmp_path / "stdout.txt"
    fd = os.open(sink, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        worker = make_worker(code, stdout=fd)
        one, _ = await call(worker, {"n": 1})
        two, _ = await call(worker, {"n": 2})
        await worker.stop()
    finally:
        os.close(fd)
    assert "out 1\n" in one.log and "err 1\n" in one.log
    assert "out 2" not in one.log
    assert "out 2\n" in two.log and "out 1" not in two.log
    warn = [line for line in two.log.splitlines() if "warned 2" in line]
    assert len(warn) == 1
    assert warn[0].startswith("[WARNING]\t") and f"\t{two.request_id}\t" in warn[0]
    assert "from init" in one.log.split("\nSTART RequestId")[0]  # INIT output precedes the first START
    container_log = sink.read_text()  # everything also reached the real stdout
    for text in ("from init", "out 1", "err 2", "warned 2", f"END RequestId: {two.request_id}"):
        assert text in container_log


async def test_large_event_round_trips(write_code, make_worker):
    worker = make_worker(write_code("def handler(e, c):\n    return {'n': len(e['blob'])}\n"))
    blob = "x" * (6 * 1024 * 1024 - 100)
    _, out = await call(worker, {"blob": blob})
    assert out == {"n": len(blob)}


async def test_decimal_result_is_marshalled(write_code, make_worker):
    worker = make_worker(
        write_code(
            "from decimal import Decimal\ndef handler(e, c):\n    return [Decimal('2'), Decimal('1.5')]\n"
        )
    )
    result, out = await call(worker)
    assert result.function_error is None
    assert out == [2, 1.5]


def test_runtime_imports_no_lamina():
    """The runtime package must stand alone (stdlib only) in the image."""
    root = os.path.join(os.path.dirname(__file__), "..", "..", "runtime-image", "lamina_runtime")
    for name in os.listdir(root):
        if name.endswith(".py"):
            text = open(os.path.join(root, name)).read()
            assert (
                "import lamina\n" not in text and "from lamina " not in text and "from lamina." not in text
            ), name
