"""Two `lamina gateway` replicas against one cluster keep a single gateway's promises.

Each function is served by one replica at a time (the holder of its Lease); the other forwards its
calls there. Checked end to end on the kwok control plane with the kubelet played by the test
(tests/cluster/stack.py's PodRunner runs each pod's own runtime server at its IP):

* reserved concurrency holds across both: the function itself counts its concurrent runs (a counter
  in a file every environment shares, under a lock) and the count never passes the reservation;
* no environment is ever sent two invocations: every runtime server's own 429 counter stays 0;
* a replica killed mid-call: the call it held fails with ServiceException (no hang), and the other
  replica takes the function over once the Lease expires and serves it on the same pods;
* a replica killed while Event invocations it accepted are queued and running: every one of them
  still runs (the queue is Redis; a lost replica's leased events come back when their lease ends);
* a replica stopped (SIGTERM, as a rolling update or a node drain stops it) with calls in flight: a
  call that ends within its grace gets its answer, one still running at the end of the grace gets
  Lambda's ServiceException (500, its error shape), directly or forwarded, and the other replica
  serves the function at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
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
from test_operator_reconcile import Cluster, function

from lamina.resources import labels
from tests.cluster.stack import Gateway, LaminaStack, PodRunner, invoke, wait_invocable
from tests.support.local_mode import free_port

HANDLER = """
import fcntl, json, os, time
STATE = os.path.join(os.environ["COUNT_DIR"], "state.json")
def _add(step):
    with open(STATE + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            state = json.load(open(STATE))
        except (OSError, ValueError):
            state = {"now": 0, "most": 0, "runs": 0}
        state["now"] += step
        state["most"] = max(state["most"], state["now"])
        state["runs"] += step > 0
        with open(STATE, "w") as f:
            json.dump(state, f)
def handler(event, context):
    if "mark" in event:  # an Event invocation: leave a mark per event that ran
        open(os.path.join(os.environ["COUNT_DIR"], "ran-" + str(event["mark"])), "a").close()
    _add(1)
    try:
        time.sleep(event.get("sleep", 0))
    finally:
        _add(-1)
    return {"pid": os.getpid()}
"""

LEASE_SECONDS = 4
DRAIN_SECONDS = 6  # the replicas' --drain-seconds: the grace of calls in flight on SIGTERM
ACCOUNT_LIMIT = 4  # the replicas' --concurrency-limit: the unreserved pool they share
TOKEN = "peer-token-of-the-test"
Stack = tuple[Cluster, list[Gateway], PodRunner, Path]


def replica(stack: LaminaStack, redis_url: str, *args: str) -> Gateway:
    port = free_port()
    return stack.gateway(
        *args,
        "--advertise", f"127.0.0.1:{port}", "--lease-seconds", str(LEASE_SECONDS),
        "--redis-url", redis_url, "--async-lease-seconds", "5",
        "--concurrency-limit", str(ACCOUNT_LIMIT), "--min-unreserved", "0",
        "--drain-seconds", str(DRAIN_SECONDS),
        port=port, env={"LAMINA_GATEWAY_PEER_TOKEN": TOKEN},
    )  # fmt: skip


def start_replicas(
    stack: LaminaStack, count: int, *more_namespaces: str
) -> tuple[list[Gateway], list[PodRunner], Path]:
    """The operator (no warm pools: every environment is a Deployment pod) and ``count`` gateway
    replicas watching the stack's namespace and ``more_namespaces``, the kubelet's stand-in in each,
    and the directory where the functions count their runs."""
    redis = stack.redis()  # the replicas' one queue of Event invocations
    more = [arg for ns in more_namespaces for arg in ("--namespace", ns)]
    stack.operator(*more, env={"LAMINA_POOL_SIZE": "0"})
    gateways = [replica(stack, redis.url, *more) for _ in range(count)]
    counts = stack.workdir / "counts"
    counts.mkdir()
    return gateways, [stack.kubelet(ns) for ns in (stack.namespace, *more_namespaces)], counts


@pytest.fixture
def replicas(lamina_stack: LaminaStack, k8s_api: client.ApiClient) -> Iterator[Stack]:
    """Two gateway replicas of one namespace (:func:`start_replicas`)."""
    gateways, pods, counts = start_replicas(lamina_stack, 2)
    yield Cluster(k8s_api, lamina_stack.namespace), gateways, pods[0], counts


def counting_function(k8s: Cluster, name: str, counts: Path, **spec: Any) -> None:
    spec.setdefault("timeoutSeconds", 30)
    k8s.create(
        "functions", function(name, code={"inline": HANDLER}, environment={"COUNT_DIR": str(counts)}, **spec)
    )


def state(counts: Path) -> dict[str, int]:
    """The functions' count, read under their lock (they rewrite it while they run)."""
    with (counts / "state.json.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return json.loads((counts / "state.json").read_text())


def runtime_stats(k8s: Cluster, pods: PodRunner, fn: str) -> list[dict[str, int]]:
    """Each environment's own counters (GET /stats of its runtime server)."""
    selector = f"{labels.FUNCTION}={fn}"
    found = []
    for pod in k8s.core.list_namespaced_pod(k8s.ns, label_selector=selector).items:
        if pod.metadata.uid in pods.servers and pod.status.pod_ip:
            with urllib.request.urlopen(f"http://{pod.status.pod_ip}:8080/stats", timeout=10) as reply:
                found.append(json.loads(reply.read()))
    return found


def holder(k8s: Cluster, fn: str) -> str:
    lease = client.CoordinationV1Api(k8s.api).read_namespaced_lease(f"lamina-fn-{fn}", k8s.ns)
    return lease.spec.holder_identity


def held_by_a(replicas: Stack, name: str) -> None:
    """A counting function ``name``, invocable through replica a (so a holds its Lease) and then
    through b (which forwards its calls to a)."""
    k8s, (a, b), _, counts = replicas
    counting_function(k8s, name, counts)
    wait_invocable(a.lambda_client(), name)  # through a: a holds the Lease
    wait_invocable(b.lambda_client(), name)  # b knows the function (and forwards to a)
    assert holder(k8s, name).endswith(f"-{a.proc.pid}")


def call(gw: Gateway, fn: str, event: dict[str, Any]) -> tuple[str, Any]:
    """("ok", body) or (error code, response) of one invocation through ``gw``."""
    lam = gw.lambda_client()
    try:
        response, body = invoke(lam, fn, event)
    except lam.exceptions.ClientError as exc:
        return exc.response["Error"]["Code"], exc.response
    return ("ok", body) if "FunctionError" not in response else ("function-error", body)


def assert_the_account_limit_held(burst: list[tuple[str, Any]], counts: Path) -> None:
    """A burst of unreserved calls: some answered, the others throttled by the account's limit, and the
    functions never ran more than that limit at once (counted by the functions themselves)."""
    outcomes = [code for code, _ in burst]
    assert set(outcomes) <= {"ok", "TooManyRequestsException"}, outcomes
    assert "ok" in outcomes and "TooManyRequestsException" in outcomes, outcomes
    for code, response in burst:
        if code == "TooManyRequestsException":
            assert response.get("Reason") == "ConcurrentInvocationLimitExceeded", response
    assert state(counts)["most"] <= ACCOUNT_LIMIT, state(counts)


def test_reserved_concurrency_is_a_cap_across_replicas_and_no_environment_takes_two(
    replicas: Stack, wait_until: Callable[..., Any]
) -> None:
    k8s, (a, b), pods, counts = replicas
    counting_function(k8s, "capped", counts, reservedConcurrency=2)
    for gw in (a, b):
        wait_invocable(gw.lambda_client(), "capped")

    # A burst through both replicas at once: 12 calls of 1.5 s for 2 reserved environments.
    with ThreadPoolExecutor(12) as ex:
        burst = list(ex.map(lambda i: call((a, b)[i % 2], "capped", {"sleep": 1.5}), range(12)))
    outcomes = [code for code, _ in burst]
    assert set(outcomes) <= {"ok", "TooManyRequestsException"}, outcomes
    assert outcomes.count("ok") >= 2
    for code, response in burst:
        if code == "TooManyRequestsException":
            assert response.get("Reason") == "ReservedFunctionConcurrentInvocationLimitExceeded", response

    # Then steady load: four callers, two per replica, each calling again as soon as it is answered.
    stop = time.monotonic() + 8
    answered: list[str] = []

    def caller(gw: Gateway) -> None:
        while time.monotonic() < stop:
            answered.append(call(gw, "capped", {"sleep": 0.2})[0])

    threads = [threading.Thread(target=caller, args=(gw,)) for gw in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert set(answered) <= {"ok", "TooManyRequestsException"}, set(answered)
    assert answered.count("ok") >= 10
    assert state(counts)["most"] <= 2, state(counts)  # counted by the function itself
    assert state(counts)["now"] == 0
    stats = runtime_stats(k8s, pods, "capped")
    assert stats and sum(s["invocations"] for s in stats) == state(counts)["runs"]
    assert [s["busyRefusals"] for s in stats] == [0] * len(stats)  # never two at once in one environment
    assert holder(k8s, "capped")  # one replica served it; the other forwarded
    lease = client.CoordinationV1Api(k8s.api).read_namespaced_lease("lamina-fn-capped", k8s.ns)
    assert [(o.kind, o.name) for o in lease.metadata.owner_references] == [("Function", "capped")]


def test_a_lost_replica_fails_its_calls_fast_and_the_other_takes_the_function_over(
    replicas: Stack, wait_until: Callable[..., Any]
) -> None:
    k8s, (a, b), _, counts = replicas
    held_by_a(replicas, "steady")

    # A call forwarded by b to a, and a killed while the function runs it.
    result: dict[str, Any] = {}
    started = time.monotonic()
    forwarded = threading.Thread(target=lambda: result.update(out=call(b, "steady", {"sleep": 3})))
    forwarded.start()
    wait_until(lambda: state(counts)["now"] == 1, timeout=30, message="the forwarded call running")
    os.kill(a.proc.pid, signal.SIGKILL)
    forwarded.join(30)
    assert not forwarded.is_alive(), "the call held by the lost replica hung"
    code, response = result["out"]
    assert code == "ServiceException", (code, response)
    assert time.monotonic() - started < 15

    # b takes the function over when the Lease has expired, and serves it on the same pods.
    before = {
        p.metadata.uid
        for p in k8s.core.list_namespaced_pod(k8s.ns, label_selector=f"{labels.FUNCTION}=steady").items
    }
    code, body = call(b, "steady", {})
    assert code == "ok", body
    assert holder(k8s, "steady").endswith(f"-{b.proc.pid}")
    after = {
        p.metadata.uid
        for p in k8s.core.list_namespaced_pod(k8s.ns, label_selector=f"{labels.FUNCTION}=steady").items
    }
    assert after == before  # taken over: the Deployment's pods, not new ones
    wait_until(lambda: state(counts)["now"] == 0, timeout=30, message="the orphaned call ended")


def test_a_stopped_replica_answers_its_calls_in_flight_the_slow_ones_with_service_exception(
    replicas: Stack, wait_until: Callable[..., Any]
) -> None:
    k8s, (a, b), _, counts = replicas
    held_by_a(replicas, "drained")

    # In flight when a is told to stop: a long call sent to a itself, a long call sent to b, which
    # forwards it to a, and then a short call sent to a.
    results: dict[str, Any] = {}

    def start(key: str, gw: Gateway, sleep: float) -> threading.Thread:
        thread = threading.Thread(target=lambda: results.update({key: call(gw, "drained", {"sleep": sleep})}))
        thread.start()
        return thread

    threads = [start("long", a, 20), start("forwarded", b, 20)]  # the timeout is 30 s
    wait_until(lambda: state(counts)["now"] == 2, timeout=90, message="the two long calls running")
    threads.append(start("short", a, 2))
    wait_until(lambda: state(counts)["now"] == 3, timeout=90, message="the short call running")
    stopped = time.monotonic()
    a.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(DRAIN_SECONDS + 20)
    assert not any(t.is_alive() for t in threads), "a call hung"
    assert a.proc.wait(20) == 0
    assert time.monotonic() - stopped < DRAIN_SECONDS + 12  # the grace, not the 20 s calls

    code, body = results["short"]
    assert code == "ok" and "pid" in body, results["short"]  # accepted before SIGTERM, done within the grace
    for key in ("long", "forwarded"):
        code, error = results[key]
        assert code == "ServiceException", (key, code, error)
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 500, error
        assert error["ResponseMetadata"]["HTTPHeaders"]["x-amzn-errortype"] == "ServiceException"
        assert error["ResponseMetadata"]["HTTPHeaders"].get("x-amzn-requestid"), error
        assert error["Type"] == "Service" and error["Error"]["Message"], error

    # a gave its Lease back as it stopped: b serves the function now, without waiting for it to expire.
    code, body = call(b, "drained", {})
    assert code == "ok", body
    assert holder(k8s, "drained").endswith(f"-{b.proc.pid}")
    wait_until(lambda: state(counts)["now"] == 0, timeout=60, message="the cut calls ended in their pods")


def test_event_invocations_a_lost_replica_accepted_all_run(
    replicas: Stack, wait_until: Callable[..., Any]
) -> None:
    _, (a, _), _, counts = replicas
    held_by_a(replicas, "queued")
    lam = a.lambda_client()
    for i in range(12):  # accepted (202) by a, each event runs 1 s
        assert (
            lam.invoke(
                FunctionName="queued", InvocationType="Event", Payload=json.dumps({"mark": i, "sleep": 1})
            )["StatusCode"]
            == 202
        )
    wait_until(lambda: state(counts)["now"] >= 1, timeout=60, message="events running")
    os.kill(a.proc.pid, signal.SIGKILL)  # with events leased, running and queued

    def ran() -> set[int]:
        return {int(p.name.removeprefix("ran-")) for p in counts.glob("ran-*")}

    wait_until(lambda: ran() == set(range(12)), timeout=120, message="every accepted event ran")


def test_the_unreserved_pool_is_shared_across_replicas_not_multiplied(
    replicas: Stack, wait_until: Callable[..., Any]
) -> None:
    """Two unreserved functions, each served by another replica: together they never run more than the
    account's concurrency (each replica takes its share of the unreserved pool)."""
    k8s, (a, b), _, counts = replicas
    counting_function(k8s, "left", counts)
    counting_function(k8s, "right", counts)
    wait_invocable(a.lambda_client(), "left")  # a holds left
    wait_invocable(b.lambda_client(), "right")  # b holds right
    wait_invocable(b.lambda_client(), "left")
    wait_invocable(a.lambda_client(), "right")
    assert holder(k8s, "left").endswith(f"-{a.proc.pid}") and holder(k8s, "right").endswith(f"-{b.proc.pid}")
    time.sleep(LEASE_SECONDS)  # three renewal rounds: each replica has counted the other's Leases

    with ThreadPoolExecutor(12) as ex:
        burst = list(
            ex.map(lambda i: call((a, b)[i % 2], ("left", "right")[i // 2 % 2], {"sleep": 1.5}), range(12))
        )
    assert_the_account_limit_held(burst, counts)


def gauge(gw: Gateway, name: str) -> float:
    """A gauge of the replica's /metrics."""
    with urllib.request.urlopen(f"{gw.url}/metrics", timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in the metrics of {gw.url}")


def test_three_replicas_over_two_namespaces_split_the_unreserved_pool_exactly(
    k8s_api: client.ApiClient,
    namespace: str,
    second_namespace: str,
    lamina_stack: LaminaStack,  # after the namespaces: stopped before they are deleted
    wait_until: Callable[..., Any],
) -> None:
    """Functions of two namespaces, served by three replicas that watch both: each replica counts
    the Leases of both namespaces, takes its part of the account's unreserved concurrency (4 over 3:
    2, 1, 1, none lost to rounding), and together the functions never run more than the account's."""
    gateways, _, counts = start_replicas(lamina_stack, 3, second_namespace)
    first, second = Cluster(k8s_api, namespace), Cluster(k8s_api, second_namespace)
    names = {"left": first, "mid": first, "right": second}
    for name, k8s in names.items():
        counting_function(k8s, name, counts)
    # The gateways' default namespace is the first; the second's functions go by "namespace.name".
    target = {"left": "left", "mid": "mid", "right": f"{second_namespace}.right"}
    for gw, name in zip(gateways, names, strict=True):  # each replica takes one function's Lease
        wait_invocable(gw.lambda_client(), target[name])
    for gw in gateways:
        for name in names:
            wait_invocable(gw.lambda_client(), target[name])
    for gw, (name, k8s) in zip(gateways, names.items(), strict=True):
        assert holder(k8s, name).endswith(f"-{gw.proc.pid}"), name

    def shares() -> list[float]:
        return sorted(gauge(gw, "lamina_unreserved_concurrency") for gw in gateways)

    def replicas() -> list[float]:
        return [gauge(gw, "lamina_gateway_replicas") for gw in gateways]

    # Within a renewal round or two each replica has counted the others' Leases in both namespaces.
    # Both together: a replica that has counted only two of the three takes half the pool, and
    # the sorted shares can then read 1, 1, 2 for a moment before it counts the third.
    wait_until(
        lambda: replicas() == [3, 3, 3] and shares() == [1, 1, 2],
        timeout=3 * LEASE_SECONDS,
        message="each replica counted the three and took its part",
    )

    # A burst at every function through every replica: the functions count their runs together.
    def one(i: int) -> tuple[str, Any]:
        return call(gateways[i % 3], target[list(names)[i // 3 % 3]], {"sleep": 1.5})

    with ThreadPoolExecutor(18) as ex:
        burst = list(ex.map(one, range(18)))
    assert_the_account_limit_held(burst, counts)
