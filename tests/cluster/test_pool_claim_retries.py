"""The pool claim's two writes and their retry paths, on the real API server
(lamina.environments.pool_claims): the claim (a merge patch conditional on the resourceVersion the
gateway saw) asked again when it lost only to a stale version, and the ``serving`` label written beside
the first call, asked again when the API server fails it and the pod deleted when it never succeeds.

Pods are plain pool-labelled pods held out of scheduling (nothing runs them and nobody else writes to
them: only the claim's writes are tested).
An API server cannot be told to fail a chosen write on demand, so the ``serving`` tests wrap the
client's ``patch_namespaced_pod``: the chosen attempts fail before they are sent (as a 503 from the
API server, or a connection that cannot be made would), every other call reaches the real API server.
"""

from __future__ import annotations

import asyncio
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from lamina.environments.base import FunctionConfig
from lamina.environments.pool_claims import MARK_ATTEMPTS, RUNTIME_PORT, PoolClaims
from lamina.resources import labels
from lamina.resources.pool_pods import CLAIMED_AT, PoolPod, pool_pod

POOL = "python3.12-128"


class FailingPatches(client.CoreV1Api):
    """CoreV1Api whose pod patches that label a pod ``serving`` fail as ``failures`` say, in turn
    (an exception to raise, or None to send that one); every other call goes to the API server."""

    def __init__(self, api: client.ApiClient, failures: list[Exception | None]) -> None:
        super().__init__(api)
        self.failures = failures
        self.serving_patches = 0

    def patch_namespaced_pod(self, name: str, namespace: str, body: Any, **kw: Any) -> Any:
        if (body.get("metadata") or {}).get("labels", {}).get(labels.POOL_STATE) == labels.SERVING:
            self.serving_patches += 1
            failure = self.failures.pop(0) if self.failures else None
            if failure is not None:
                raise failure
        return super().patch_namespaced_pod(name, namespace, body, **kw)


def unavailable() -> ApiException:
    return ApiException(status=503, reason="Service Unavailable")


async def no_handover(fn: FunctionConfig) -> dict[str, Any]:
    raise AssertionError("these tests hand nothing over")


def claims(k8s_api: client.ApiClient, namespace: str, gateway: str = "gw-a") -> PoolClaims:
    return PoolClaims(k8s_api, namespace, no_handover, gateway_id=gateway)


def idle_pod(k8s_api: client.ApiClient, namespace: str, name: str) -> PoolPod:
    core = client.CoreV1Api(k8s_api)
    body = {
        "metadata": {
            "name": name,
            "labels": {labels.NAME: labels.POOL_APP, labels.POOL: POOL, labels.POOL_STATE: labels.IDLE},
        },
        # Never scheduled: no scheduler or kubelet writes to it, so its resourceVersion changes
        # only when a test changes it.
        "spec": {
            "schedulingGates": [{"name": "lamina.dev/test-held"}],
            "containers": [{"name": "runtime", "image": "lamina-runtime:test"}],
        },
    }
    created = core.create_namespaced_pod(namespace, body)
    found = pool_pod(k8s_api.sanitize_for_serialization(created), RUNTIME_PORT)
    assert found is not None
    return found


def read(k8s_api: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        pod = client.CoreV1Api(k8s_api).read_namespaced_pod(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return dict(k8s_api.sanitize_for_serialization(pod))


def function(namespace: str) -> FunctionConfig:
    return FunctionConfig(name="fn", namespace=namespace, pool=POOL)


def gone_or_deleting(k8s_api: client.ApiClient, namespace: str, name: str) -> bool:
    pod = read(k8s_api, namespace, name)
    return pod is None or bool(pod["metadata"].get("deletionTimestamp"))


# ------------------------------------------------------------------------------------- the claim


def test_a_claim_refused_only_for_a_stale_resource_version_is_asked_again_and_wins(
    k8s_api: client.ApiClient, namespace: str
) -> None:
    """The pod changed after the gateway saw it (here an annotation of nobody's claim, as a status
    update would): the conditional patch gets 409, the pod is read again, still idle, and the claim
    is sent again at its new version."""
    pod = idle_pod(k8s_api, namespace, "pool-a")
    client.CoreV1Api(k8s_api).patch_namespaced_pod(
        pod.name, namespace, {"metadata": {"annotations": {"example.com/touched": "yes"}}}
    )
    assert claims(k8s_api, namespace)._patch_claim(pod, function(namespace)) is True
    meta = (read(k8s_api, namespace, pod.name) or {})["metadata"]
    assert meta["labels"][labels.POOL_STATE] == labels.CLAIMED
    assert meta["labels"][labels.FUNCTION] == "fn"
    assert meta["annotations"][labels.CLAIMED_BY] == "gw-a"
    assert CLAIMED_AT in meta["annotations"]


def test_a_claim_that_another_gateway_won_first_is_not_asked_again(
    k8s_api: client.ApiClient, namespace: str
) -> None:
    """Both gateways saw the pod at the same version; b's claim lands first. a's gets 409, finds the
    pod claimed, and gives up without touching b's claim."""
    pod = idle_pod(k8s_api, namespace, "pool-b")
    seen_by_a = pool_pod(read(k8s_api, namespace, pod.name) or {}, RUNTIME_PORT)
    assert seen_by_a is not None
    assert claims(k8s_api, namespace, "gw-b")._patch_claim(pod, function(namespace)) is True
    assert claims(k8s_api, namespace, "gw-a")._patch_claim(seen_by_a, function(namespace)) is False
    meta = (read(k8s_api, namespace, pod.name) or {})["metadata"]
    assert meta["annotations"][labels.CLAIMED_BY] == "gw-b"


def test_a_claim_of_a_pod_that_is_gone_is_lost(k8s_api: client.ApiClient, namespace: str) -> None:
    pod = idle_pod(k8s_api, namespace, "pool-c")
    client.CoreV1Api(k8s_api).delete_namespaced_pod(pod.name, namespace, grace_period_seconds=0)
    assert claims(k8s_api, namespace)._patch_claim(pod, function(namespace)) is False


# ------------------------------------------------------------------------------ the serving label


def claimed(k8s_api: client.ApiClient, namespace: str, name: str) -> tuple[PoolClaims, PoolPod]:
    pod = idle_pod(k8s_api, namespace, name)
    gateway = claims(k8s_api, namespace)
    assert gateway._patch_claim(pod, function(namespace)) is True
    return gateway, pod


def mark(gateway: PoolClaims, pod: PoolPod, failures: list[Exception | None]) -> FailingPatches:
    core = FailingPatches(gateway.api, failures)
    gateway.core = core
    asyncio.run(gateway._mark_serving(pod))
    return core


def test_the_serving_label_is_asked_again_when_the_api_server_fails_it(
    k8s_api: client.ApiClient, namespace: str
) -> None:
    gateway, pod = claimed(k8s_api, namespace, "pool-d")
    core = mark(gateway, pod, [unavailable()] * (MARK_ATTEMPTS - 1))
    assert core.serving_patches == MARK_ATTEMPTS
    meta = (read(k8s_api, namespace, pod.name) or {})["metadata"]
    assert meta["labels"][labels.POOL_STATE] == labels.SERVING
    assert not meta.get("deletionTimestamp")


def test_a_pod_that_can_never_be_labelled_serving_is_deleted(
    k8s_api: client.ApiClient, namespace: str
) -> None:
    """Left labelled ``claimed``, it would be swept later as a claim whose gateway died, in the middle
    of serving the function; it is deleted now instead, and the pool has already refilled."""
    gateway, pod = claimed(k8s_api, namespace, "pool-e")
    core = mark(gateway, pod, [unavailable()] * MARK_ATTEMPTS)
    assert core.serving_patches == MARK_ATTEMPTS
    assert gone_or_deleting(k8s_api, namespace, pod.name)


def test_the_serving_label_of_a_pod_already_gone_is_not_asked_again(
    k8s_api: client.ApiClient, namespace: str
) -> None:
    gateway, pod = claimed(k8s_api, namespace, "pool-f")
    client.CoreV1Api(k8s_api).delete_namespaced_pod(pod.name, namespace, grace_period_seconds=0)
    core = mark(gateway, pod, [])
    assert core.serving_patches == 1


def test_the_serving_label_is_asked_again_when_the_api_server_cannot_be_reached(
    k8s_api: client.ApiClient, namespace: str
) -> None:
    gateway, pod = claimed(k8s_api, namespace, "pool-g")
    mark(gateway, pod, [urllib3.exceptions.MaxRetryError(None, "/", "connection refused")])
    meta = (read(k8s_api, namespace, pod.name) or {})["metadata"]
    assert meta["labels"][labels.POOL_STATE] == labels.SERVING
