"""The Python runtime in local mode as a Lambda user meets it, through boto3 and `lamina local`: the
declared Python version runs, boto3 is on board (after the code and the layers), functions call
functions, a self-calling loop is stopped, one region everywhere, trace context from the caller, the
log format setting, and what a function returns or raises reads as on Lambda."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.local_mode import REPO, LocalServer

REPORT = """
import json, os, sys
import boto3

def handler(event, context):
    return {
        "execution_env": os.environ["AWS_EXECUTION_ENV"],
        "python": "%d.%d" % sys.version_info[:2],
        "boto3": boto3.__version__,
        "boto3_file": boto3.__file__,
        "botocore": getattr(sys.modules.get("botocore"), "__version__", None),
        "region": os.environ["AWS_REGION"],
        "arn": context.invoked_function_arn,
        "endpoint": os.environ.get("AWS_ENDPOINT_URL_LAMBDA"),
        "trace": os.environ.get("_X_AMZN_TRACE_ID"),
        "traceparent": os.environ.get("TRACEPARENT"),
        "w3c": context.w3c(),
        "log_group": context.log_group_name,
    }
"""

CALLER = """
import json, os
import boto3

lam = boto3.client("lambda")  # endpoint, region and credentials from the environment, as on Lambda

def handler(event, context):
    if event.get("async"):
        r = lam.invoke(FunctionName="writer", InvocationType="Event", Payload=json.dumps(event["async"]))
        return {"status": r["StatusCode"], "trace": os.environ["_X_AMZN_TRACE_ID"]}
    r = lam.invoke(FunctionName=event["target"], Payload=json.dumps(event.get("payload", {})))
    return {"status": r["StatusCode"], "error": r.get("FunctionError"), "body": json.load(r["Payload"])}
"""

WRITER = """
import json, os
def handler(event, context):
    with open(event["path"], "a") as f:
        f.write(json.dumps({"value": event["value"], "trace": os.environ.get("_X_AMZN_TRACE_ID")}) + "\\n")
"""

ASYNC_LOOP = """
import json, os
import boto3

lam = boto3.client("lambda")

def handler(event, context):
    with open(event["path"], "a") as f:
        f.write(os.environ["_X_AMZN_TRACE_ID"] + "\\n")
    try:
        lam.invoke(FunctionName=context.function_name, InvocationType="Event", Payload=json.dumps(event))
    except lam.exceptions.RecursiveInvocationException:
        with open(event["path"], "a") as f:
            f.write("stopped\\n")
"""

LOOP = """
import json, os
import boto3

lam = boto3.client("lambda")

def handler(event, context):
    n = event["n"]
    try:
        r = lam.invoke(FunctionName=context.function_name, Payload=json.dumps({"n": n + 1}))
    except lam.exceptions.RecursiveInvocationException as exc:
        return {"stopped_at": n, "code": exc.response["Error"]["Code"],
                "message": exc.response["Error"]["Message"], "trace": os.environ["_X_AMZN_TRACE_ID"]}
    return json.load(r["Payload"])
"""

FAILS = """
def handler(event, context):
    if event.get("bytes"):
        return b"\\x00\\x01binary"
    raise ValueError("nope")
"""

OWN_BOTO3 = "__version__ = 'my own'\n"


def function(name: str, code: str, runtime: str = "python3.12", extra: str = "") -> str:
    body = textwrap.indent(textwrap.dedent(code).strip() + "\n", "      ")
    return (
        f"apiVersion: lamina.dev/v1alpha1\nkind: Function\nmetadata: {{name: {name}}}\n"
        f"spec:\n  runtime: {runtime}\n  handler: index.handler\n  timeoutSeconds: 30\n{extra}"
        f"  code:\n    inline: |\n{body}"
    )


LAYER = """apiVersion: v1
kind: ConfigMap
metadata: {name: own-sdk}
data:
  boto3.py: |
    __version__ = "from a layer"
---
apiVersion: lamina.dev/v1alpha1
kind: Layer
metadata: {name: own-sdk}
spec:
  configMap: {name: own-sdk}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    root = tmp_path_factory.mktemp("pyruntime")
    m = root / "m"
    m.mkdir()
    docs = {
        "report.yaml": function("report", REPORT),
        "report311.yaml": function("report311", REPORT, runtime="python3.11"),
        "layered.yaml": function("layered", REPORT, extra="  layers: [own-sdk]\n") + "---\n" + LAYER,
        "caller.yaml": function("caller", CALLER),
        "writer.yaml": function("writer", WRITER),
        "loop.yaml": function("loop", LOOP),
        "asyncloop.yaml": function("asyncloop", ASYNC_LOOP),
        "fails.yaml": function("fails", FAILS),
        "json.yaml": function(
            "jsonlogs",
            "import logging\nlogging.getLogger().info('init')\n"
            "def handler(e, c):\n    return c.log_group_name\n",
            extra="  logging: {logFormat: JSON, applicationLogLevel: INFO, logGroup: /custom/group}\n",
        ),
        "own.yaml": (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: own-code}\ndata:\n"
            f"  boto3.py: {json.dumps(OWN_BOTO3)}\n"
            f"  index.py: {json.dumps(REPORT)}\n"
            "---\napiVersion: lamina.dev/v1alpha1\nkind: Function\nmetadata: {name: own}\n"
            "spec:\n  handler: index.handler\n  code: {configMap: {name: own-code}}\n"
        ),
    }
    for name, text in docs.items():
        (m / name).write_text(text)
    local = LocalServer([m], root / "state").start(timeout=300)
    yield local
    local.stop()


@pytest.fixture(scope="module")
def lam(server: LocalServer):
    return server.lambda_client(read_timeout=120)


def call(lam, name: str, event: object = None, **kw: object) -> tuple[dict, object]:
    r = lam.invoke(FunctionName=name, Payload=json.dumps(event or {}), **kw)
    raw = r["Payload"].read()
    try:
        return r, json.loads(raw)
    except ValueError:
        return r, raw


def test_each_declared_python_version_runs_on_its_own_interpreter(lam, python312) -> None:
    _, new = call(lam, "report")
    _, old = call(lam, "report311")
    assert (new["python"], new["execution_env"]) == ("3.12", "AWS_Lambda_python3.12")
    assert (old["python"], old["execution_env"]) == ("3.11", "AWS_Lambda_python3.11")


def test_boto3_is_on_board_after_the_code_and_the_layers(lam) -> None:
    _, body = call(lam, "report")
    assert body["boto3"] == body["botocore"] == "1.43.11"  # lamina_runtime.sdk's pins
    assert "/runtime-sdk/" in body["boto3_file"]  # the pinned SDK, not lamina's own site-packages
    _, own = call(lam, "own")
    assert own["boto3"] == "my own"  # the function's own boto3 wins
    _, layered = call(lam, "layered")
    assert layered["boto3"] == "from a layer"  # and so does a layer's


def test_one_region_in_arns_and_the_environment(lam, server: LocalServer) -> None:
    _, body = call(lam, "report")
    assert body["region"] == "us-east-1"
    assert body["arn"] == "arn:aws:lambda:us-east-1:000000000000:function:report"
    url = json.loads(_get(f"{server.url}/url/report/x"))
    assert url["arn"] == body["arn"] and url["region"] == body["region"]
    assert lam.get_function(FunctionName="report")["Configuration"]["FunctionArn"] == body["arn"]


def test_functions_call_functions_through_the_gateway(lam, server: LocalServer, tmp_path: Path) -> None:
    _, report = call(lam, "report")
    assert report["endpoint"] == server.url
    r, body = call(lam, "caller", {"target": "report"})
    assert r.get("FunctionError") is None, body
    assert body["status"] == 200 and body["error"] is None and body["body"]["python"] == "3.12"
    _, failed = call(lam, "caller", {"target": "fails"})
    assert failed["error"] == "Unhandled" and failed["body"]["errorType"] == "ValueError"
    out = tmp_path / "async.jsonl"
    _, queued = call(lam, "caller", {"async": {"path": str(out), "value": 42}})
    assert queued["status"] == 202
    deadline = time.monotonic() + 60
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    written = json.loads(out.read_text().splitlines()[0])
    assert written["value"] == 42
    # The queued invocation continues the caller's trace: same Root, one more in the Lineage.
    caller, writer = (
        dict(p.split("=", 1) for p in t.split(";")) for t in (queued["trace"], written["trace"])
    )
    assert writer["Root"] == caller["Root"]
    assert writer["Lineage"].rpartition(":")[2] == str(int(caller["Lineage"].rpartition(":")[2]) + 1)


def test_a_function_queueing_itself_in_a_loop_is_stopped(lam, tmp_path: Path) -> None:
    out = tmp_path / "loop.txt"
    r, _ = call(lam, "asyncloop", {"path": str(out)}, InvocationType="Event")
    assert r["StatusCode"] == 202
    deadline = time.monotonic() + 120
    while "stopped" not in (out.read_text() if out.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.2)
    lines = out.read_text().split()
    assert lines[-1] == "stopped" and len(lines) == 17  # 16 invocations ran, the 17th was refused
    roots = {dict(p.split("=", 1) for p in line.split(";"))["Root"] for line in lines[:-1]}
    assert len(roots) == 1  # one chain from the first event to the last
    time.sleep(1)
    assert out.read_text().split() == lines  # and nothing runs after it


def test_a_function_calling_itself_in_a_loop_is_stopped(lam) -> None:
    r, body = call(lam, "loop", {"n": 0})
    assert r.get("FunctionError") is None, body
    assert body["code"] == "RecursiveInvocationException"
    assert "recursive loop" in body["message"]
    assert body["stopped_at"] == 15  # 16 invocations ran; the 17th was refused
    assert body["trace"].endswith(":16") and ";Lineage=" in body["trace"]


def test_trace_context_of_the_caller_reaches_the_function(lam) -> None:
    root = "1-6749f000-0123456789abcdef01234567"
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    def headers(request, **_: object) -> None:
        request.headers["X-Amzn-Trace-Id"] = f"Root={root};Parent=53995c3f42cd8ad8;Sampled=1"
        request.headers["traceparent"] = parent

    lam.meta.events.register("before-sign.lambda.Invoke", headers)
    try:
        _, body = call(lam, "report")
    finally:
        lam.meta.events.unregister("before-sign.lambda.Invoke", headers)
    fields = dict(p.split("=", 1) for p in body["trace"].split(";"))
    assert fields["Root"] == root and fields["Sampled"] == "1" and fields["Parent"] != "53995c3f42cd8ad8"
    assert fields["Lineage"].endswith(":1")
    assert body["traceparent"] == parent and body["w3c"] == {"traceparent": parent}
    _, plain = call(lam, "report")  # without a caller's context: a new root each time
    assert "Root=1-" in plain["trace"] and root not in plain["trace"] and plain["traceparent"] is None


def test_errors_bytes_and_stack_traces_read_as_on_lambda(lam) -> None:
    r, body = call(lam, "fails")
    assert r["FunctionError"] == "Unhandled" and body["errorType"] == "ValueError"
    assert body["stackTrace"][0].startswith('  File "/var/task/index.py", line ')
    r, raw = call(lam, "fails", {"bytes": True})
    assert r.get("FunctionError") is None and raw == b"\x00\x01binary"


def test_json_log_format_and_log_group(lam) -> None:
    r, group = call(lam, "jsonlogs", LogType="Tail")
    assert group == "/custom/group"
    records = [json.loads(line) for line in base64.b64decode(r["LogResult"]).decode().splitlines()]
    assert {"platform.start", "platform.report"} <= {rec.get("type") for rec in records}
    report = next(rec for rec in records if rec.get("type") == "platform.report")
    assert report["record"]["status"] == "success" and "initDurationMs" in report["record"]["metrics"]


def test_a_python_version_with_no_interpreter_is_refused_at_start(tmp_path: Path) -> None:
    """Never a silent substitute: with no python3.13 anywhere lamina looks, local mode refuses the
    function and says what to install."""
    if sys.version_info[:2] == (3, 13):
        pytest.skip("lamina itself runs on 3.13 here, so a python3.13 interpreter exists")
    m = tmp_path / "m"
    m.mkdir()
    (m / "f.yaml").write_text(function("future", "def handler(e, c):\n    return 1\n", runtime="python3.13"))
    empty = tmp_path / "nothing"
    empty.mkdir()
    env = {
        **os.environ,
        "PATH": str(empty),
        "LAMINA_CACHE": str(empty),
        "UV_PYTHON_INSTALL_DIR": str(empty),
    }
    done = subprocess.run(
        [sys.executable, "-m", "lamina.cli", "local", str(m), "--state-dir", str(tmp_path / "s")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    message = done.stderr
    assert "Function future: spec.runtime: python3.13 needs a Python 3.13 interpreter" in message
    assert "scripts/build-python 3.13" in message and "uv python install 3.13" in message


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read().decode()


def test_gateway_spans_join_the_callers_trace_and_lead_into_the_function(tmp_path: Path) -> None:
    """With OTEL_* set, the gateway's span is a child of the caller's traceparent and the function's
    context points at that span: one trace from the caller through the gateway into the function."""
    import http.server
    import threading

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    spans: list = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # OTLP/HTTP protobuf
            body = self.rfile.read(int(self.headers["Content-Length"]))
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    spans.extend(scope.spans)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    m = tmp_path / "m"
    m.mkdir()
    (m / "report.yaml").write_text(function("report", REPORT))
    local = LocalServer(
        [m],
        tmp_path / "state",
        env={
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.server_port}",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        },
    ).start(timeout=300)
    try:
        lam = local.lambda_client()
        caller_trace, caller_span = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"

        def headers(request, **_: object) -> None:
            request.headers["traceparent"] = f"00-{caller_trace}-{caller_span}-01"

        lam.meta.events.register("before-sign.lambda.Invoke", headers)
        _, body = call(lam, "report")
        deadline = time.monotonic() + 30
        while not spans and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        local.stop()
        collector.shutdown()
    assert len(spans) == 1, spans
    span = spans[0]
    assert span.trace_id.hex() == caller_trace and span.parent_span_id.hex() == caller_span
    assert span.name == "report invoke"
    _, trace, parent, _ = body["traceparent"].split("-")
    assert (trace, parent) == (caller_trace, span.span_id.hex())  # the function's parent is the gateway
    attributes = {a.key: a.value.string_value for a in span.attributes}
    assert attributes["faas.invoked_name"] == "report"
