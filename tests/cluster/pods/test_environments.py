"""Execution environments as real pods: cold starts, INIT before Ready, keep-alive, limits, isolation,
and code that pods fetch from a URL."""

from __future__ import annotations

import hashlib
from typing import Any

from lamina.api.function import cpu_millicores
from tests.cluster.pods.conftest import FileServer, Lamina, function_yaml, unique, wait_for
from tests.support.archives import make_zip

ECHO = """
import os
def handler(event, context):
    return {"pid": os.getpid(), "echo": event}
"""


def test_a_cold_start_from_zero_replicas_answers_and_leaves_one_pod(lamina: Lamina) -> None:
    name = unique("cold")
    lamina.apply(function_yaml(name, ECHO, provisionedConcurrency=0))
    lamina.wait_ready(name)
    assert lamina.deployment(name).spec.replicas == 0
    assert lamina.pods(name) == []
    r, body = lamina.invoke(name, {"n": 1}, read_timeout=150)
    assert "FunctionError" not in r and body["echo"] == {"n": 1}
    pods = lamina.pods(name)
    assert len(pods) == 1 and pods[0].spec.node_name == "lamina-node"


def test_an_idle_on_demand_environment_is_scaled_back_to_zero(lamina: Lamina) -> None:
    name = unique("idle")
    lamina.apply(function_yaml(name, ECHO, provisionedConcurrency=0, idleTimeoutSeconds=2))
    lamina.wait_ready(name)
    r, _ = lamina.invoke(name, {}, read_timeout=150)
    assert "FunctionError" not in r

    def scaled_to_zero() -> bool:
        dep = lamina.deployment(name)
        return dep.spec.replicas == 0 and not lamina.pods(name)

    wait_for(scaled_to_zero, 120, f"{name} back at zero pods after its keep-alive")
    r, body = lamina.invoke(name, {"again": True}, read_timeout=150)  # and it starts again on demand
    assert body["echo"] == {"again": True}


def test_a_provisioned_pod_is_ready_only_after_init(lamina: Lamina) -> None:
    name = unique("init")
    code = """
import time
INIT_START = time.time()
time.sleep(3)  # a slow INIT: imports, connections, models...
INIT_DONE = time.time()
def handler(event, context):
    return {"init_start": INIT_START, "init_done": INIT_DONE}
"""
    lamina.apply(function_yaml(name, code, provisionedConcurrency=1, timeoutSeconds=10))
    lamina.wait_ready(name)
    pod = lamina.pods(name)[0]
    ready = next(c for c in pod.status.conditions if c.type == "Ready").last_transition_time
    _, body = lamina.invoke(name, {})
    assert body["init_done"] - body["init_start"] >= 3
    # INIT finished before the pod turned Ready (whose timestamp is cut to the second).
    assert body["init_done"] <= ready.timestamp() + 1, (body, ready)


def test_memory_past_memory_mb_is_runtime_out_of_memory_and_the_environment_is_replaced(
    lamina: Lamina,
) -> None:
    name = unique("mem")
    code = """
import time
def handler(event, context):
    hold = []
    if event.get("burst"):  # faster than any watcher: the kernel's OOM killer may get there first
        hold.append(b"x" * (event["mb"] << 20))
    for _ in range(event.get("mb", 0) // 8):
        hold.append(b"x" * (8 << 20))
        time.sleep(0.01)
    return {"held_mb": sum(map(len, hold)) >> 20}
"""
    lamina.apply(function_yaml(name, code, provisionedConcurrency=1, memoryMB=128, timeoutSeconds=20))
    lamina.wait_ready(name)
    _, body = lamina.invoke(name, {"mb": 16})
    assert body == {"held_mb": 16}
    for event in ({"mb": 400}, {"mb": 600, "burst": True}):
        r, body = lamina.invoke(name, event)
        assert r["FunctionError"] == "Unhandled", (event, body)
        assert body["errorType"] == "Runtime.OutOfMemory", (event, body)
        _, after = lamina.invoke(name, {"mb": 8})  # a fresh environment serves the next call
        assert after == {"held_mb": 8}, (event, after)


def test_function_pods_are_non_root_on_a_read_only_root_without_a_kubernetes_token(lamina: Lamina) -> None:
    name = unique("iso")
    code = """
import os
def writable(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return True
    except OSError as e:
        return e.errno
def handler(event, context):
    return {
        "uid": os.getuid(), "gid": os.getgid(),
        "root": writable("/usr/lamina-test"), "task": writable("/var/task/x"), "tmp": writable("/tmp/x"),
        "token": os.path.exists("/var/run/secrets/kubernetes.io/serviceaccount/token"),
        "k8s_env": sorted(k for k in os.environ if k.startswith("KUBERNETES")),
    }
"""
    lamina.apply(function_yaml(name, code, provisionedConcurrency=1))
    lamina.wait_ready(name)
    _, body = lamina.invoke(name, {})
    assert body["uid"] == 1000 and body["gid"] == 1000
    assert body["root"] == 30 and body["task"] == 30  # EROFS
    assert body["tmp"] is True
    assert body["token"] is False
    pod = lamina.pods(name)[0]
    assert pod.spec.automount_service_account_token is False


def test_url_code_and_a_url_layer_are_fetched_by_the_pod(lamina: Lamina, file_server: FileServer) -> None:
    name = unique("url")
    code = make_zip({"app.py": "from shared import greet\ndef handler(e, c):\n    return greet(e['who'])\n"})
    layer = make_zip({"python/shared.py": "def greet(who):\n    return {'hi': who}\n"})
    code_url = file_server.put(f"{name}-code.zip", code)
    layer_url = file_server.put(f"{name}-layer.zip", layer)
    lamina.apply(
        f"""
apiVersion: lamina.dev/v1alpha1
kind: Layer
metadata: {{name: {name}-shared}}
spec:
  url: {layer_url}
  sha256: {hashlib.sha256(layer).hexdigest()}
  compatibleRuntimes: [python3.12]
---
apiVersion: lamina.dev/v1alpha1
kind: Function
metadata: {{name: {name}}}
spec:
  runtime: python3.12
  handler: app.handler
  provisionedConcurrency: 1
  layers: [{name}-shared]
  code:
    url: {code_url}
    sha256: {hashlib.sha256(code).hexdigest()}
"""
    )
    lamina.wait_ready(name)
    _, body = lamina.invoke(name, {"who": "pods"})
    assert body == {"hi": "pods"}


def test_a_burst_at_zero_is_answered_by_several_pods(lamina: Lamina) -> None:
    name = unique("burst")
    code = "import socket, time\ndef handler(e, c):\n    time.sleep(1)\n    return socket.gethostname()\n"
    lamina.apply(function_yaml(name, code, provisionedConcurrency=0))
    lamina.wait_ready(name)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda i: lamina.invoke(name, {"i": i}, read_timeout=150), range(6)))
    assert all("FunctionError" not in r for r, _ in results), [b for _, b in results]
    pods = {b for _, b in results}  # each environment is a pod with its own host name
    assert len(pods) > 1, pods


def test_a_burst_that_the_node_has_room_for_only_in_part_is_answered_by_the_pods_that_start(
    lamina: Lamina,
) -> None:
    """Calls at zero to a function sized so that the node has room for all but one of the pods they
    need: that pod cannot be scheduled ("Insufficient cpu"), and the calls wait for the pods that
    start instead of all failing with its problem."""
    name = unique("room")

    def settled() -> bool:  # no pod on its way in or out: the node's free CPU holds still
        pods = lamina.core.list_namespaced_pod(lamina.namespace).items
        return not any(p.metadata.deletion_timestamp or not p.spec.node_name for p in pods)

    wait_for(settled, 120, "earlier tests' pods gone (they hold CPU requests)")
    # Two ninths of the free CPU per pod: the operator's warm pool of this size (2 pods by default)
    # takes its share first, and room is counted once it has.
    per_pod = lamina.free_millicores() * 2 // 9
    memory = per_pod * 1769 // 1000
    assert 128 <= memory <= 10240, f"the node's free CPU ({per_pod * 9 // 2}m) does not fit this test"
    per_pod = cpu_millicores(memory)
    code = "import socket, time\ndef handler(e, c):\n    time.sleep(1)\n    return socket.gethostname()\n"
    lamina.apply(function_yaml(name, code, provisionedConcurrency=0, memoryMB=memory))
    lamina.wait_ready(name)
    wait_for(settled, 120, "the warm pool's pods placed")
    room = lamina.free_millicores() // per_pod
    assert room >= 1, f"no room left for one pod of {per_pod}m"
    from concurrent.futures import ThreadPoolExecutor

    calls = room + 1
    with ThreadPoolExecutor(calls) as pool:
        results = list(pool.map(lambda i: lamina.invoke(name, {"i": i}, read_timeout=150), range(calls)))
    assert all("FunctionError" not in r for r, _ in results), [b for _, b in results]

    def unschedulable(pod: Any) -> bool:
        return any(
            c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"
            for c in pod.status.conditions or []
        )

    pods = lamina.core.list_namespaced_pod(lamina.namespace).items
    assert any(unschedulable(p) for p in pods), "the burst found room for every pod: it tested nothing"


def test_calls_past_reserved_concurrency_are_throttled_not_queued(lamina: Lamina) -> None:
    name = unique("cap")
    code = "import time\ndef handler(e, c):\n    time.sleep(2)\n    return 1\n"
    lamina.apply(function_yaml(name, code, provisionedConcurrency=1, reservedConcurrency=1))
    lamina.wait_ready(name)
    from concurrent.futures import ThreadPoolExecutor

    from botocore.exceptions import ClientError

    def call(i: int) -> str:
        try:
            lamina.invoke(name, {"i": i}, read_timeout=60)
            return "ok"
        except ClientError as e:
            return e.response["Error"]["Code"]

    with ThreadPoolExecutor(3) as pool:
        outcomes = sorted(pool.map(call, range(3)))
    assert "ok" in outcomes and "TooManyRequestsException" in outcomes, outcomes
