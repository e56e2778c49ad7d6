"""Details of Lambda's Python runtime that functions and their tooling rely on: the interpreter that
really runs (AWS_EXECUTION_ENV, INIT_START), bytes results, the wording of runtime exits, INIT_REPORT
where Lambda prints it, the trace context in the environment and the context, and where the runtime's
own packages sit on the import path."""

from __future__ import annotations

import json
import sys

from lamina_runtime.factory import environment_for

from .conftest import call

REPORTS = """
import os, sys
def handler(event, context):
    return {
        "execution_env": os.environ["AWS_EXECUTION_ENV"],
        "version": list(sys.version_info[:2]),
        "trace": os.environ.get("_X_AMZN_TRACE_ID"),
        "traceparent": os.environ.get("TRACEPARENT"),
        "w3c": context.w3c(),
        "custom": context.client_context.custom if context.client_context else None,
    }
"""


async def test_the_declared_interpreter_runs_and_says_so(write_code, make_worker, python312) -> None:
    """Two Python versions side by side: the system's 3.11 and the 3.12 scripts/build-python built."""
    code = write_code(REPORTS)
    for python, version in ((sys.executable, sys.version_info[:2]), (python312, (3, 12))):
        worker = make_worker(code, python=python)
        result, body = await call(worker)
        assert body["version"] == list(version)
        assert body["execution_env"] == f"AWS_Lambda_python{version[0]}.{version[1]}"
        init_start = result.log.splitlines()[0]
        assert init_start.startswith(f"INIT_START Runtime Version: python:{version[0]}.{version[1]}.")


async def test_trace_context_reaches_the_environment_and_the_context(write_code, make_worker) -> None:
    worker = make_worker(write_code(REPORTS))
    trace = "Root=1-6749f000-0123456789abcdef01234567;Parent=0123456789abcdef;Sampled=0;Lineage=1a2b3c4d:1"
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    context = "eyJjdXN0b20iOiB7ImsiOiAidiJ9LCAidzNjIjogeyJ0cmFjZXN0YXRlIjogImE9YiJ9fQ=="  # custom + w3c
    _, body = await call(worker, trace_id=trace, traceparent=parent, client_context=context)
    assert body["trace"] == trace and body["traceparent"] == parent
    assert body["w3c"] == {"tracestate": "a=b", "traceparent": parent}
    assert body["custom"] == {"k": "v"}  # w3c is taken out of the client context, as Lambda does
    _, after = await call(worker)  # the next invocation does not see the previous one's trace
    assert after["trace"] is None and after["traceparent"] is None and after["w3c"] == {}


async def test_bytes_are_the_response_as_they_are(write_code, make_worker) -> None:
    worker = make_worker(write_code("def handler(e, c):\n    return b'\\x00\\xffraw'\n"))
    result = await worker.invoke(_request())
    assert result.function_error is None and result.payload == b"\x00\xffraw"


async def test_non_ascii_results_are_escaped_up_to_311_only(write_code, make_worker, python312) -> None:
    code = write_code("def handler(e, c):\n    return {'word': 'caf\\u00e9'}\n")
    old = await make_worker(code, python=sys.executable).invoke(_request())
    new = await make_worker(code, python=python312).invoke(_request())
    assert old.payload == b'{"word": "caf\\u00e9"}'  # python3.11: json.dumps' default
    assert new.payload == '{"word": "café"}'.encode()  # python3.12+: ensure_ascii=False
    assert json.loads(old.payload) == json.loads(new.payload)


async def test_an_exit_with_status_0_gives_no_reason(write_code, make_worker) -> None:
    worker = make_worker(write_code("import os\ndef handler(e, c):\n    os._exit(0)\n"))
    result, body = await call(worker)
    assert body == {
        "errorType": "Runtime.ExitError",
        "errorMessage": f"RequestId: {result.request_id} Error: Runtime exited without providing a reason",
    }
    assert result.log.splitlines()[-1].endswith("\tStatus: error\tError Type: Runtime.ExitError")


async def test_init_report_names_the_phase_and_status(write_code, make_worker) -> None:
    worker = make_worker(write_code("raise RuntimeError('no config')\n"))
    await worker.start()
    result, body = await call(worker)
    assert body["errorType"] == "RuntimeError"
    report = next(line for line in result.log.splitlines() if line.startswith("INIT_REPORT"))
    assert report.startswith("INIT_REPORT Init Duration: ")
    assert report.endswith("\tPhase: init\tStatus: error\tError Type: RuntimeError")
    # The environment is gone; the next invocation INITs within itself: Phase invoke.
    again, _ = await call(worker)
    report = next(line for line in again.log.splitlines() if line.startswith("INIT_REPORT"))
    assert report.endswith("\tPhase: invoke\tStatus: error\tError Type: RuntimeError")


async def test_an_init_timeout_is_reported_as_a_timeout(write_code, make_worker) -> None:
    worker = make_worker(write_code("import time\ntime.sleep(30)\n"), init_timeout_s=0.5)
    await worker.start()
    result, body = await call(worker)
    assert body["errorType"] == "Sandbox.Timedout"
    report = next(line for line in result.log.splitlines() if line.startswith("INIT_REPORT"))
    assert report.endswith("\tPhase: init\tStatus: timeout")
    assert result.log.splitlines()[-1].endswith("\tStatus: timeout")


async def test_runtime_packages_come_after_code_and_layers(write_code, make_worker, tmp_path) -> None:
    """The runtime's boto3 is importable, and a function (or layer) bringing its own wins."""
    vendor = tmp_path / "vendor"
    (vendor / "sdk").mkdir(parents=True)
    (vendor / "sdk" / "__init__.py").write_text("WHO = 'runtime'\n")
    layer = tmp_path / "layer" / "python" / "layered"
    layer.mkdir(parents=True)
    (layer / "__init__.py").write_text("WHO = 'layer'\n")
    (vendor / "layered").mkdir()
    (vendor / "layered" / "__init__.py").write_text("WHO = 'runtime'\n")
    code = write_code("import sdk, layered\ndef handler(e, c):\n    return [sdk.WHO, layered.WHO]\n")
    worker = make_worker(code, layers=[str(tmp_path / "layer")], runtime_packages=[str(vendor)])
    _, body = await call(worker)
    assert body == ["runtime", "layer"]
    (tmp_path / "code" / "sdk.py").write_text("WHO = 'function'\n")
    own = make_worker(code, layers=[str(tmp_path / "layer")], runtime_packages=[str(vendor)])
    _, body = await call(own)
    assert body == ["function", "layer"]


async def test_a_custom_runtime_gets_the_trace_header_and_w3c_in_its_client_context(tmp_path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "bootstrap").write_text(
        f"#!{sys.executable}\n"
        "import json, os, urllib.request\n"
        "api = os.environ['AWS_LAMBDA_RUNTIME_API']\n"
        "with urllib.request.urlopen(f'http://{api}/2018-06-01/runtime/invocation/next') as r:\n"
        "    rid = r.headers['Lambda-Runtime-Aws-Request-Id']\n"
        "    out = {'trace': r.headers['Lambda-Runtime-Trace-Id'],\n"
        "           'context': json.loads(r.headers['Lambda-Runtime-Client-Context'])}\n"
        "req = urllib.request.Request(f'http://{api}/2018-06-01/runtime/invocation/{rid}/response',\n"
        "                             data=json.dumps(out).encode(), method='POST')\n"
        "urllib.request.urlopen(req).read()\n"
    )
    env = environment_for("provided.al2023", "x.handler", str(code), timeout_s=5)
    try:
        trace = "Root=1-6749f000-0123456789abcdef01234567;Parent=0123456789abcdef;Sampled=0"
        parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        _, body = await call(env, trace_id=trace, traceparent=parent)
        assert body == {"trace": trace, "context": {"w3c": {"traceparent": parent}}}
    finally:
        await env.stop()


def _request():
    import uuid

    from lamina_runtime.protocol import InvocationRequest

    return InvocationRequest(request_id=str(uuid.uuid4()), payload=b"{}")
