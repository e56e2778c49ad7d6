"""Cold starts from warm generic pools, end to end on the kwok control plane: the operator keeps the
pools, `lamina gateway` claims a pod (a conditional label update), hands it the function over HTTP
and serves it; the pool refills; a reaped pod is deleted. The test plays the kubelet as
tests/cluster/test_end_to_end.py does (tests/cluster/stack.py's PodRunner runs each pod's own container
command at its IP, pool pods with ``--pool``). Faults: two gateways racing for the last pool pod, a pod
killed in the middle of its hand-over, an empty pool under a burst.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_operator_reconcile import Cluster, Operator, function

from lamina.resources import labels
from lamina.resources.pool_pods import HELD_BY
from tests.cluster.stack import Gateway, LaminaStack, PodRunner, invoke, parent_pid, wait_invocable

HANDLER = """
import os, time
INIT_SLEEP = float(os.environ.get("INIT_SLEEP", "0"))
time.sleep(INIT_SLEEP)
def handler(event, context):
    time.sleep(event.get("sleep", 0))
    return {"pid": os.getpid(), "fn": context.function_name, "greeting": os.environ.get("GREETING")}
"""

Stack = tuple[Cluster, Callable[..., Gateway], PodRunner, Operator]


@pytest.fixture
def pooled(lamina_stack: LaminaStack, k8s_api: client.ApiClient) -> Iterator[Stack]:
    """Operator with pools of 2 (a test may annotate its namespace for another size), the kubelet's
    stand-in, and ``gateway()`` to start one or more `lamina gateway` processes."""
    op = lamina_stack.operator(env={"LAMINA_POOL_SIZE": "2"})
    pods = lamina_stack.kubelet()
    yield Cluster(k8s_api, lamina_stack.namespace), lamina_stack.gateway, pods, op


def pool_pods(k8s: Cluster, state: str | None = None) -> list[Any]:
    selector = f"{labels.NAME}={labels.POOL_APP}" + (f",{labels.POOL_STATE}={state}" if state else "")
    pods = k8s.core.list_namespaced_pod(k8s.ns, label_selector=selector).items
    return [p for p in pods if not p.metadata.deletion_timestamp]


def running_idle(k8s: Cluster, pods: PodRunner) -> list[Any]:
    """Idle pool pods whose server the kubelet's stand-in runs (Ready and claimable)."""
    return [p for p in pool_pods(k8s, labels.IDLE) if p.metadata.uid in pods.servers and p.status.pod_ip]


def pooled_function(k8s: Cluster, name: str, wait_until: Any, **spec: Any) -> None:
    spec["environment"] = {"GREETING": name, **spec.get("environment", {})}
    k8s.create("functions", function(name, code={"inline": HANDLER}, **spec))
    wait_until(
        lambda: k8s.get("functions", name).get("status", {}).get("coldStartPath") == "Pool",
        message=f"{name} on the pool path",
    )


def test_a_cold_start_claims_a_warm_pod_which_then_serves_only_that_function(pooled, wait_until) -> None:
    k8s, gateway, pods, _ = pooled
    pooled_function(k8s, "warm", wait_until)
    wait_until(lambda: len(running_idle(k8s, pods)) == 2, message="two idle pool pods running")
    idle_before = {p.metadata.name for p in running_idle(k8s, pods)}
    lam = gateway().lambda_client()

    first = wait_invocable(lam, "warm")
    assert first["fn"] == "warm" and first["greeting"] == "warm"
    [claimed] = [p for p in pool_pods(k8s) if (p.metadata.labels or {}).get(labels.FUNCTION) == "warm"]
    assert claimed.metadata.name in idle_before  # a pod of the pool, not one of the Deployment
    assert parent_pid(first["pid"]) == pods.servers[claimed.metadata.uid].pid
    wait_until(
        lambda: (
            (k8s.core.read_namespaced_pod(claimed.metadata.name, k8s.ns).metadata.labels or {}).get(
                labels.POOL_STATE
            )
            == labels.SERVING
        ),
        message="marked serving",
    )
    owners = k8s.core.read_namespaced_pod(claimed.metadata.name, k8s.ns).metadata.owner_references or []
    assert [(o.kind, o.name) for o in owners] == [("Function", "warm")]  # deleted with its Function
    deployment = k8s.deployment("fn-warm")
    assert deployment is not None and deployment["spec"]["replicas"] == 0  # no pod of its own started

    _, again = invoke(lam, "warm", {})
    assert again["pid"] == first["pid"]  # warm now: the same environment
    wait_until(lambda: len(running_idle(k8s, pods)) == 2, message="the pool refilled")
    assert claimed.metadata.name not in {p.metadata.name for p in running_idle(k8s, pods)}


def test_a_reaped_pool_pod_is_deleted_never_reused(pooled, wait_until) -> None:
    k8s, gateway, pods, _ = pooled
    pooled_function(k8s, "brief", wait_until, idleTimeoutSeconds=1)
    wait_until(lambda: len(running_idle(k8s, pods)) == 2, message="pool pods running")
    lam = gateway().lambda_client()
    wait_invocable(lam, "brief")
    [claimed] = [p for p in pool_pods(k8s) if (p.metadata.labels or {}).get(labels.FUNCTION) == "brief"]

    def gone() -> bool:
        try:
            k8s.core.read_namespaced_pod(claimed.metadata.name, k8s.ns)
        except client.exceptions.ApiException as exc:
            return exc.status == 404
        return False

    wait_until(gone, timeout=60, message="the idle claimed pod deleted by the gateway's reaper")
    # The next cold start takes another pool pod.
    _, body = invoke(lam, "brief", {})
    assert body["fn"] == "brief"


def test_two_gateways_race_for_the_last_pool_pod(pooled, wait_until) -> None:
    """One pool pod, two gateways, two functions at zero called at once: one claims the pod, the
    other falls back to its Deployment; no pod ever serves two functions."""
    k8s, gateway, pods, _ = pooled
    k8s.core.patch_namespace(k8s.ns, {"metadata": {"annotations": {labels.POOL_SIZE: "1"}}})
    pooled_function(k8s, "left", wait_until)
    pooled_function(k8s, "right", wait_until)
    wait_until(lambda: len(running_idle(k8s, pods)) == 1, message="one idle pool pod")
    a, b = gateway(), gateway()
    for gw in (a, b):  # both know both functions (ResourceNotFound until they do)
        for name in ("left", "right"):
            wait_until(lambda gw=gw, name=name: _known(gw, name), timeout=60, message=f"{name} known")
    with ThreadPoolExecutor(2) as ex:
        results = list(
            ex.map(lambda args: invoke(args[0].lambda_client(), args[1], {}), ((a, "left"), (b, "right")))
        )
    assert {body["fn"] for _, body in results} == {"left", "right"}
    served_by: dict[int, set[str]] = {}
    for _, body in results:
        served_by.setdefault(parent_pid(body["pid"]), set()).add(body["fn"])
    assert all(len(fns) == 1 for fns in served_by.values())  # no environment served two functions
    claimed = [p for p in pool_pods(k8s) if (p.metadata.labels or {}).get(labels.FUNCTION)]
    assert all(len({(p.metadata.labels or {})[labels.FUNCTION]}) == 1 for p in claimed)
    # Each pod that was claimed carries exactly one function and one claimer.
    for pod in claimed:
        assert (pod.metadata.annotations or {}).get(labels.CLAIMED_BY)


def _known(gw: Gateway, name: str) -> bool:
    lam = gw.lambda_client()
    try:
        lam.get_function(FunctionName=name)
    except Exception:
        return False
    return True


def test_a_pod_killed_mid_hand_over_does_not_stop_the_cold_start(pooled, wait_until) -> None:
    k8s, gateway, pods, _ = pooled
    pooled_function(k8s, "slowinit", wait_until, environment={"INIT_SLEEP": "3", "GREETING": "slow"})
    wait_until(lambda: len(running_idle(k8s, pods)) == 2, message="pool pods running")
    gw = gateway()
    lam = gw.lambda_client()
    wait_until(lambda: _known(gw, "slowinit"), timeout=60, message="gateway knows the function")
    result: dict[str, Any] = {}
    call = threading.Thread(target=lambda: result.update(body=invoke(lam, "slowinit", {})[1]))
    call.start()

    def claimed_now() -> list[Any]:
        return [p for p in pool_pods(k8s, labels.CLAIMED) if (p.metadata.labels or {}).get(labels.FUNCTION)]

    wait_until(claimed_now, timeout=30, message="a pod claimed")
    victim = claimed_now()[0]
    time.sleep(1)  # inside its 3 s INIT
    k8s.core.delete_namespaced_pod(victim.metadata.name, k8s.ns, grace_period_seconds=0)
    call.join(120)
    assert not call.is_alive(), "the cold start hung"
    body = result["body"]
    assert body["fn"] == "slowinit" and body["greeting"] == "slow"
    assert parent_pid(body["pid"]) != pods.servers.get(victim.metadata.uid, None)


def test_an_empty_pool_under_a_burst_falls_back_to_the_deployment(pooled, wait_until) -> None:
    k8s, gateway, pods, _ = pooled
    k8s.core.patch_namespace(k8s.ns, {"metadata": {"annotations": {labels.POOL_SIZE: "1"}}})
    pooled_function(k8s, "burst", wait_until, reservedConcurrency=3, timeoutSeconds=30)
    wait_until(lambda: len(running_idle(k8s, pods)) == 1, message="one idle pool pod")
    gw = gateway()
    wait_until(lambda: _known(gw, "burst"), timeout=60, message="gateway knows the function")
    with ThreadPoolExecutor(3) as ex:
        results = list(ex.map(lambda _: invoke(gw.lambda_client(), "burst", {"sleep": 2}), range(3)))
    # Every call answered (no 5xx, no 429): one by the pool pod, the others by the Deployment's.
    assert all(r["StatusCode"] == 200 and "FunctionError" not in r for r, _ in results)
    deployment = k8s.deployment("fn-burst")
    assert deployment is not None and deployment["spec"]["replicas"] >= 1
    served = {parent_pid(body["pid"]) for _, body in results}
    claimed = [p for p in pool_pods(k8s) if (p.metadata.labels or {}).get(labels.FUNCTION) == "burst"]
    assert len(claimed) == 1 and pods.servers[claimed[0].metadata.uid].pid in served


def test_a_pool_pod_handed_to_someone_else_first_is_deleted_though_its_claim_was_won(
    pooled, wait_until
) -> None:
    """The claim and the hand-over go out together; a pod whose hand-over another claimer made first
    (its server answers 409) is deleted, never served, even when this gateway's conditional PATCH won
    it: the call falls back to the function's Deployment and is answered by the function itself."""
    k8s, gateway, pods, _ = pooled
    k8s.core.patch_namespace(k8s.ns, {"metadata": {"annotations": {labels.POOL_SIZE: "1"}}})
    pooled_function(k8s, "mine", wait_until)
    wait_until(lambda: len(running_idle(k8s, pods)) == 1, timeout=60, message="one idle pool pod")
    [taken] = running_idle(k8s, pods)
    rival = {
        "environment": {
            "AWS_LAMBDA_FUNCTION_NAME": "rival",
            "LAMINA_HANDLER": "index.handler",
            "LAMINA_TIMEOUT_SECONDS": "5",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
        },
        "code": {"files": {"index.py": "def handler(event, context):\n    return {'fn': 'rival'}\n"}},
        "layers": [],
        "invokeSecret": "rival-secret",
    }
    address = pods.endpoints[taken.metadata.uid]

    def listening() -> bool:
        try:
            with urllib.request.urlopen(f"http://{address}/healthz", timeout=5) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    wait_until(listening, timeout=60, message="the pool pod's server answers")
    request = urllib.request.Request(
        f"http://{address}/specialize", json.dumps(rival).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as reply:  # another claimer's hand-over, first
        assert reply.status == 200
    rival_server = pods.servers[taken.metadata.uid].pid
    gw = gateway()
    lam = gw.lambda_client()
    wait_until(lambda: _known(gw, "mine"), timeout=60, message="the gateway knows the function")
    _, body = invoke(lam, "mine", {})
    assert body["fn"] == "mine" and body["greeting"] == "mine"
    assert parent_pid(body["pid"]) != rival_server
    wait_until(
        lambda: taken.metadata.name not in {p.metadata.name for p in pool_pods(k8s)},
        message="the pod handed to someone else is deleted",
    )
    assert "refused the hand-over (409)" in gw.log.read_text()


def listening_idle(k8s: Cluster, pods: PodRunner) -> list[Any]:
    """Idle pool pods whose server answers (kwok marks a pod Ready before its process listens)."""

    def answers(uid: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://{pods.endpoints[uid]}/healthz", timeout=5) as reply:
                return bool(reply.status == 200)
        except (OSError, KeyError):
            return False

    return [p for p in running_idle(k8s, pods) if answers(p.metadata.uid)]


def held_by(k8s: Cluster) -> dict[str, str]:
    """Idle pool pods some replica holds: pod name -> the replica."""
    return {
        p.metadata.name: (p.metadata.annotations or {})[HELD_BY]
        for p in pool_pods(k8s, labels.IDLE)
        if (p.metadata.annotations or {}).get(HELD_BY)
    }


def test_replicas_hold_pool_pods_ahead_and_cold_start_on_their_own_holds_only(pooled, wait_until) -> None:
    """Each gateway holds one idle pod of a pool it cold-starts from, never the pool's last one the
    race could take; a cold start on a held pod needs only the hand-over and labels the pod serving
    the function; another replica's cold start never takes a pod held by a live replica; a replica
    that stops gives its holds back at once."""
    k8s, gateway, pods, _ = pooled
    k8s.core.patch_namespace(k8s.ns, {"metadata": {"annotations": {labels.POOL_SIZE: "3"}}})
    for name in ("one", "two", "three", "four"):
        pooled_function(k8s, name, wait_until)
    wait_until(lambda: len(listening_idle(k8s, pods)) == 3, timeout=60, message="three idle pool pods")
    a, b = gateway(), gateway()
    for gw in (a, b):
        for name in ("one", "two", "three", "four"):
            wait_until(lambda gw=gw, name=name: _known(gw, name), timeout=60, message=f"{name} known")

    assert invoke(a.lambda_client(), "one", {})[1]["fn"] == "one"  # a claims by the race, then holds
    wait_until(
        lambda: len(listening_idle(k8s, pods)) == 3 and len(held_by(k8s)) == 1,
        timeout=60,
        message="the pool refilled and a holds a pod",
    )
    [(a_pod, a_id)] = held_by(k8s).items()
    assert invoke(b.lambda_client(), "two", {})[1]["fn"] == "two"  # the race again (b holds none)
    wait_until(
        lambda: len(listening_idle(k8s, pods)) == 3 and len(set(held_by(k8s).values())) == 2,
        timeout=60,
        message="the pool refilled and b holds a pod too",
    )
    holds = held_by(k8s)
    assert len(holds) == 2 and holds[a_pod] == a_id  # one each: the third is left to the race
    [b_pod] = [name for name, holder in holds.items() if holder != a_id]

    # b's next cold start takes its own held pod, not a's.
    _, body = invoke(b.lambda_client(), "three", {})
    assert body["fn"] == "three"
    served = k8s.core.read_namespaced_pod(b_pod, k8s.ns)
    assert parent_pid(body["pid"]) == pods.servers[served.metadata.uid].pid
    wait_until(
        lambda: (
            (k8s.core.read_namespaced_pod(b_pod, k8s.ns).metadata.labels or {}).get(labels.POOL_STATE)
            == labels.SERVING
        ),
        message="the held pod labelled serving beside its first call",
    )
    claimed = k8s.core.read_namespaced_pod(b_pod, k8s.ns).metadata
    assert (claimed.labels or {})[labels.FUNCTION] == "three"
    assert HELD_BY not in (claimed.annotations or {}) and (claimed.annotations or {}).get(labels.CLAIMED_BY)
    wait_until(  # the pool's ReplicaSet lets go of a pod that left its selector
        lambda: (
            [(o.kind, o.name) for o in k8s.core.read_namespaced_pod(b_pod, k8s.ns).metadata.owner_references]
            == [("Function", "three")]
        ),
        message="the held pod owned by its Function alone",
    )
    assert held_by(k8s).get(a_pod) == a_id  # a's hold untouched
    assert "held pool pod" in b.log.read_text()

    # Every function served by a pod of its own.
    owners: dict[str, str] = {}
    for p in pool_pods(k8s):
        fn = (p.metadata.labels or {}).get(labels.FUNCTION)
        if fn:
            assert owners.setdefault(p.metadata.name, fn) == fn
    assert sorted(owners.values()) == ["one", "three", "two"]

    a.stop()  # a clean stop gives a's hold back at once (not when it expires)
    wait_until(lambda: a_id not in held_by(k8s).values(), timeout=30, message="a's hold given back")
    wait_until(lambda: len(listening_idle(k8s, pods)) == 3, timeout=60, message="the pool refilled")
    assert invoke(b.lambda_client(), "four", {})[1]["fn"] == "four"
