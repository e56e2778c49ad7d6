"""A Function applied to the cluster answers boto3 through `lamina gateway`, served by its pods.

The operator makes the Function's Deployment; the controller-manager, scheduler and kwok turn it into
Ready pods with loopback IPs (the test control plane's pod CIDR is a /16 of 127.0.0.0/8, one per
cluster). kwok runs no containers, so this test plays the kubelet: for each pod it starts the pod's own
container command (`python -m lamina_runtime serve`) with the container's environment and the code from
its ConfigMap, bound to the pod's IP, on the interpreter of the pod's runtime and with the runtime's
boto3 (what the runtime image of that Python version holds). Everything between boto3 and the handler is
the real thing: the gateway's pod discovery, its scale-ups through the Deployment's scale subresource,
HTTP to the pod, the runtime.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import EndpointConnectionError
from kubernetes import client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_operator_reconcile import Cluster, Operator, container, function

from lamina.local.sdk import sdk_dir
from lamina.resources import labels
from tests.support import brokers
from tests.support.local_mode import REPO, free_port

HANDLER = """
import os, time
def handler(event, context):
    barrier = event.get("barrier")
    if barrier:  # wait until `parties` invocations run at the same time, each in its own environment
        with open(barrier["path"], "a") as f:
            f.write(f"{os.getpid()}\\n")
        while len(open(barrier["path"]).read().split()) < barrier["parties"]:
            if context.get_remaining_time_in_millis() < 1000:
                return {"pid": os.getpid(), "alone": True}
            time.sleep(0.05)
    return {"pid": os.getpid(), "greeting": "hello " + event.get("name", "world")}
"""


#: The operator's images are registry.test/runtime:{runtime} (tests/cluster/test_operator_reconcile.py);
#: this kubelet has none for python3.11.
MISSING_IMAGE = "registry.test/runtime:python3.11"


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


class PodRunner:
    """The kubelet's part for kwok's pods: run each pod's init containers (the `fetch` of url code)
    and then its container command at the pod's IP. Where the kubelet would fail (an image it cannot
    pull, an init container that exits with an error) it writes the pod status the kubelet writes."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        workdir: Path,
        unpullable: frozenset[str] = frozenset(),
        interpreters: dict[str, str] | None = None,
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.workdir = workdir
        self.unpullable = unpullable  # images "not found" in this kubelet's registry
        # What each runtime's image would run: "python3.12" -> an interpreter of that version.
        here = f"python{sys.version_info[0]}.{sys.version_info[1]}"
        self.interpreters = {here: sys.executable, **(interpreters or {})}
        self.servers: dict[str, subprocess.Popen[bytes]] = {}  # pod uid -> the pod's server
        self.failed: set[str] = set()  # pod uids whose start failed (status written)
        self.exited: set[str] = set()  # pod uids whose server exited while the pod lives (reported)
        self.endpoints: dict[str, str] = {}  # pod uid -> ip:port
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.errors: list[str] = []
        self.sdk = str(sdk_dir())  # the runtime image's boto3 (LAMINA_RUNTIME_PACKAGES)

    def __enter__(self) -> PodRunner:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for proc in self.servers.values():
            proc.terminate()
        for proc in self.servers.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    def server_pids(self) -> set[int]:
        return {p.pid for p in self.servers.values() if p.poll() is None}

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                pods = self.core.list_namespaced_pod(self.namespace).items
            except Exception as e:  # the API server is busy: the next round sees the pods
                self.errors.append(str(e))
                continue
            live = set()
            for pod in pods:
                uid = pod.metadata.uid
                live.add(uid)
                known = uid in self.servers or uid in self.failed
                if not known and pod.status.pod_ip and not pod.metadata.deletion_timestamp:
                    self._start(pod)
            for uid in set(self.servers) - live:
                self.servers.pop(uid).terminate()
            self._report_exits()

    def _report_exits(self) -> None:
        """Say (in the test's output) which pod's server ended while its pod lives: one that could not
        bind its IP (taken by another process) leaves the pod Ready with nobody of its own behind it."""
        for uid, proc in self.servers.items():
            if uid in self.exited or proc.poll() is None:
                continue
            self.exited.add(uid)
            log = self.workdir / f"{uid}.log"
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            message = f"pod server of {self.endpoints.get(uid)} (uid {uid}) exited with {proc.returncode}"
            self.errors.append(message)
            sys.stderr.write(f"PodRunner: {message}:\n{tail}\n")

    def _fail(self, pod: Any, field: str, status: dict[str, Any]) -> None:
        """Write what the kubelet reports for a pod that cannot start (kwok had marked it Ready)."""
        self.failed.add(pod.metadata.uid)
        not_ready = {
            "status": "False",
            "reason": "ContainersNotReady" if field == "containerStatuses" else "PodInitializing",
        }
        body = {
            "status": {
                "phase": "Pending",
                "conditions": [{"type": t, **not_ready} for t in ("Ready", "ContainersReady")],
                field: [status],
            }
        }
        self.core.patch_namespaced_pod_status(pod.metadata.name, self.namespace, body)

    def _start(self, pod: Any) -> None:
        ip = pod.status.pod_ip
        assert ip.startswith("127."), f"pod IP {ip} is not loopback"
        spec = client.ApiClient().sanitize_for_serialization(pod.spec)
        main = container({"spec": {"template": {"spec": spec}}})
        if main["image"] in self.unpullable:
            message = f'Back-off pulling image "{main["image"]}"'
            waiting = {"waiting": {"reason": "ImagePullBackOff", "message": message}}
            status = {"name": main["name"], "image": main["image"], "imageID": "", "ready": False,
                      "restartCount": 0, "state": waiting}  # fmt: skip
            self._fail(pod, "containerStatuses", status)
            return
        env = {e["name"]: e["value"] for e in main.get("env") or [] if "value" in e}
        for e in main.get("env") or []:  # what the kubelet resolves from Secrets
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                secret = self.core.read_namespaced_secret(ref["name"], self.namespace)
                env[e["name"]] = base64.b64decode((secret.data or {})[ref["key"]]).decode()
        task_root = self.workdir / pod.metadata.name
        task_root.mkdir(parents=True, exist_ok=True)
        pooled = (pod.metadata.labels or {}).get(labels.NAME) == labels.POOL_APP
        if pooled:  # a warm pool pod: its writable code and layer volumes are directories here
            for var, sub in (("LAMINA_POOL_TASK_ROOT", "task"), ("LAMINA_POOL_LAYERS_ROOT", "layers")):
                (task_root / sub).mkdir(exist_ok=True)
                env[var] = str(task_root / sub)
            env["LAMINA_FETCH_ALLOW_LOCAL"] = "1"  # url code is served on loopback in these tests
            self._serve(pod, main, env)
            return
        code = next(v for v in spec["volumes"] if v["name"] == "code")
        if "configMap" in code:
            cm = self.core.read_namespaced_config_map(code["configMap"]["name"], self.namespace)
            # As the kubelet mounts it: the listed items at their paths, else every key.
            paths = {i["key"]: i["path"] for i in code["configMap"].get("items") or []}
            for key, text in (cm.data or {}).items():
                if not paths or key in paths:
                    (task_root / paths.get(key, key)).write_text(text)
        for init in spec.get("initContainers") or []:
            command = list(init["command"])
            assert command[:4] == ["python", "-m", "lamina_runtime", "fetch"], command
            if command[-1] != env["LAMBDA_TASK_ROOT"]:
                continue  # layers: not used by these tests
            # Here the archives are served on loopback, as every "pod" address is: allow it.
            run = subprocess.run(
                [sys.executable, *command[1:-1], str(task_root)],
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, "LAMINA_FETCH_ALLOW_LOCAL": "1"},
            )
            if run.returncode != 0:  # terminationMessagePolicy FallbackToLogsOnError: the log's tail
                terminated = {"exitCode": run.returncode, "reason": "Error", "message": run.stderr[-2048:]}
                status = {"name": init["name"], "image": init["image"], "imageID": "", "ready": False,
                          "restartCount": 0, "state": {"terminated": terminated}}  # fmt: skip
                self._fail(pod, "initContainerStatuses", status)
                return
        env["LAMBDA_TASK_ROOT"] = str(task_root)
        self._serve(pod, main, env)

    def _serve(self, pod: Any, main: dict[str, Any], env: dict[str, str]) -> None:
        """Run the pod's container command at the pod's IP, with the interpreter of its runtime."""
        ip = pod.status.pod_ip
        command = list(main["command"])
        assert command[:5] == ["python", "-S", "-m", "lamina_runtime", "serve"], command
        port = command[command.index("--port") + 1]
        python = self.interpreters[env.get("LAMINA_RUNTIME", "python3.12")]
        env["LAMINA_RUNTIME_PACKAGES"] = self.sdk  # the image's ENV: the runtime's boto3
        flags = [f for f in command[command.index("--port") + 2 :] if f.startswith("--")]  # --pool
        command = [python, *command[1 : command.index("--host")], "--host", ip, "--port", port, *flags]
        base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "VIRTUAL_ENV")}
        # The runtime image holds lamina_runtime (stdlib only) for whichever interpreter runs it.
        base["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO / "runtime-image"), os.environ.get("PYTHONPATH")) if p
        )
        with (self.workdir / f"{pod.metadata.uid}.log").open("wb") as err:  # why it ended, if it does
            self.servers[pod.metadata.uid] = subprocess.Popen(
                command, env={**base, **env}, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err
            )
        self.endpoints[pod.metadata.uid] = f"{ip}:{port}"


class Gateway:
    """`lamina gateway` for one namespace, on a loopback port (``args``: more of its arguments;
    ``port``: one picked before, ``env``: more of its environment)."""

    def __init__(
        self,
        kubeconfig: str,
        namespace: str,
        log: Path,
        *args: str,
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "lamina.cli", "gateway",
                    "--host", "127.0.0.1", "--port", str(self.port),
                    "--namespace", namespace, "--default-namespace", namespace,
                    "--kubeconfig", kubeconfig, "--cold-start-timeout", "60", *args,
                ],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            )  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lambda_client(self) -> Any:
        return boto3.client(
            "lambda",
            endpoint_url=f"http://127.0.0.1:{self.port}",
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
            config=Config(retries={"max_attempts": 0}, read_timeout=90),
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def stack(
    k8s_api: client.ApiClient,
    kubeconfig: str,
    namespace: str,
    apply_yaml: Any,
    tmp_path: Path,
    python312: str,
) -> Iterator[tuple[Cluster, Gateway, PodRunner]]:
    apply_yaml(sorted((REPO / "crds").glob("*.yaml")))
    if not brokers.available("redis"):
        pytest.fail("redis-server is not installed: run scripts/test, which installs it")
    redis = brokers.RedisServer(tmp_path / "redis").start()  # the gateway's queue of Event invocations
    gateway = Gateway(kubeconfig, namespace, tmp_path / "gateway.log", "--redis-url", redis.url)
    # Functions call lamina at the gateway the operator names (AWS_ENDPOINT_URL_LAMBDA).
    op = Operator(kubeconfig, namespace, env={"LAMINA_GATEWAY_URL": gateway.url}).start()
    try:
        runner = PodRunner(
            k8s_api, namespace, tmp_path / "pods", frozenset({MISSING_IMAGE}), {"python3.12": python312}
        )
        with runner as pods:
            yield Cluster(k8s_api, namespace), gateway, pods
    finally:
        gateway.stop()
        op.stop()
        redis.close()
        sys.stderr.write(f"\n--- gateway log ---\n{gateway.log.read_text(errors='replace')[-3000:]}\n")
        sys.stderr.write(f"\n--- operator log ---\n{op.tail()}\n")


def invoke(lam: Any, name: str, event: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    response = lam.invoke(FunctionName=name, Payload=json.dumps(event).encode())
    return response, json.loads(response["Payload"].read())


def wait_invocable(lam: Any, name: str, within: float = 90) -> dict[str, Any]:
    """First successful invocation once the gateway knows the Function and one pod serves it."""
    deadline = time.monotonic() + within
    while True:
        try:
            response, body = invoke(lam, name, {"name": "first"})
            if response["StatusCode"] == 200 and "FunctionError" not in response:
                return body
        except (lam.exceptions.ResourceNotFoundException, EndpointConnectionError):
            pass  # the gateway is starting, or has not seen the Function yet
        assert time.monotonic() < deadline, f"{name} never became invocable"
        time.sleep(0.5)


def _on_cluster_with_loopback_pods(cluster: Cluster) -> None:
    for pod in cluster.core.list_namespaced_pod(cluster.ns).items:
        if pod.status.pod_ip and not pod.status.pod_ip.startswith("127."):
            pytest.skip(f"pods get {pod.status.pod_ip}, not loopback: only the local test cluster fits")


def test_boto3_reaches_a_handler_in_the_functions_pod(stack, wait_until) -> None:
    cluster, gateway, pods = stack
    cluster.create("functions", function("greeter", code={"inline": HANDLER}, provisionedConcurrency=1))
    lam = gateway.lambda_client()
    first = wait_invocable(lam, "greeter")
    _on_cluster_with_loopback_pods(cluster)
    assert first["greeting"] == "hello first"

    response, body = invoke(lam, "greeter", {"name": "lamina"})
    assert response["StatusCode"] == 200 and response["ExecutedVersion"] == "$LATEST"
    assert body["greeting"] == "hello lamina"
    # The handler ran in a worker of one of the pods' servers, started from the pod's own spec.
    assert parent_pid(body["pid"]) in pods.server_pids()
    assert len(pods.servers) == 1


def test_concurrent_calls_scale_the_deployment_and_land_on_new_pods(stack, wait_until, tmp_path) -> None:
    cluster, gateway, pods = stack
    fn = function(
        "burst",
        code={"inline": HANDLER},
        provisionedConcurrency=1,
        reservedConcurrency=3,
        timeoutSeconds=60,
    )
    cluster.create("functions", fn)
    lam = gateway.lambda_client()
    wait_invocable(lam, "burst")
    _on_cluster_with_loopback_pods(cluster)

    # Three calls that can only finish together: the one provisioned pod cannot serve them in turn.
    barrier = {"path": str(tmp_path / "barrier"), "parties": 3}
    with ThreadPoolExecutor(3) as ex:
        calls = list(
            ex.map(lambda i: invoke(gateway.lambda_client(), "burst", {"barrier": barrier}), range(3))
        )
    assert all(r["StatusCode"] == 200 and "FunctionError" not in r for r, _ in calls)
    assert not any(body.get("alone") for _, body in calls)
    pids = {body["pid"] for _, body in calls}
    assert len(pids) == 3  # three environments at once: the gateway scaled up for the burst
    assert {parent_pid(p) for p in pids} <= pods.server_pids()
    deployment = cluster.deployment("fn-burst")
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 3
    managers = {m["manager"] for m in deployment["metadata"]["managedFields"] if "f:replicas" in str(m)}
    assert "lamina-gateway" in managers
    wait_until(lambda: cluster.get("functions", "burst")["status"].get("readyEnvironments") == 3)


@pytest.fixture
def zips(tmp_path: Path) -> Iterator[Any]:
    """Serve zip archives over HTTP on loopback: ``publish(name, files) -> (url, sha256)``."""
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(root))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def publish(name: str, files: dict[str, str]) -> tuple[str, str]:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as archive:
            for path, text in files.items():
                archive.writestr(path, text)
        (root / name).write_bytes(buf.getvalue())
        url = f"http://127.0.0.1:{server.server_address[1]}/{name}"
        return url, hashlib.sha256(buf.getvalue()).hexdigest()

    yield publish
    server.shutdown()


def invoke_known(lam: Any, name: str, within: float = 60) -> Any:
    """Invoke once the gateway knows the Function; returns the response or the boto3 error raised."""
    deadline = time.monotonic() + within
    while True:
        try:
            return lam.invoke(FunctionName=name, Payload=b"{}")
        except (lam.exceptions.ResourceNotFoundException, EndpointConnectionError):
            assert time.monotonic() < deadline, f"the gateway never learnt of {name}"
            time.sleep(0.3)
        except Exception as exc:  # the answer under test
            return exc


def test_url_code_is_fetched_by_the_init_container_command_and_served(stack, zips) -> None:
    cluster, gateway, _ = stack
    url, sha = zips("ok.zip", {"app/main.py": "def handler(event, context):\n    return {'from': 'zip'}\n"})
    cluster.create(
        "functions", function("zipped", handler="app.main.handler", code={"url": url, "sha256": sha})
    )
    response = invoke_known(gateway.lambda_client(), "zipped")
    assert not isinstance(response, Exception), response
    assert json.loads(response["Payload"].read()) == {"from": "zip"}


def test_environments_that_cannot_start_are_named_in_status_and_in_the_invoke_error(
    stack, zips, wait_until
) -> None:
    """A failed fetch and a missing image: the Function's status says why (Ready=False, the reason,
    the cause), and every invoke is answered at once with ResourceNotReadyException naming it: never a
    hang until the cold-start limit, never a 429 from a slot the failed call kept."""
    cluster, gateway, _ = stack
    url, _ = zips("code.zip", {"index.py": "def handler(e, c):\n    return 1\n"})
    cluster.create(
        "functions", function("badzip", code={"url": url, "sha256": "0" * 64}, reservedConcurrency=1)
    )
    cluster.create("functions", function("noimage", runtime="python3.11", reservedConcurrency=1))
    lam = gateway.lambda_client()
    for name, reason, cause in (
        ("badzip", "InitContainerFailed", "sha256 mismatch"),
        ("noimage", "ImagePullBackOff", f'image "{MISSING_IMAGE}"'),
    ):
        for attempt in range(3):  # the first waits for its cold start; the next ones know at once
            error = invoke_known(lam, name)
            assert isinstance(error, lam.exceptions.ResourceNotReadyException), (name, attempt, error)
            assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 502
            assert reason in str(error) and cause in str(error), str(error)

        def condition(name: str = name) -> dict[str, Any]:
            conditions = cluster.get("functions", name).get("status", {}).get("conditions") or []
            return next((c for c in conditions if c["type"] == "Ready"), {})

        wait_until(lambda name=name, reason=reason: condition(name).get("reason") == reason, message=name)
        ready = condition(name)
        assert ready["status"] == "False" and cause in ready["message"], ready
    log = gateway.log.read_text(errors="replace")
    assert "cold start" in log and "sha256 mismatch" in log  # the wait and its end are in the log


CALLER = """
import json, os
import boto3

def handler(event, context):
    lam = boto3.client("lambda")  # endpoint, region and credentials from the pod's environment
    if event.get("async"):
        r = lam.invoke(FunctionName="greeter2", InvocationType="Event", Payload=json.dumps(event["async"]))
        return {"status": r["StatusCode"]}
    r = lam.invoke(FunctionName="greeter2", Payload=json.dumps({"name": "from a function"}))
    return {"status": r["StatusCode"], "body": json.load(r["Payload"]),
            "endpoint": os.environ["AWS_ENDPOINT_URL_LAMBDA"], "region": os.environ["AWS_REGION"],
            "arn": context.invoked_function_arn, "python": os.environ["AWS_EXECUTION_ENV"]}
"""

WRITES = """
import os
def handler(event, context):
    if "path" in event:
        with open(event["path"], "a") as f:
            f.write(event["value"] + "\\n")
        return None
    return {"greeting": "hello " + event.get("name", "world"), "pid": os.getpid()}
"""


def test_a_function_calls_another_through_the_gateway_sync_and_async(stack, tmp_path) -> None:
    """boto3 inside a pod's function reaches the gateway (AWS_ENDPOINT_URL_LAMBDA from the operator's
    settings), for a RequestResponse and an Event invocation of another function's pods."""
    cluster, gateway, _ = stack
    cluster.create("functions", function("greeter2", code={"inline": WRITES}, provisionedConcurrency=1))
    cluster.create(
        "functions",
        function("caller", code={"inline": CALLER}, provisionedConcurrency=1, timeoutSeconds=60),
    )
    lam = gateway.lambda_client()
    wait_invocable(lam, "greeter2")
    _on_cluster_with_loopback_pods(cluster)
    response, body = invoke(lam, "caller", {})
    assert "FunctionError" not in response, body
    assert body["status"] == 200 and body["body"]["greeting"] == "hello from a function"
    assert body["endpoint"] == gateway.url and body["python"] == "AWS_Lambda_python3.12"
    assert body["arn"] == f"arn:aws:lambda:{body['region']}:000000000000:function:caller"

    out = tmp_path / "async.txt"
    response, body = invoke(lam, "caller", {"async": {"path": str(out), "value": "queued"}})
    assert "FunctionError" not in response and body == {"status": 202}, body
    deadline = time.monotonic() + 60
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert out.read_text().split() == ["queued"]
