"""Warm generic pools as the operator keeps them, against a real API server (kwok runs the pods)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_operator_reconcile import Cluster, Operator, function

from lamina.resources import labels
from tests.cluster.stack import LaminaStack


@pytest.fixture
def ns(k8s_api: client.ApiClient, namespace: str) -> Cluster:
    return Cluster(k8s_api, namespace)


@pytest.fixture
def pooled_operator(lamina_stack: LaminaStack) -> Operator:
    """The operator with pools of 2 (tests/cluster/stack.py)."""
    return lamina_stack.operator(env={"LAMINA_POOL_SIZE": "2"})


def pools(cluster: Cluster) -> dict[str, int]:
    deployments = cluster.apps.list_namespaced_deployment(
        cluster.ns, label_selector=f"{labels.NAME}={labels.POOL_APP}"
    ).items
    return {d.metadata.name: d.spec.replicas for d in deployments}


def idle_pool_pods(cluster: Cluster, pool: str) -> list[Any]:
    selector = f"{labels.POOL}={pool},{labels.POOL_STATE}={labels.IDLE}"
    return [
        p
        for p in cluster.core.list_namespaced_pod(cluster.ns, label_selector=selector).items
        if not p.metadata.deletion_timestamp
    ]


def test_pools_follow_the_functions_and_the_namespace(
    pooled_operator: Operator, ns: Cluster, wait_until: Any
) -> None:
    ns.create("functions", function("small-a"))
    ns.create("functions", function("small-b"))
    ns.create("functions", function("big", memoryMB=256))
    s3 = {"s3": {"bucket": "code-bucket", "key": "k.zip"}}
    ns.create("functions", function("from-s3", code=s3, memoryMB=512))
    wait_until(
        lambda: pools(ns) == {"lamina-pool-python3-12-128": 2, "lamina-pool-python3-12-256": 2},
        message="one pool per size in use",
    )
    wait_until(lambda: len(idle_pool_pods(ns, "python3.12-128")) == 2, message="pool pods running")
    wait_until(
        lambda: ns.get("functions", "small-a").get("status", {}).get("coldStartPath"), message="status"
    )
    status = ns.get("functions", "small-a")["status"]
    assert status["coldStartPath"] == "Pool" and "python3.12-128" in status["coldStartPathReason"]

    # The namespace says how big its pools are.
    ns.core.patch_namespace(ns.ns, {"metadata": {"annotations": {labels.POOL_SIZE: "1"}}})
    wait_until(lambda: set(pools(ns).values()) == {1}, message="pools resized by the annotation")

    # The last function of a size goes: so does its pool.
    ns.delete("functions", "big")
    wait_until(lambda: set(pools(ns)) == {"lamina-pool-python3-12-128"}, message="unused pool deleted")

    # Pools off in this namespace: gone, and the functions say they start on their Deployment.
    ns.core.patch_namespace(ns.ns, {"metadata": {"annotations": {labels.POOL_SIZE: "0"}}})
    wait_until(lambda: pools(ns) == {}, message="pools removed")
    wait_until(
        lambda: ns.get("functions", "small-b")["status"].get("coldStartPath") == "Deployment",
        message="status follows",
    )


def test_a_claimed_pod_leaves_its_pool_and_the_pool_refills(
    pooled_operator: Operator, ns: Cluster, wait_until: Any
) -> None:
    """What a gateway's claim does, done by hand: relabel one idle pod (conditionally on its
    resourceVersion); the ReplicaSet lets it go and starts another; a second claim with the same,
    now stale, resourceVersion is refused."""
    ns.create("functions", function("claimer"))
    wait_until(lambda: len(idle_pool_pods(ns, "python3.12-128")) == 2, message="pool pods running")
    name = idle_pool_pods(ns, "python3.12-128")[0].metadata.name
    labelled = {labels.POOL_STATE: labels.CLAIMED, labels.FUNCTION: "claimer"}
    # As the gateway claims: read the pod, patch on its resourceVersion; a 409 means something else
    # (the kubelet's status, the ReplicaSet controller) wrote it in between, so read it again.
    for _ in range(20):
        pod = ns.core.read_namespaced_pod(name, ns.ns)
        claim = {"metadata": {"resourceVersion": pod.metadata.resource_version, "labels": labelled}}
        try:
            ns.core.patch_namespaced_pod(name, ns.ns, claim)
            break
        except client.exceptions.ApiException as exc:
            if exc.status != 409:
                raise
    else:
        pytest.fail("20 conflicts in a row claiming one pod")
    with pytest.raises(client.exceptions.ApiException) as lost:
        ns.core.patch_namespaced_pod(name, ns.ns, claim)  # the same claim again: its version is stale
    assert lost.value.status == 409  # two gateways can never win the same pod
    wait_until(
        lambda: (
            len(idle_pool_pods(ns, "python3.12-128")) == 2
            and pod.metadata.name not in {p.metadata.name for p in idle_pool_pods(ns, "python3.12-128")}
        ),
        message="the pool refilled",
    )
    claimed = ns.core.read_namespaced_pod(pod.metadata.name, ns.ns)
    assert not [o for o in claimed.metadata.owner_references or [] if o.kind == "ReplicaSet"]


def test_an_operator_of_one_namespace_leaves_other_namespaces_pools_alone(
    pooled_operator: Operator, ns: Cluster, k8s_api: client.ApiClient, wait_until: Any
) -> None:
    """An operator started for one namespace (with credentials that could write anywhere, as a test's
    or a cluster-admin's) ignores another namespace's pool-size annotation: that namespace's Functions
    and pools are another operator's."""
    other = Cluster(k8s_api, f"{ns.ns}-other")
    ns.core.create_namespace({"metadata": {"name": other.ns}})
    try:
        other.create("functions", function("theirs"))
        ns.create("functions", function("ours"))
        wait_until(lambda: pools(ns) == {"lamina-pool-python3-12-128": 2}, message="our pool")
        ns.core.patch_namespace(other.ns, {"metadata": {"annotations": {labels.POOL_SIZE: "3"}}})
        # Then a change of our own namespace, handled after the other's event (one watch, in order).
        ns.core.patch_namespace(ns.ns, {"metadata": {"annotations": {labels.POOL_SIZE: "1"}}})
        wait_until(lambda: pools(ns) == {"lamina-pool-python3-12-128": 1}, message="our pool resized")
        assert pools(other) == {}
        assert other.apps.list_namespaced_deployment(other.ns).items == []
        assert not (other.get("functions", "theirs").get("status") or {})
    finally:
        ns.core.delete_namespace(other.ns)
