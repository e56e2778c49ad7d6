"""Cold starts from warm generic pools: claim an idle pool pod, hand it the function, run its INIT.

The claim is a merge patch of the pod's labels carrying the ``resourceVersion`` this gateway last saw:
the API server applies it only if nobody changed the pod since, so two gateways (or two claims of one
gateway) can never both win a pod; the loser gets 409 and tries the next one. The claim also makes the
Function the pod's owner (deleting the Function deletes its claimed pods) and takes the pod out of its
pool's selector, so the pool's ReplicaSet lets it go and starts a replacement: the pool refills.

Then ``POST /specialize`` gives the pod the function (see :mod:`lamina_runtime.specialize`); only a pod
whose hand-over this gateway made itself is ever used, so a pod someone else specialized first (its
/specialize answers 409) is deleted, never served. A pod that dies or refuses the hand-over is deleted
and the next one is tried; with no pod left the caller falls back to the function's Deployment.
Once specialized the pod is labelled ``serving`` (beside its first call): from then on every gateway
sees it as one of the function's environments. When it is reaped it is deleted, never handed to
another function.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from lamina.environments.base import LATEST, FunctionConfig
from lamina.environments.pod_client import Broken, PodClient, Refused
from lamina.kubeapi import ThreadedWatch, list_pods_fn, watched
from lamina.resources import labels

log = logging.getLogger(__name__)

RUNTIME_PORT = 8080
FIELD_MANAGER = "lamina-gateway"
#: A hand-over fetches code and layers and runs INIT (Lambda allows INIT 10 s): its bound.
SPECIALIZE_TIMEOUT_S = 90.0
#: Pods tried for one cold start before falling back to the Deployment.
CLAIM_ATTEMPTS = 3
#: A pod claimed but never specialized (its gateway died mid-claim) is deleted after this long.
STALE_CLAIM_S = 300.0
CLAIMED_AT = "lamina.dev/claimed-at"
#: Attempts to label a handed-over pod ``serving`` before it is deleted.
MARK_ATTEMPTS = 3

#: ``handover(fn)``: the body of POST /specialize for ``fn``; raises EnvironmentFailed when it cannot be
#: made (a Secret that is missing: the function's own pods could not start either).
Handover = Callable[[FunctionConfig], Awaitable[dict[str, Any]]]


@dataclass
class PoolPod:
    name: str
    namespace: str
    pool: str
    state: str
    address: str | None
    ready: bool
    resource_version: str
    claimed_at: float | None = None


def _pool_pod(pod: dict[str, Any]) -> PoolPod | None:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    pod_labels = meta.get("labels") or {}
    if meta.get("deletionTimestamp") or not pod_labels.get(labels.POOL):
        return None
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    at = (meta.get("annotations") or {}).get(CLAIMED_AT)
    claimed_at = None
    if at:
        try:
            claimed_at = datetime.fromisoformat(at).timestamp()
        except ValueError:
            claimed_at = None
    return PoolPod(
        name=meta.get("name", ""),
        namespace=meta.get("namespace", ""),
        pool=pod_labels[labels.POOL],
        state=pod_labels.get(labels.POOL_STATE, ""),
        address=f"{status['podIP']}:{RUNTIME_PORT}" if status.get("podIP") else None,
        ready=ready,
        resource_version=meta.get("resourceVersion", ""),
        claimed_at=claimed_at,
    )


def _init_ms(body: bytes) -> str:
    """INIT's duration as the pod's hand-over answer gives it, for the log."""
    try:
        return f"{json.loads(body)['initDurationMs']:.0f}"
    except (ValueError, KeyError, TypeError):
        return "?"


class PoolClaims:
    """Warm pool pods as the API server has them, and the claims this gateway makes on them."""

    def __init__(
        self,
        api: client.ApiClient,
        namespaces: str | list[str] | None,
        handover: Handover,
        gateway_id: str,
        pods: PodClient | None = None,
    ) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        #: The watched namespaces (None: the whole cluster), one pod watch each.
        self.namespaces = [namespaces] if isinstance(namespaces, str) else (namespaces or None)
        self.handover = handover
        self.gateway_id = gateway_id
        self.pods = pods or PodClient()
        self._pods: dict[str, PoolPod] = {}  # uid -> pod
        self._taken: set[str] = set()  # pod names this gateway is claiming right now
        self._watches: list[ThreadedWatch] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        selector = f"{labels.NAME}={labels.POOL_APP}"
        self._watches = [
            ThreadedWatch(list_pods_fn(self.api, ns, selector), self._on_pod, loop)
            for ns in watched(self.namespaces)
        ]
        for watch in self._watches:
            watch.start()
        for watch in self._watches:
            await asyncio.to_thread(watch.synced.wait, 30)
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def close(self) -> None:
        for watch in self._watches:
            watch.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        uid = (pod.get("metadata") or {}).get("uid", "")
        found = None if kind == "DELETED" else _pool_pod(pod)
        if found is None:
            self._pods.pop(uid, None)
        else:
            self._pods[uid] = found

    # ------------------------------------------------------------------------------------- claims

    def idle(self, namespace: str, pool: str) -> list[PoolPod]:
        """Claimable pods: idle, Ready, with an address, not being claimed by this gateway."""
        return sorted(
            (
                p
                for p in self._pods.values()
                if p.namespace == namespace
                and p.pool == pool
                and p.state == labels.IDLE
                and p.ready
                and p.address
                and p.name not in self._taken
            ),
            key=lambda p: p.name,
        )

    def can_claim(self, fn: FunctionConfig) -> bool:
        return fn.pool is not None and fn.version == LATEST and bool(self.idle(fn.namespace, fn.pool))

    async def claim(self, fn: FunctionConfig) -> str | None:
        """A pod of ``fn``'s pool made ``fn``'s environment (its endpoint), or None when the pool had
        none left to give: then the caller starts one on the function's Deployment."""
        if fn.pool is None:
            return None
        began = time.monotonic()
        body = json.dumps(await self.handover(fn)).encode()
        built = time.monotonic()
        for _ in range(CLAIM_ATTEMPTS):
            claiming = time.monotonic()
            pod = await self._claim_one(fn)
            if pod is None:
                return None
            assert pod.address is not None
            started = time.monotonic()
            try:
                reply = await self.pods.request(
                    pod.address, "POST", "/specialize", {"Content-Type": "application/json"}, body,
                    SPECIALIZE_TIMEOUT_S,
                )  # fmt: skip
            except (Refused, Broken) as exc:
                log.warning("function %s: claimed pod %s failed its hand-over: %s", fn.key, pod.name, exc)
                await self._delete(pod)
                continue
            if reply.status != 200:
                why = reply.body[:300].decode(errors="replace")
                log.warning(
                    "function %s: pod %s refused the hand-over (%d): %s", fn.key, pod.name, reply.status, why
                )
                await self._delete(pod)
                continue
            done = time.monotonic()
            log.info(
                "function %s: claimed pool pod %s (%s) in %.0f ms: hand-over built %.0f, claim %.0f, "
                "hand-over and INIT %.0f (INIT %s)",
                fn.key,
                pod.name,
                pod.address,
                (done - began) * 1000,
                (built - began) * 1000,
                (started - claiming) * 1000,
                (done - started) * 1000,
                _init_ms(reply.body),
            )
            # Labelled serving (from then on every gateway sees it as the function's) beside the first
            # call rather than before it: one API round trip less on the cold start's path.
            self._spawn(self._mark_serving(pod))
            return pod.address
        return None

    async def _claim_one(self, fn: FunctionConfig) -> PoolPod | None:
        assert fn.pool is not None
        while True:
            candidates = self.idle(fn.namespace, fn.pool)
            if not candidates:
                return None
            pod = candidates[0]
            self._taken.add(pod.name)
            try:
                won = await asyncio.to_thread(self._patch_claim, pod, fn)
            finally:
                self._taken.discard(pod.name)
            if won:
                pod.state = labels.CLAIMED
                return pod
            # Lost the race (another gateway claimed it, or it changed): never this one again.
            log.info("function %s: pool pod %s was claimed by someone else first", fn.key, pod.name)
            pod.state = labels.CLAIMED

    def _patch_claim(self, pod: PoolPod, fn: FunctionConfig) -> bool:
        pod_labels = {labels.POOL_STATE: labels.CLAIMED, labels.FUNCTION: fn.name}
        meta: dict[str, Any] = {
            "resourceVersion": pod.resource_version,  # the precondition: nobody changed it since
            "labels": pod_labels,
            "annotations": {
                labels.CLAIMED_BY: self.gateway_id,
                CLAIMED_AT: datetime.now(UTC).isoformat(timespec="seconds"),
            },
        }
        if fn.uid:
            meta["ownerReferences"] = [
                {"apiVersion": "lamina.dev/v1alpha1", "kind": "Function", "name": fn.name, "uid": fn.uid}
            ]
        try:
            self.core.patch_namespaced_pod(
                pod.name, pod.namespace, {"metadata": meta}, field_manager=FIELD_MANAGER
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True

    async def _mark_serving(self, pod: PoolPod) -> None:
        """Label the pod ``serving``, asking again a few times if the API server fails; a pod that
        cannot be labelled is deleted (a claimed pod never labelled would be swept as a claim whose
        gateway died), and one already gone (404) is left to the watch, which stops routing to it."""
        patch = {"metadata": {"labels": {labels.POOL_STATE: labels.SERVING}}}
        for attempt in range(MARK_ATTEMPTS):
            try:
                await asyncio.to_thread(
                    self.core.patch_namespaced_pod,
                    pod.name,
                    pod.namespace,
                    patch,
                    field_manager=FIELD_MANAGER,
                )
                return
            except ApiException as exc:
                if exc.status == 404:
                    return
                log.warning("pool pod %s/%s: cannot mark it serving: %s", pod.namespace, pod.name, exc.reason)
            await asyncio.sleep(0.2 * (attempt + 1))
        await self._delete(pod)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` beside the calls, keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------------------------- release

    def pod_at(self, namespace: str, address: str) -> PoolPod | None:
        return next(
            (p for p in self._pods.values() if p.namespace == namespace and p.address == address), None
        )

    async def release(self, fn: FunctionConfig, endpoint: str) -> None:
        """Delete the pool pod at ``endpoint`` (reaped, or of an old revision): never reused."""
        pod = self.pod_at(fn.namespace, endpoint)
        if pod is not None:
            await self._delete(pod)

    async def _delete(self, pod: PoolPod) -> None:
        try:
            await asyncio.to_thread(self.core.delete_namespaced_pod, pod.name, pod.namespace)
        except ApiException as exc:
            if exc.status != 404:
                log.warning("pool pod %s/%s: cannot delete it: %s", pod.namespace, pod.name, exc.reason)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(STALE_CLAIM_S / 5)
            await self.sweep(time.time())

    async def sweep(self, now: float) -> int:
        """Delete pods claimed but never specialized for STALE_CLAIM_S (their gateway died mid-claim)."""
        stale = [
            p
            for p in list(self._pods.values())
            if p.state == labels.CLAIMED and p.claimed_at is not None and now - p.claimed_at > STALE_CLAIM_S
        ]
        for pod in stale:
            log.warning("pool pod %s/%s: claimed but never handed over; deleting it", pod.namespace, pod.name)
            await self._delete(pod)
        return len(stale)
