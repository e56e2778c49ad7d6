"""A Function applied to the cluster answers boto3 through `lamina gateway`, served by its pods.

The operator makes the Function's Deployment; the controller-manager, scheduler and kwok turn it into
Ready pods with loopback IPs (the test control plane's pod CIDR is a /16 of 127.0.0.0/8, one per
cluster). kwok runs no containers, so this test plays the kubelet (tests/cluster/stack.py's PodRunner):
for each pod it starts the pod's own container command (`python -m lamina_runtime serve`) with the
container's environment and the code from its ConfigMap, bound to the pod's IP, on the interpreter of
the pod's runtime and with the runtime's boto3 (what the runtime image of that Python version holds).
Everything between boto3 and the handler is the real thing: the gateway's pod discovery, its scale-ups
through the Deployment's scale subresource, HTTP to the pod, the runtime.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError
from kubernetes import client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_operator_reconcile import Cluster, function

from tests.cluster.stack import Gateway, LaminaStack, PodRunner, invoke, parent_pid, wait_invocable

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


@pytest.fixture
def stack(
    lamina_stack: LaminaStack, k8s_api: client.ApiClient
) -> Iterator[tuple[Cluster, Gateway, PodRunner]]:
    """A gateway with its queue of Event invocations in Redis, the operator (functions call lamina at
    the gateway it names them: AWS_ENDPOINT_URL_LAMBDA), and the kubelet's stand-in, which has no
    image for python3.11."""
    gateway = lamina_stack.gateway("--redis-url", lamina_stack.redis().url)
    lamina_stack.operator(env={"LAMINA_GATEWAY_URL": gateway.url})
    pods = lamina_stack.kubelet(unpullable=frozenset({MISSING_IMAGE}))
    yield Cluster(k8s_api, lamina_stack.namespace), gateway, pods


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
