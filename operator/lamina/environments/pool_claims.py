"""Cold starts from warm generic pools: claim an idle pool pod, hand it the function, run its INIT.

The claim is a merge patch of the pod's labels carrying the ``resourceVersion`` this gateway last saw:
the API server applies it only if nobody changed the pod since, so two gateways (or two claims of one
gateway) can never both win a pod; the loser gets 409 and tries the next one. The claim also makes the
Function the pod's owner (deleting the Function deletes its claimed pods) and takes the pod out of its
pool's selector, so the pool's ReplicaSet lets it go and starts a replacement: the pool refills.

``POST /specialize`` gives the pod the function (see :mod:`lamina_runtime.specialize`); the pod takes
one hand-over only (a second answers 409). The claim and the hand-over go out at the same time, and a
pod is used only by the gateway that won both; one that won a single half deletes the pod (the holder
of the other half does the same), so the claim's round trip is not on the cold start's path. A pod
that dies or refuses the hand-over is deleted and the next one is tried; with no pod left the caller
falls back to the function's Deployment. Once specialized the pod is labelled ``serving`` (beside its
first call): from then on every gateway sees it as one of the function's environments. When it is
reaped it is deleted, never handed to another function.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from lamina.environments.base import LATEST, FunctionConfig
from lamina.environments.pod_client import Broken, PodClient, Refused
from lamina.kubeapi import ThreadedWatch, list_pods_fn, watched
from lamina.resources import labels
from lamina.resources.pool_pods import PoolPod, claim_patch, claimable, pool_pod, ranked

log = logging.getLogger(__name__)

RUNTIME_PORT = 8080
FIELD_MANAGER = "lamina-gateway"
#: A hand-over fetches code and layers and runs INIT (Lambda allows INIT 10 s): its bound.
SPECIALIZE_TIMEOUT_S = 90.0
#: Pods tried for one cold start before falling back to the Deployment.
CLAIM_ATTEMPTS = 3
#: A pod claimed but never specialized (its gateway died mid-claim) is deleted after this long.
STALE_CLAIM_S = 300.0
#: Attempts to label a handed-over pod ``serving`` before it is deleted.
MARK_ATTEMPTS = 3

#: ``handover(fn)``: the body of POST /specialize for ``fn``; raises EnvironmentFailed when it cannot be
#: made (a Secret that is missing: the function's own pods could not start either).
Handover = Callable[[FunctionConfig], Awaitable[dict[str, Any]]]


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
        found = None if kind == "DELETED" else pool_pod(pod, RUNTIME_PORT)
        if found is None:
            self._pods.pop(uid, None)
        else:
            self._pods[uid] = found

    # ------------------------------------------------------------------------------------- claims

    def idle(self, namespace: str, pool: str) -> list[PoolPod]:
        """Claimable pods of one pool: idle, Ready, with an address, not being claimed by this gateway."""
        pods = (p for p in self._pods.values() if p.namespace == namespace and p.pool == pool)
        return claimable(pods, time.time(), self._taken)

    def can_claim(self, fn: FunctionConfig) -> bool:
        return fn.pool is not None and fn.version == LATEST and bool(self.idle(fn.namespace, fn.pool))

    async def claim(self, fn: FunctionConfig) -> str | None:
        """A pod of ``fn``'s pool made ``fn``'s environment (its endpoint), or None when the pool had
        none left to give: then the caller starts one on the function's Deployment.

        The claim (the conditional PATCH) and the hand-over go out together, and the pod is used only
        if both won: the API server lets one claimer win the pod, and the pod's server takes one
        hand-over. A claimer that won one and lost the other deletes the pod (whoever won the other
        deletes it too), so no pod ever serves a function that does not hold its claim, and the
        claim's round trip is off the cold start's path."""
        if fn.pool is None:
            return None
        began = time.monotonic()
        body = asyncio.ensure_future(self._handover_body(fn))  # built once, beside the first claim
        try:
            for _ in range(CLAIM_ATTEMPTS):
                pod = self._next_idle(fn)
                if pod is None:
                    return None
                if await self._race(fn, pod, body, began):
                    return pod.address
            return None
        finally:
            if not body.done():
                body.cancel()

    async def _handover_body(self, fn: FunctionConfig) -> bytes:
        return json.dumps(await self.handover(fn)).encode()

    async def _race(
        self, fn: FunctionConfig, pod: PoolPod, body: asyncio.Future[bytes], began: float
    ) -> bool:
        """One attempt on ``pod``: the conditional PATCH and the hand-over together. True when this
        gateway won both and the pod is ``fn``'s; a pod won by half is deleted."""
        self._taken.add(pod.name)
        claimed = asyncio.ensure_future(asyncio.to_thread(self._patch_claim, pod, fn))
        handed: bytes | None = None
        try:
            sent = await body
            started = time.monotonic()
            handed = await self._hand_over(fn, pod, sent)
            won = await claimed
        except BaseException:
            # The hand-over never went out, or the claim's outcome is unknown: a pod this gateway won
            # or handed a function for nothing is deleted (never served).
            await self._abandon(pod, claimed, handed)
            raise
        finally:
            self._taken.discard(pod.name)
        done = time.monotonic()
        pod.state = labels.CLAIMED  # won or lost, never this one again
        if handed is None or not won:
            if handed is not None:  # the pod is ours, its claim someone else's: both delete it
                log.info("function %s: pool pod %s was claimed by someone else first", fn.key, pod.name)
            if handed is not None or won:  # (a refused hand-over is logged by _hand_over)
                await self._delete(pod)
            return False
        log.info(
            "function %s: claimed pool pod %s (%s) in %.0f ms: hand-over built %.0f, "
            "hand-over and INIT %.0f (INIT %s), the claim beside it",
            fn.key,
            pod.name,
            pod.address,
            (done - began) * 1000,
            (started - began) * 1000,
            (done - started) * 1000,
            _init_ms(handed),
        )
        # Labelled serving (from then on every gateway sees it as the function's) beside the first
        # call rather than before it: one API round trip less on the cold start's path.
        self._spawn(self._mark_serving(pod))
        return True

    def _next_idle(self, fn: FunctionConfig) -> PoolPod | None:
        """The idle pod this gateway tries next, first in its own order (:func:`ranked`)."""
        assert fn.pool is not None
        candidates = ranked(self.gateway_id, self.idle(fn.namespace, fn.pool))
        return candidates[0] if candidates else None

    async def _hand_over(self, fn: FunctionConfig, pod: PoolPod, body: bytes) -> bytes | None:
        """``POST /specialize``: the pod's answer (INIT's duration) when it took this hand-over;
        None when it refused it (another hand-over came first, or this one failed) or went away."""
        assert pod.address is not None
        try:
            reply = await self.pods.request(
                pod.address, "POST", "/specialize", {"Content-Type": "application/json"}, body,
                SPECIALIZE_TIMEOUT_S,
            )  # fmt: skip
        except (Refused, Broken) as exc:
            log.warning("function %s: claimed pod %s failed its hand-over: %s", fn.key, pod.name, exc)
            return None
        if reply.status != 200:
            why = reply.body[:300].decode(errors="replace")
            log.warning(
                "function %s: pod %s refused the hand-over (%d): %s", fn.key, pod.name, reply.status, why
            )
            return None
        return reply.body

    async def _abandon(self, pod: PoolPod, claimed: asyncio.Future[bool], handed: bytes | None) -> None:
        """An attempt cut short: a pod handed a function, or won by the claim, is deleted (it left its
        pool, which has started its replacement); one neither won nor handed is left to others."""
        with contextlib.suppress(Exception):
            if handed is not None or await claimed:
                await self._delete(pod)

    def _patch_claim(self, pod: PoolPod, fn: FunctionConfig) -> bool:
        """The conditional PATCH: True if this gateway won the pod, False if someone changed or took
        it first (409) or it is gone (404)."""
        version = pod.resource_version
        for _ in range(2):
            patch = claim_patch(version, self.gateway_id, fn.name, fn.uid, time.time())
            try:
                self.core.patch_namespaced_pod(pod.name, pod.namespace, patch, field_manager=FIELD_MANAGER)
                return True
            except ApiException as exc:
                if exc.status == 404:
                    return False
                if exc.status != 409:
                    raise
            # Changed since this gateway saw it: still idle and unclaimed (a status update), it is
            # asked for again at its new version; else someone else took it.
            fresh = self._still_idle(pod)
            if fresh is None:
                return False
            version = fresh
        return False

    def _still_idle(self, pod: PoolPod) -> str | None:
        """The pod's current resourceVersion if the race may still take it (idle, nobody's claim, no
        replica's hold); else None."""
        try:
            raw = self.api.sanitize_for_serialization(self.core.read_namespaced_pod(pod.name, pod.namespace))
        except ApiException:
            return None
        fresh = pool_pod(raw, RUNTIME_PORT)
        if fresh is None or fresh.state != labels.IDLE or fresh.held(time.time()):
            return None
        if labels.CLAIMED_BY in ((raw.get("metadata") or {}).get("annotations") or {}):
            return None
        return fresh.resource_version

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
