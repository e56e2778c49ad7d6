"""`python -m lamina_runtime serve`, end to end over real HTTP (the pod's entrypoint)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

RUNTIME_ROOT = Path(__file__).resolve().parents[2] / "runtime-image"


class Served:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def invoke(self, event: object, **headers: str) -> tuple[int, dict[str, str], object]:
        status, resp_headers, body = self.request("POST", "/invoke", json.dumps(event).encode(), headers)
        return status, resp_headers, json.loads(body)


def _poll(predicate: Callable[[], object], what: str) -> object:
    for _ in range(3000):
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"gave up waiting for {what}")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    procs: list[subprocess.Popen] = []

    def start(code_dir: str, handler: str = "index.handler", **env: str) -> Served:
        log = tmp_path / f"serve-{len(procs)}.log"
        environ = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(RUNTIME_ROOT),
            "LAMINA_HANDLER": handler,
            "LAMBDA_TASK_ROOT": code_dir,
            "AWS_LAMBDA_FUNCTION_NAME": "served",
            **env,
        }
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "lamina_runtime", "serve", "--port", "0"],
                env=environ,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        procs.append(proc)

        def port() -> int | None:
            found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.read_text())
            assert proc.poll() is None, log.read_text()
            return int(found.group(1)) if found else None

        return Served(proc, _poll(port, "the server to listen"), log)  # type: ignore[arg-type]

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


HANDLER = """
import os, time
print("init ran")
def handler(event, context):
    print("handling", context.aws_request_id)
    if event.get("fail"):
        raise ValueError("nope")
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if event.get("entered"):
        open(event["entered"], "w").close()
        while not os.path.exists(event["release"]):
            time.sleep(0.01)
    cc = context.client_context
    return {"pid": os.getpid(), "event": event, "custom": cc.custom if cc else None}
"""


def gated_init(write_code: Callable[[str], str], gate: Path) -> str:
    """Code whose INIT runs until ``gate`` exists; its handler answers "warm"."""
    return write_code(
        f"""
        import os, time
        while not os.path.exists({str(gate)!r}):
            time.sleep(0.01)
        def handler(event, context):
            return "warm"
        """
    )


def test_healthz_turns_ready_after_init(serve, write_code, tmp_path):
    gate = tmp_path / "gate"
    served = serve(gated_init(write_code, gate))
    status, _, _ = served.request("GET", "/healthz")
    assert status == 503  # INIT is still running: the pod is not Ready yet
    gate.write_text("")
    _poll(lambda: served.request("GET", "/healthz")[0] == 200, "healthz 200")
    status, _, out = served.invoke({})
    assert status == 200 and out == "warm"


def test_healthz_wait_holds_the_answer_until_init_is_done(serve, write_code, tmp_path):
    """The gateway's probe of a starting pod: one request, answered the moment INIT ends."""
    gate = tmp_path / "gate"
    served = serve(gated_init(write_code, gate))
    started = time.monotonic()
    status, _, _ = served.request("GET", "/healthz?wait=0.3")
    assert status == 503 and time.monotonic() - started >= 0.3  # held, then not ready yet
    answer: list[int] = []
    probe = threading.Thread(target=lambda: answer.append(served.request("GET", "/healthz?wait=30")[0]))
    probe.start()
    time.sleep(0.2)
    assert not answer  # still held while INIT runs
    gate.write_text("")
    probe.join(20)
    assert answer == [200]


def test_a_failed_init_is_not_ready_but_an_on_demand_call_gets_its_error(serve, write_code):
    """/healthz stays 503 after a failed INIT (the kubelet's probe: not Ready), marked so that the
    gateway may hand a waiting call over; the call gets the INIT error, and the next runs INIT again."""
    served = serve(write_code("raise RuntimeError('no config')\ndef handler(e, c):\n    return 1\n"))
    status, headers, body = served.request("GET", "/healthz?wait=20")
    assert status == 503 and headers.get("Lamina-Init-Failed") == "1", (status, headers, body)
    assert "RuntimeError: no config" in json.loads(body)["message"]
    for _ in range(2):
        status, headers, error = served.invoke({})
        assert status == 200 and headers["Lamina-Function-Error"] == "Unhandled"
        assert error["errorType"] == "RuntimeError" and error["errorMessage"] == "no config"
    assert served.proc.poll() is None  # an on-demand environment keeps serving


def test_a_provisioned_environment_whose_init_fails_exits_with_the_reason(serve, write_code, tmp_path):
    """Lambda fails a provisioned environment whose INIT fails: the server exits with
    INIT_FAILED_EXIT_CODE and leaves the reason where Kubernetes reads a container's last words."""
    from lamina_runtime import server as runtime_server
    from lamina_runtime.protocol import INIT_FAILED_EXIT_CODE

    served = serve(
        write_code("raise RuntimeError('no config')\ndef handler(e, c):\n    return 1\n"),
        AWS_LAMBDA_INITIALIZATION_TYPE="provisioned-concurrency",
    )
    assert served.proc.wait(30) == INIT_FAILED_EXIT_CODE
    assert "INIT of a provisioned environment failed: RuntimeError: no config" in served.log.read_text()
    message = tmp_path / "termination-log"
    message.write_text("")
    runtime_server.write_termination_message("INIT failed: x", str(message))
    assert message.read_text() == "INIT failed: x"
    runtime_server.write_termination_message("never created", str(tmp_path / "absent"))
    assert not (tmp_path / "absent").exists()


def test_a_provisioned_environment_reports_no_init_duration(serve, write_code):
    """Its INIT ran ahead of any request: as on Lambda, no REPORT carries Init Duration."""
    for init_type, reported in (("provisioned-concurrency", False), ("on-demand", True)):
        served = serve(write_code(HANDLER), AWS_LAMBDA_INITIALIZATION_TYPE=init_type)
        assert served.request("GET", "/healthz?wait=20")[0] == 200
        status, headers, _ = served.invoke({})
        assert status == 200
        report = base64.b64decode(headers["Lamina-Log-Result"]).decode().splitlines()[-1]
        assert report.startswith("REPORT RequestId:"), report
        assert ("Init Duration" in report) is reported, (init_type, report)
        assert ("Lamina-Init-Duration-Ms" in headers) is reported, (init_type, headers)


def test_invoke_end_to_end(serve, write_code):
    served = serve(write_code(HANDLER))
    _poll(lambda: served.request("GET", "/healthz")[0] == 200, "healthz 200")
    cc = base64.b64encode(json.dumps({"custom": {"tenant": "t1"}}).encode()).decode()
    status, headers, out = served.invoke(
        {"x": 1}, **{"Lamina-Request-Id": "req-1", "Lamina-Client-Context": cc}
    )
    assert status == 200
    assert out["event"] == {"x": 1} and out["custom"] == {"tenant": "t1"}
    assert "Lamina-Function-Error" not in headers
    assert float(headers["Lamina-Init-Duration-Ms"]) > 0
    assert float(headers["Lamina-Duration-Ms"]) >= 0
    log = base64.b64decode(headers["Lamina-Log-Result"]).decode()
    assert "START RequestId: req-1 Version: $LATEST" in log
    assert "handling req-1" in log
    assert "REPORT RequestId: req-1\t" in log
    status, headers, out2 = served.invoke({"x": 2})
    assert status == 200 and out2["pid"] == out["pid"]  # same warm environment
    assert "Lamina-Init-Duration-Ms" not in headers
    # The container log has the handler's output (written within a few ms of the answer).
    _poll(lambda: "handling req-1" in served.log.read_text(), "the handler's output in the container log")


def test_the_function_imports_ssl_although_the_pod_server_loads_without_it(serve, write_code):
    """The pod server keeps ``ssl`` out while asyncio loads (start-up CPU); the function's process,
    where boto3 and urllib need it, must not notice."""
    code = (
        "import ssl, urllib.request\n"
        "def handler(e, c):\n"
        "    return {'tls': ssl.create_default_context().protocol.name}\n"
    )
    served = serve(write_code(code))
    status, headers, out = served.invoke({})
    assert status == 200 and "Lamina-Function-Error" not in headers, out
    assert out == {"tls": "PROTOCOL_TLS_CLIENT"}


def test_function_error_headers(serve, write_code):
    served = serve(write_code(HANDLER))
    status, headers, out = served.invoke({"fail": True}, **{"Lamina-Request-Id": "req-err"})
    assert status == 200
    assert headers["Lamina-Function-Error"] == "Unhandled"
    assert headers["Lamina-Error-Type"] == "ValueError"
    assert out["errorMessage"] == "nope" and out["requestId"] == "req-err"


def test_keep_alive(serve, write_code):
    served = serve(write_code(HANDLER))
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
    try:
        pids = []
        for n in range(3):
            conn.request("POST", "/invoke", body=json.dumps({"n": n}).encode())
            response = conn.getresponse()
            assert response.status == 200
            pids.append(json.loads(response.read())["pid"])
            if n == 0:
                sock = conn.sock
            assert conn.sock is sock  # the same TCP connection served every request
        assert len(set(pids)) == 1
    finally:
        conn.close()


def test_busy_gets_429(serve, write_code, tmp_path):
    served = serve(write_code(HANDLER))
    event = {"entered": str(tmp_path / "entered"), "release": str(tmp_path / "release")}
    results: list[object] = []
    first = threading.Thread(target=lambda: results.append(served.invoke(event)))
    first.start()
    _poll((tmp_path / "entered").exists, "the first invocation to start")
    assert served.request("POST", "/invoke", b"{}")[0] == 429
    (tmp_path / "release").write_text("")
    first.join()
    assert results[0][0] == 200
    # The server counts what it refused (what a gateway must never cause) beside what it answered.
    status, _, body = served.request("GET", "/stats")
    assert status == 200 and json.loads(body) == {"invocations": 1, "busyRefusals": 1, "misdirected": 0}


def test_a_caller_that_hangs_up_mid_call_leaves_the_environment_serving(serve, write_code, tmp_path):
    """The worker's reply for a caller that is gone is read and dropped: the environment is free for
    the next call at once (no 429), and that call gets its own answer, not the abandoned one's."""
    served = serve(write_code(HANDLER))
    event = {"entered": str(tmp_path / "entered"), "release": str(tmp_path / "release"), "n": 1}
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
    conn.request("POST", "/invoke", body=json.dumps(event).encode())
    _poll((tmp_path / "entered").exists, "the first invocation to start")
    conn.close()  # the caller hangs up while its invocation runs
    (tmp_path / "release").write_text("")

    def answered() -> bool:
        return json.loads(served.request("GET", "/stats")[2])["invocations"] == 1

    _poll(answered, "the abandoned invocation to finish")
    status, _, body = served.invoke({"n": 2})
    assert status == 200 and body["event"] == {"n": 2}
    status, _, stats = served.request("GET", "/stats")
    assert json.loads(stats) == {"invocations": 2, "busyRefusals": 0, "misdirected": 0}

    def both_written() -> bool:  # the container log is written within a few ms of the answer
        log = served.log.read_text()
        return log.count("END RequestId:") == 2 and log.count("REPORT RequestId:") == 2

    _poll(both_written, "both invocations' END and REPORT lines")


def test_back_to_back_calls_keep_the_container_log_in_order(serve, write_code):
    """END and REPORT reach the container log after the reply is sent, yet before the next call's
    START: a caller that sends the next request at once still finds each invocation's lines together
    and in Lambda's order, and each reply's log tail ends with its own REPORT."""
    served = serve(write_code(HANDLER))
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
    ids = []
    try:
        for n in range(5):
            conn.request("POST", "/invoke", body=json.dumps({"n": n}).encode())
            response = conn.getresponse()
            assert response.status == 200
            response.read()
            rid = response.getheader("Lamina-Request-Id")
            tail = base64.b64decode(response.getheader("Lamina-Log-Result")).decode()
            assert tail.rstrip("\n").splitlines()[-1].startswith(f"REPORT RequestId: {rid}")
            ids.append(rid)
    finally:
        conn.close()

    def all_written() -> bool:
        return served.log.read_text().count("REPORT RequestId:") == 5

    _poll(all_written, "the last REPORT line")
    lines = [
        ln for ln in served.log.read_text().splitlines() if "RequestId:" in ln or ln.startswith("handling")
    ]
    expected = []
    for rid in ids:
        expected += [
            f"START RequestId: {rid}",
            f"handling {rid}",
            f"END RequestId: {rid}",
            f"REPORT RequestId: {rid}",
        ]
    assert [ln for ln, want in zip(lines, expected, strict=True) if not ln.startswith(want)] == []


def test_a_call_meant_for_another_function_is_refused_and_runs_nothing(serve, write_code, tmp_path):
    """The gateway names the function it means (Lamina-Function): a pod now serving another one (its
    address was another pod's) answers 421 without running its handler, so its result can never be
    taken for the function that was called."""
    served = serve(write_code(HANDLER), LAMINA_INVOKE_SECRET="s3cret")
    ran = tmp_path / "ran"
    event = json.dumps({"entered": str(ran), "release": str(ran)}).encode()
    status, _, body = served.request(
        "POST", "/invoke", event, {"Lamina-Function": "caller", "Lamina-Request-Id": "r-1"}
    )
    assert status == 421 and "another function" in json.loads(body)["message"], body
    assert not ran.exists()
    secret = {"Lamina-Invoke-Secret": "s3cret", "Lamina-Request-Id": "r-2"}
    status, headers, body = served.request("POST", "/invoke", event, {"Lamina-Function": "served", **secret})
    assert status == 200 and ran.exists() and headers["Lamina-Request-Id"] == "r-2", body
    status, _, body = served.request("GET", "/stats")
    assert json.loads(body) == {"invocations": 1, "busyRefusals": 0, "misdirected": 1}


FORGES_A_RESULT = """
import os, stat, sys
from lamina_runtime.framing import write_frame_fd

def control_socket():
    for name in os.listdir("/proc/self/fd"):
        try:
            if stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                return int(name)
        except OSError:  # the listing's own descriptor, closed by now
            pass

def handler(event, context):
    # Writes a result frame of another request to the worker's control socket before its own.
    write_frame_fd(control_socket(), {"type": "result", "request_id": "someone-else"}, b'{"not": "mine"}')
    return {"mine": context.aws_request_id}
"""


def test_a_worker_frame_that_is_not_this_requests_result_is_never_its_answer(serve, write_code):
    """The host pairs the worker's reply with its request by the request id the result frame
    carries: a frame of another request fails the call (the environment is reset), and the next
    call gets a fresh environment and its own result."""
    served = serve(write_code(FORGES_A_RESULT))
    status, headers, out = served.invoke({}, **{"Lamina-Request-Id": "r-1"})
    assert status == 200 and headers["Lamina-Request-Id"] == "r-1"
    assert out != {"not": "mine"} and headers["Lamina-Function-Error"] == "Unhandled", out
    assert out["errorType"] == "Runtime.ExitError", out
    log = base64.b64decode(headers["Lamina-Log-Result"]).decode()
    assert "'someone-else'" in log, log


def test_timeout_restarts_worker(serve, write_code):
    served = serve(write_code(HANDLER), LAMINA_TIMEOUT_SECONDS="1")
    _, _, before = served.invoke({})
    status, headers, out = served.invoke({"sleep": 30}, **{"Lamina-Request-Id": "slow"})
    assert status == 200
    assert headers["Lamina-Error-Type"] == "Sandbox.Timedout"
    assert out["errorMessage"] == "RequestId: slow Error: Task timed out after 1.00 seconds"
    status, headers, after = served.invoke({})
    assert status == 200 and after["pid"] != before["pid"]
    assert "Lamina-Init-Duration-Ms" in headers


def test_unknown_route_and_method(serve, write_code):
    served = serve(write_code(HANDLER))
    assert served.request("GET", "/nope")[0] == 404
    assert served.request("GET", "/invoke")[0] == 405


def test_sigterm_stops_server_and_worker(serve, write_code):
    served = serve(write_code(HANDLER))
    _, _, out = served.invoke({})
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(timeout=30) == 0
    _poll(lambda: not Path(f"/proc/{out['pid']}").exists(), "the worker to exit")


def test_a_provided_runtime_is_served_through_its_bootstrap(serve, tmp_path):
    """LAMINA_RUNTIME (set by the operator) makes the pod run the code's bootstrap (Runtime API)."""
    from .test_runtime_api import BOOTSTRAP, FUNCTION

    code = tmp_path / "custom"
    code.mkdir()
    (code / "bootstrap").write_text(BOOTSTRAP)
    (code / "bootstrap").chmod(0o755)
    (code / "function.py").write_text(FUNCTION)
    served = serve(str(code), "function.handler", LAMINA_RUNTIME="provided.al2023")
    _poll(lambda: served.request("GET", "/healthz")[0] == 200, "INIT")
    status, headers, body = served.invoke({"n": 1}, **{"Lamina-Log-Tail": "1"})
    assert status == 200 and "Lamina-Function-Error" not in headers
    assert body["event"] == {"n": 1}
    assert body["env"]["_HANDLER"] == "function.handler" and body["env"]["AWS_EXECUTION_ENV"] is None
    log = base64.b64decode(headers["Lamina-Log-Result"]).decode()
    assert "Init Duration" in log.splitlines()[-1]


# ------------------------------------------------------------------------------ generic pool mode

POOL_HANDLER = """
import os, greeting
print("pool init ran")
def handler(event, context):
    return {"greeting": greeting.hello(event["name"]), "secret": os.environ.get("DB_PASSWORD"),
            "fn": context.function_name, "invoke_secret_seen": "LAMINA_INVOKE_SECRET" in os.environ}
"""


@pytest.fixture
def pool_pod(serve, tmp_path) -> Callable[[], Served]:
    def start() -> Served:
        task, layers = tmp_path / "task", tmp_path / "layers"
        task.mkdir(exist_ok=True)
        layers.mkdir(exist_ok=True)
        return serve(
            str(task),
            LAMINA_POOL="1",
            LAMINA_POOL_TASK_ROOT=str(task),
            LAMINA_POOL_LAYERS_ROOT=str(layers),
            LAMINA_FETCH_ALLOW_LOCAL="1",
        )

    return start


def handover(**over: object) -> bytes:
    doc = {
        "environment": {
            "AWS_LAMBDA_FUNCTION_NAME": "greeter",
            "LAMINA_HANDLER": "index.handler",
            "LAMINA_TIMEOUT_SECONDS": "5",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
            "LAMBDA_TASK_ROOT": "/var/task",
            "LAMINA_LAYERS": "/opt/layers/0-greeting",
            "DB_PASSWORD": "resolved-from-a-secret",
        },
        "code": {"files": {"index.py": POOL_HANDLER}},
        "layers": [{"files": {"python/greeting.py": "def hello(n):\n    return 'hello ' + n\n"}}],
        "invokeSecret": "s3cret",
    }
    doc.update(over)
    return json.dumps(doc).encode()


def test_a_pool_pod_is_ready_generic_and_becomes_one_function_once(pool_pod) -> None:
    pod = pool_pod()
    assert pod.request("GET", "/healthz")[0] == 200  # Ready to be claimed
    status, _, body = pod.request("POST", "/invoke", b"{}")
    assert status == 503 and b"generic pool environment" in body
    status, _, body = pod.request("POST", "/specialize", handover())
    assert status == 200, body
    reply = json.loads(body)
    assert reply["function"] == "greeter" and reply["initDurationMs"] > 0
    assert pod.request("GET", "/healthz")[0] == 200
    assert pod.invoke({"name": "x"})[0] == 403  # the invoke secret handed over is required now
    status, headers, result = pod.invoke({"name": "pool"}, **{"Lamina-Invoke-Secret": "s3cret"})
    assert status == 200
    assert result == {
        "greeting": "hello pool",
        "secret": "resolved-from-a-secret",
        "fn": "greeter",
        "invoke_secret_seen": False,
    }
    assert "Lamina-Init-Duration-Ms" in headers  # the first invocation reports the cold start
    status, _, body = pod.request("POST", "/specialize", handover())
    assert status == 409 and b"never handed another" in body
    assert "pool init ran" in pod.log.read_text()


def test_a_pool_pod_fetches_url_code_itself(pool_pod, tmp_path) -> None:
    import hashlib
    import http.server
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("index.py", "def handler(e, c):\n    return {'zipped': True}\n")
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "code.zip").write_bytes(buf.getvalue())
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path / "www"))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        pod = pool_pod()
        url = f"http://127.0.0.1:{server.server_address[1]}/code.zip"
        code = {"url": url, "sha256": hashlib.sha256(buf.getvalue()).hexdigest()}
        env = {"AWS_LAMBDA_FUNCTION_NAME": "zipped", "LAMINA_HANDLER": "index.handler"}
        status, _, body = pod.request(
            "POST", "/specialize", handover(environment=env, code=code, layers=[], invokeSecret=None)
        )
        assert status == 200, body
        assert pod.invoke({})[2] == {"zipped": True}
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"code": {"files": {"../escape.py": "x = 1"}}}, "outside its directory"),
        ({"environment": {"LAMINA_POOL": "0"}}, "belong to the pod"),
        ({"layers": "python"}, "layers: expected a list"),
    ],
)
def test_a_refused_hand_over_leaves_the_pod_generic(pool_pod, change, why) -> None:
    pod = pool_pod()
    status, _, body = pod.request("POST", "/specialize", handover(**change))
    assert status == 400 and why in body.decode(), body
    assert pod.request("POST", "/specialize", handover())[0] == 200  # still claimable as it was


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"layers": []}, "LAMINA_LAYERS names 1 layers"),
        ({"code": {"url": "http://127.0.0.1:9/none.zip", "sha256": "0" * 64}}, "cannot download"),
    ],
)
def test_a_hand_over_that_fails_half_way_spoils_the_pod(pool_pod, change, why) -> None:
    pod = pool_pod()
    status, _, body = pod.request("POST", "/specialize", handover(**change))
    assert status == 400 and why in body.decode() and b"spoiled" in body, body
    assert pod.request("GET", "/healthz")[0] == 503  # never Ready again: the gateway deletes it
    assert pod.request("POST", "/specialize", handover())[0] == 409


PRESPAWN_HANDLER = """
import os, subprocess, time
def handler(event, context):
    if event.get("sleep"):
        time.sleep(event["sleep"])
    child = subprocess.run(["env", "-0"], capture_output=True, check=True).stdout.decode()
    return {"pid": os.getpid(), "env": dict(os.environ), "cwd": os.getcwd(),
            "child_env": dict(line.split("=", 1) for line in child.split("\\0") if line)}
"""


def _children(pid: int) -> set[int]:
    return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def _function_env(**extra: str) -> dict[str, str]:
    return {
        "AWS_LAMBDA_FUNCTION_NAME": "prespawned",
        "LAMINA_HANDLER": "index.handler",
        "LAMINA_TIMEOUT_SECONDS": "1",
        "DB_PASSWORD": "resolved-from-a-secret",
        **extra,
    }


def test_a_pool_pod_hands_the_function_to_its_pre_spawned_worker(pool_pod, tmp_path) -> None:
    """The pool pod starts a worker before any function: the hand-over gives that process the
    function's environment (exactly: the handler and its subprocesses see nothing of the pre-spawn's),
    directory and import path; a restart after a timeout spawns a new worker as before."""
    pod = pool_pod()
    prespawned = _poll(lambda: _children(pod.proc.pid), "the pre-spawned worker")
    (pid,) = prespawned  # type: ignore[misc]
    before = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert not any(b"SECRET" in var or b"PASSWORD" in var for var in before)  # no credentials yet
    code = {"files": {"index.py": PRESPAWN_HANDLER}}
    body = handover(environment=_function_env(), code=code, layers=[], invokeSecret=None)
    status, _, reply = pod.request("POST", "/specialize", body)
    assert status == 200, reply
    status, headers, result = pod.invoke({})
    assert status == 200, result
    assert result["pid"] == pid  # no new interpreter: the pre-spawned one took the function
    assert "Lamina-Init-Duration-Ms" in headers
    env = result["env"]
    assert env == result["child_env"]  # os.environ is the process's real environment
    assert env["DB_PASSWORD"] == "resolved-from-a-secret" and env["AWS_LAMBDA_FUNCTION_NAME"] == "prespawned"
    assert env["LAMBDA_TASK_ROOT"] == str(tmp_path / "task") == result["cwd"]
    assert not [k for k in env if k.startswith("LAMINA_")]  # nor the pre-spawn's marker, nor the pool's
    assert env["TZ"] == "UTC" and env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "128"

    status, _, timed_out = pod.invoke({"sleep": 3})
    assert status == 200 and timed_out["errorType"] == "Sandbox.Timedout"
    _poll(lambda: not Path(f"/proc/{pid}").exists(), "the timed-out worker to go")
    status, _, again = pod.invoke({})
    assert status == 200 and again["pid"] != pid and again["pid"] in _children(pod.proc.pid)
    assert {k: v for k, v in again["env"].items() if k != "AWS_LAMBDA_LOG_STREAM_NAME"} == {
        k: v for k, v in env.items() if k != "AWS_LAMBDA_LOG_STREAM_NAME"
    }  # a spawned worker's environment is the one the pre-spawned worker took


def test_a_function_with_interpreter_start_up_variables_gets_a_worker_of_its_own(pool_pod) -> None:
    """PYTHON* options, the locale, the dynamic loader's variables are read as a process starts: a
    function setting them cannot use the pre-spawned worker, which is discarded for a fresh spawn."""
    pod = pool_pod()
    (pid,) = _poll(lambda: _children(pod.proc.pid), "the pre-spawned worker")  # type: ignore[misc]
    env = _function_env(PYTHONUTF8="1")
    code = {"files": {"index.py": PRESPAWN_HANDLER}}
    status, _, reply = pod.request("POST", "/specialize", handover(environment=env, code=code, layers=[]))
    assert status == 200, reply
    status, _, result = pod.invoke({}, **{"Lamina-Invoke-Secret": "s3cret"})
    assert status == 200 and result["pid"] != pid and result["env"]["PYTHONUTF8"] == "1"
    assert not Path(f"/proc/{pid}").exists()


def test_sigterm_during_an_invocation_stops_the_environment_within_the_shutdown_grace(
    serve, write_code, tmp_path
):
    """A pod deleted while its function runs: Lambda's Shutdown phase gives the runtime 2 s, then the
    environment goes. The server must not wait for the invocation (nor hang in its own shutdown) until
    the kubelet's SIGKILL at the end of the pod's grace period."""
    served = serve(write_code(HANDLER), LAMINA_TIMEOUT_SECONDS="60")
    _, _, out = served.invoke({})
    entered, release = tmp_path / "entered", tmp_path / "never"
    event = json.dumps({"entered": str(entered), "release": str(release)}).encode()
    caller = threading.Thread(target=lambda: served.request("POST", "/invoke", event), daemon=True)
    caller.start()
    _poll(entered.exists, "the invocation running")
    started = time.monotonic()
    served.proc.send_signal(signal.SIGTERM)
    served.proc.wait(timeout=15)
    assert time.monotonic() - started < 10
    _poll(lambda: not Path(f"/proc/{out['pid']}").exists(), "the worker to exit")
