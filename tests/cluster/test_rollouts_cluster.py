"""A progressive rollout in a cluster, end to end: the operator shifts an alias's weights by steps it
writes into the alias's status and as Events, judges the new version on the gateway's per-version
counts (read from the real `lamina gateway`'s /metrics), and rolls back by itself when the new
version fails at INIT. The pods' runtime servers run as in test_end_to_end (this test plays the
kubelet for kwok's loopback pods: tests/cluster/stack.py's PodRunner)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError
from kubernetes import client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_operator_reconcile import Cluster, function

from tests.cluster.stack import Gateway, LaminaStack

GOOD = "def handler(event, context):\n    return {tag!r}\n"
BROKEN_INIT = "raise RuntimeError('cannot start')\n\ndef handler(event, context):\n    return 'never'\n"
ROLLOUT = {
    "type": "Linear",
    "percent": 50,
    "intervalSeconds": 6,
    "errorRateThreshold": 0.2,
    "windowSeconds": 60,
    "minimumInvocations": 3,
}


@pytest.fixture
def stack(lamina_stack: LaminaStack, k8s_api: client.ApiClient) -> Iterator[tuple[Cluster, Gateway]]:
    """A gateway, the operator that reads the gateway's per-version counts, the kubelet's stand-in."""
    gateway = lamina_stack.gateway()
    lamina_stack.operator(env={"LAMINA_GATEWAY_METRICS_URLS": f"http://127.0.0.1:{gateway.port}/metrics"})
    lamina_stack.kubelet()
    yield Cluster(k8s_api, lamina_stack.namespace), gateway


def alias(cluster: Cluster) -> dict[str, Any]:
    return ((cluster.get("functions", "rf").get("status") or {}).get("aliases") or {}).get("live") or {}


def events(cluster: Cluster) -> list[str]:
    found = client.CoreV1Api(cluster.api).list_namespaced_event(cluster.ns)
    return [e.reason for e in found.items if e.involved_object.name == "rf"]


def call(lam: Any) -> tuple[str, bool]:
    response = lam.invoke(FunctionName="rf:live", Payload=b"{}")
    return response["ExecutedVersion"], "FunctionError" in response


def try_call(lam: Any) -> tuple[str, bool] | None:
    """A call that may find the gateway not listening yet."""
    try:
        return call(lam)
    except EndpointConnectionError:
        return None


def test_linear_rollout_steps_then_rolls_back_a_version_failing_at_init(
    stack: tuple[Cluster, Gateway], wait_until: Callable[..., Any]
) -> None:
    cluster, gateway = stack
    live = {"live": {"functionVersion": "$LATEST.PUBLISHED", "rollout": ROLLOUT}}
    cluster.create(
        "functions",
        function("rf", publishVersions=True, aliases=live, code={"inline": GOOD.format(tag="one")}),
    )
    wait_until(lambda: alias(cluster).get("functionVersion") == "1", timeout=60, message="live -> 1")
    lam = gateway.lambda_client()
    wait_until(lambda: try_call(lam) == ("1", False), timeout=90, message="version 1 answers")

    # A good version 2: 50 %, then (after 6 s, no errors) 100 %.
    cluster.patch("functions", "rf", {"code": {"inline": GOOD.format(tag="two")}})
    wait_until(
        lambda: alias(cluster).get("additionalVersionWeights") == {"2": 0.5}, timeout=60, message="50 % to 2"
    )
    assert alias(cluster)["rollout"]["phase"] == "Progressing"
    seen = set()
    deadline = time.monotonic() + 60
    while alias(cluster).get("functionVersion") != "2" and time.monotonic() < deadline:
        seen.add(call(lam))
    assert alias(cluster)["functionVersion"] == "2" and alias(cluster)["rollout"]["phase"] == "Succeeded"
    assert ("2", False) in seen
    assert {"RolloutStarted", "RolloutSucceeded"} <= set(events(cluster))

    # Version 3 fails at INIT: its errors roll the alias back to 2 by itself.
    cluster.patch("functions", "rf", {"code": {"inline": BROKEN_INIT}})
    deadline = time.monotonic() + 60
    while alias(cluster).get("additionalVersionWeights") != {"3": 0.5} and time.monotonic() < deadline:
        time.sleep(0.2)
    assert alias(cluster).get("additionalVersionWeights") == {"3": 0.5}, str(
        cluster.get("functions", "rf")["status"]
    )
    failures = 0
    deadline = time.monotonic() + 90
    while alias(cluster).get("rollout", {}).get("phase") != "RolledBack" and time.monotonic() < deadline:
        version, failed = call(lam)
        failures += version == "3" and failed
        time.sleep(0.1)
    state = alias(cluster)
    assert state["rollout"]["phase"] == "RolledBack", state
    assert state["functionVersion"] == "2" and state["additionalVersionWeights"] == {}
    assert failures >= 1 and "failed" in state["rollout"]["message"]
    assert "RolloutRolledBack" in events(cluster)
    wait_until(lambda: {call(lam) for _ in range(5)} == {("2", False)}, timeout=30, message="all on 2")
