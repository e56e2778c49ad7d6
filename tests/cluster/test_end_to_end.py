"""A Function applied to the cluster answers boto3 through `lamina gateway`, served by its pods.

The operator makes the Function's Deployment; the controller-manager, scheduler and kwok turn it into
Ready pods with loopback IPs (the test control plane's pod CIDR is 127.244.0.0/16). kwok runs no
containers, so this test plays the kubelet: for each pod it starts the pod's own container command
(`python -m lamina_runtime serve`) with the container's environment and the code from its ConfigMap,
bound to the pod's IP. Everything between boto3 and the handler is the real thing: the gateway's pod
discovery, its scale-ups through the Deployment's scale subresource, HTTP to the pod, the runtime.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
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

from lamina.resources import labels
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


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


class PodRunner:
    """The kubelet's part for kwok's pods: run each Ready pod's container command at the pod's IP."""

    def __init__(self, api: client.ApiClient, namespace: str, workdir: Path) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.workdir = workdir
        self.servers: dict[str, subprocess.Popen[bytes]] = {}  # pod uid -> the pod's server
        self.endpoints: dict[str, str] = {}  # pod uid -> ip:port
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.errors: list[str] = []

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
                pods = self.core.list_namespaced_pod(self.namespace, label_selector=labels.FUNCTION).items
            except Exception as e:  # the API server is busy: the next round sees the pods
                self.errors.append(str(e))
                continue
            live = set()
            for pod in pods:
                uid = pod.metadata.uid
                live.add(uid)
                if uid not in self.servers and pod.status.pod_ip and not pod.metadata.deletion_timestamp:
                    self._start(pod)
            for uid in set(self.servers) - live:
                self.servers.pop(uid).terminate()

    def _start(self, pod: Any) -> None:
        ip = pod.status.pod_ip
        assert ip.startswith("127."), f"pod IP {ip} is not loopback"
        spec = client.ApiClient().sanitize_for_serialization(pod.spec)
        main = container({"spec": {"template": {"spec": spec}}})
        env = {e["name"]: e["value"] for e in main.get("env") or [] if "value" in e}
        code_cm = next(v["configMap"]["name"] for v in spec["volumes"] if v["name"] == "code")
        task_root = self.workdir / pod.metadata.name
        task_root.mkdir(parents=True, exist_ok=True)
        for key, text in (self.core.read_namespaced_config_map(code_cm, self.namespace).data or {}).items():
            (task_root / key).write_text(text)
        env["LAMBDA_TASK_ROOT"] = str(task_root)
        command = list(main["command"])
        assert command[:4] == ["python", "-m", "lamina_runtime", "serve"], command
        port = command[command.index("--port") + 1]
        command = [sys.executable, *command[1 : command.index("--host")], "--host", ip, "--port", port]
        base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "PYTHONPATH", "VIRTUAL_ENV")}
        self.servers[pod.metadata.uid] = subprocess.Popen(
            command, env={**base, **env}, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.endpoints[pod.metadata.uid] = f"{ip}:{port}"


class Gateway:
    """`lamina gateway` for one namespace, on a loopback port."""

    def __init__(self, kubeconfig: str, namespace: str, log: Path) -> None:
        self.port = free_port()
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "lamina.cli", "gateway",
                    "--host", "127.0.0.1", "--port", str(self.port),
                    "--namespace", namespace, "--default-namespace", namespace,
                    "--kubeconfig", kubeconfig, "--cold-start-timeout", "60",
                ],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

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
    k8s_api: client.ApiClient, kubeconfig: str, namespace: str, apply_yaml: Any, tmp_path: Path
) -> Iterator[tuple[Cluster, Gateway, PodRunner]]:
    apply_yaml(sorted((REPO / "crds").glob("*.yaml")))
    op = Operator(kubeconfig, namespace).start()
    gateway = Gateway(kubeconfig, namespace, tmp_path / "gateway.log")
    try:
        with PodRunner(k8s_api, namespace, tmp_path / "pods") as pods:
            yield Cluster(k8s_api, namespace), gateway, pods
    finally:
        gateway.stop()
        op.stop()
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
