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

Holds take even that round trip's CPU and the race off the path (:mod:`lamina.resources.pool_pods`):
a replica that cold-starts from a pool holds ``holds`` of its idle pods ahead, in the background (a
conditional patch naming it until a time, renewed every third of :data:`HOLD_S`), never the pool's
last pod the race could take. A cold start on a held pod sends only ``POST /specialize``; the claim,
conditional on the pod being still idle and held by this replica, labels it ``serving`` beside the
first call. No race of any replica takes a pod held by another; the pods of a replica that died go
back to the race when their holds expire, those of one that stops at once (:meth:`PoolClaims.close`).
Safety does not rest on the hold: the pod's one hand-over and the conditional claim still decide, so a
race that had not yet seen a hold costs one deleted pod, never two functions in one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from lamina.environments.base import LATEST, FunctionConfig
from lamina.environments.pod_client import Broken, PodClient, Refused
from lamina.kubeapi import ThreadedWatch, list_pods_fn, watched
from lamina.resources import labels
from lamina.resources.pool_pods import (
    PoolPod,
    claim_patch,
    claimable,
    hold_patch,
    pool_pod,
    ranked,
    to_hold,
    unhold_patch,
    usable_holds,
)

log = logging.getLogger(__name__)

#: What the client raises when no answer came at all (connection refused or reset, a timeout): a
#: write that may be asked again, like the API server's own failures.
UNREACHABLE = (urllib3.exceptions.HTTPError, OSError)

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
#: How long a hold lasts; its replica renews it every third of that while the replica lives, so the
#: pods of a replica that died return to the race this long after its last renewal at most.
HOLD_S = 30.0
#: A held pod is used for a cold start only with this long left on its hold (clocks of replicas may
#: differ a little, and the hold is renewed while the hand-over runs).
HOLD_MARGIN_S = 5.0
#: A replica holds pods of a pool while it has cold-started from it within this long.
HOLD_WANTED_S = 600.0

#: ``handover(fn)``: the body of POST /specialize for ``fn``; raises EnvironmentFailed when it cannot be
#: made (a Secret that is missing: the function's own pods could not start either).
Handover = Callable[[FunctionConfig], Awaitable[dict[str, Any]]]


def _log_cold_start(
    fn: FunctionConfig, pod: PoolPod, how: str, claim: str, began: float, started: float, done: float,
    handed: bytes,
) -> None:  # fmt: skip
    """One line per cold start on a pool pod, with its phases (docs/benchmarks.md reads them)."""
    log.info(
        "function %s: %s pool pod %s (%s) in %.0f ms: hand-over built %.0f, "
        "hand-over and INIT %.0f (INIT %s), the claim %s it",
        fn.key,
        how,
        pod.name,
        pod.address,
        (done - began) * 1000,
        (started - began) * 1000,
        (done - started) * 1000,
        _init_ms(handed),
        claim,
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
        holds: int = 0,
    ) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        #: The watched namespaces (None: the whole cluster), one pod watch each.
        self.namespaces = [namespaces] if isinstance(namespaces, str) else (namespaces or None)
        self.handover = handover
        #: This replica's identity, unique among the gateways (a hold names it).
        self.gateway_id = gateway_id
        self.pods = pods or PodClient()
        #: Idle pods this replica holds ahead, of each pool it cold-starts from (0: none).
        self.holds = holds
        self._wanted: dict[tuple[str, str], float] = {}  # (namespace, pool) -> last cold start (monotonic)
        self._wake = asyncio.Event()  # a pod of a wanted pool changed: hold or renew now
        self._holder: asyncio.Task[None] | None = None
        self._pods: dict[str, PoolPod] = {}  # uid -> pod
        self._taken: set[str] = set()  # pod names this gateway is claiming right now
        #: Held pods this replica handed a function, until the watch shows them claimed or gone (a pod
        #: still labelled idle meanwhile is never given, held or renewed again).
        self._handed: set[str] = set()
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
        if self.holds > 0:
            self._holder = asyncio.create_task(self._hold_forever())

    async def close(self) -> None:
        """Stop, giving this replica's holds back to the pools at once (not when they expire)."""
        for task in (self._sweeper, self._holder):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        mine = [p for p in self._pods.values() if p.held_by == self.gateway_id and p.state == labels.IDLE]
        await asyncio.gather(*(self._write_hold(p, unhold_patch(p.resource_version)) for p in mine))
        for watch in self._watches:
            watch.stop()

    def _on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        uid = (pod.get("metadata") or {}).get("uid", "")
        found = None if kind == "DELETED" else pool_pod(pod, RUNTIME_PORT)
        if found is None or found.state != labels.IDLE:
            self._handed.discard((pod.get("metadata") or {}).get("name", ""))
        if found is None:
            self._pods.pop(uid, None)
        else:
            self._pods[uid] = found
            if self.holds and (found.namespace, found.pool) in self._wanted:
                self._wake.set()

    # ------------------------------------------------------------------------------------- claims

    def idle(self, namespace: str, pool: str) -> list[PoolPod]:
        """Claimable pods of one pool: idle, Ready, with an address, not being claimed by this gateway."""
        pods = (p for p in self._pods.values() if p.namespace == namespace and p.pool == pool)
        return claimable(pods, time.time(), self._taken | self._handed)

    def held(self, namespace: str, pool: str) -> list[PoolPod]:
        """This replica's holds of one pool that a cold start may use now."""
        pods = (p for p in self._pods.values() if p.namespace == namespace and p.pool == pool)
        return usable_holds(pods, self.gateway_id, time.time(), HOLD_MARGIN_S, self._taken | self._handed)

    def can_claim(self, fn: FunctionConfig) -> bool:
        if fn.pool is None or fn.version != LATEST:
            return False
        return bool(self.held(fn.namespace, fn.pool) or self.idle(fn.namespace, fn.pool))

    async def claim(self, fn: FunctionConfig) -> str | None:
        """A pod of ``fn``'s pool made ``fn``'s environment (its endpoint), or None when the pool had
        none left to give: then the caller starts one on the function's Deployment.

        A pod this replica holds is used first: it needs only the hand-over, and the claim is
        written beside the function's first call (:meth:`_claim_held`). Otherwise the race: the claim
        (the conditional PATCH) and the hand-over go out together, and the pod is used only if both
        won: the API server lets one claimer win the pod, and the pod's server takes one hand-over. A
        claimer that won one and lost the other deletes the pod (whoever won the other deletes it
        too), so no pod ever serves a function that does not hold its claim."""
        if fn.pool is None:
            return None
        began = time.monotonic()
        self._wanted[(fn.namespace, fn.pool)] = began
        body = asyncio.ensure_future(self._handover_body(fn))  # built once, beside the first claim
        tried: set[str] = set()
        try:
            for _ in range(CLAIM_ATTEMPTS):
                held = [p for p in self.held(fn.namespace, fn.pool) if p.name not in tried]
                if held:
                    mine = ranked(self.gateway_id, held)[0]
                    tried.add(mine.name)
                    self._taken.add(mine.name)  # also keeps its hold renewed while the hand-over runs
                    try:
                        if await self._use_held(fn, mine, body, began):
                            return mine.address
                    finally:
                        self._taken.discard(mine.name)
                    continue
                pod = self._next_idle(fn, tried)
                if pod is None:
                    return None
                tried.add(pod.name)  # lost or refused: not again in this cold start, whatever the watch says
                if await self._race(fn, pod, body, began):
                    return pod.address
            return None
        finally:
            if not body.done():
                body.cancel()
            self._wake.set()  # hold again, now that this cold start is over

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
        _log_cold_start(fn, pod, "claimed", "beside", began, started, done, handed)
        # Labelled serving (from then on every gateway sees it as the function's) beside the first
        # call rather than before it: one API round trip less on the cold start's path.
        self._spawn(self._mark_serving(pod))
        return True

    async def _use_held(
        self, fn: FunctionConfig, pod: PoolPod, body: asyncio.Future[bytes], began: float
    ) -> bool:
        """A cold start on a pod this replica holds: the hand-over alone, the claim written beside the
        first call. True when the pod took the hand-over; a pod that refused it (another gateway's
        hand-over came first: one that had not yet seen the hold) or went away is deleted."""
        sent = await body  # one that cannot be built leaves the pod untouched and held
        started = time.monotonic()
        try:
            handed = await self._hand_over(fn, pod, sent)
        except BaseException:
            await self._delete(pod)  # sent, its outcome unknown: never served
            raise
        pod.state = labels.CLAIMED  # never this one again
        if handed is None:
            await self._delete(pod)
            return False
        self._handed.add(pod.name)
        done = time.monotonic()
        _log_cold_start(fn, pod, "held", "after", began, started, done, handed)
        self._spawn(self._claim_held(pod, fn))
        return True

    async def _claim_held(self, pod: PoolPod, fn: FunctionConfig) -> None:
        """Label a held pod that took ``fn``'s hand-over claimed and ``serving`` in one conditional
        write, beside the first call. Lost (its hold ended and another gateway claimed it meanwhile),
        or never written after a few tries, the pod is deleted: it served ``fn`` alone either way."""
        won = await self._ask_again(pod, "claim it", lambda: self._patch_held_claim(pod, fn))
        if won:
            return
        if won is False:
            log.warning("function %s: held pool pod %s was claimed by someone else", fn.key, pod.name)
        await self._delete(pod)

    async def _ask_again(self, pod: PoolPod, what: str, write: Callable[[], bool]) -> bool | None:
        """Run the blocking ``write`` (in a thread) until it answers, asking again a few times when the
        API server fails or cannot be reached: its answer, or None when none came."""
        for attempt in range(MARK_ATTEMPTS):
            try:
                return await asyncio.to_thread(write)
            except ApiException as exc:
                why = exc.reason
            except UNREACHABLE as exc:
                why = str(exc)
            log.warning("pool pod %s/%s: cannot %s: %s", pod.namespace, pod.name, what, why)
            await asyncio.sleep(0.2 * (attempt + 1))
        return None

    def _patch_held_claim(self, pod: PoolPod, fn: FunctionConfig) -> bool:
        """The claim of a held pod: True once written; False when it is gone, no longer idle or no
        longer this replica's hold (someone else's claim came first)."""
        version: str | None = pod.resource_version
        for _ in range(MARK_ATTEMPTS):
            if version is None:
                return False
            patch = claim_patch(version, self.gateway_id, fn.name, fn.uid, time.time(), labels.SERVING)
            try:
                self.core.patch_namespaced_pod(pod.name, pod.namespace, patch, field_manager=FIELD_MANAGER)
                return True
            except ApiException as exc:
                if exc.status == 404:
                    return False
                if exc.status != 409:
                    raise
            version = self._still_held(pod)  # changed since: a status update, or a claim
        raise ApiException(status=409, reason="the pod kept changing")  # asked again by _claim_held

    def _read(self, pod: PoolPod) -> tuple[PoolPod | None, dict[str, Any]]:
        """The pod as the API server has it now (None when it is gone or no pool pod), and its dict."""
        try:
            raw = self.api.sanitize_for_serialization(self.core.read_namespaced_pod(pod.name, pod.namespace))
        except ApiException:
            return None, {}
        return pool_pod(raw, RUNTIME_PORT), raw

    def _still_held(self, pod: PoolPod) -> str | None:
        """The pod's current resourceVersion if it is still idle and this replica's hold; else None.
        (Nobody but this replica writes a pod it holds, so one still named so was not taken.)"""
        fresh, _ = self._read(pod)
        if fresh is None or fresh.state != labels.IDLE or fresh.held_by != self.gateway_id:
            return None
        return fresh.resource_version

    def _next_idle(self, fn: FunctionConfig, tried: set[str]) -> PoolPod | None:
        """The idle pod this gateway tries next, first in its own order (:func:`ranked`)."""
        assert fn.pool is not None
        candidates = [p for p in self.idle(fn.namespace, fn.pool) if p.name not in tried]
        return ranked(self.gateway_id, candidates)[0] if candidates else None

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
        fresh, raw = self._read(pod)
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

        def label() -> bool:
            try:
                self.core.patch_namespaced_pod(pod.name, pod.namespace, patch, field_manager=FIELD_MANAGER)
            except ApiException as exc:
                if exc.status == 404:
                    return False
                raise
            return True

        if await self._ask_again(pod, "mark it serving", label) is None:
            await self._delete(pod)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` beside the calls, keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------------------------- holds

    async def _hold_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), HOLD_S / 6)
            self._wake.clear()
            try:
                await self.hold(time.time())
            except Exception as exc:  # the API server unreachable: holds expire, the race goes on
                log.warning("holding warm pool pods failed: %s", exc)

    async def hold(self, now: float) -> None:
        """Renew this replica's holds a third through, give back those of pools it no longer
        cold-starts from, and hold more where it has fewer than ``holds`` (never a pool's last pod the
        race could take). Each is a conditional write: a pod changed meanwhile is left alone."""
        since = time.monotonic() - HOLD_WANTED_S
        self._wanted = {key: at for key, at in self._wanted.items() if at > since}
        writes = []
        for pod in list(self._pods.values()):
            if pod.held_by != self.gateway_id or pod.state != labels.IDLE or pod.held_until is None:
                continue
            if pod.name in self._handed:
                continue
            if (pod.namespace, pod.pool) not in self._wanted and pod.name not in self._taken:
                writes.append(self._write_hold(pod, unhold_patch(pod.resource_version)))
            elif pod.held_until - now < HOLD_S * 2 / 3:
                writes.append(
                    self._write_hold(pod, hold_patch(pod.resource_version, self.gateway_id, now + HOLD_S))
                )
        taking = set()  # kept from this replica's own race while their holds are written
        for namespace, pool in self._wanted:
            pods = [p for p in self._pods.values() if p.namespace == namespace and p.pool == pool]
            busy = self._taken | self._handed
            for pod in to_hold(pods, self.gateway_id, now, self.holds, HOLD_MARGIN_S, busy):
                taking.add(pod.name)
                writes.append(
                    self._write_hold(pod, hold_patch(pod.resource_version, self.gateway_id, now + HOLD_S))
                )
        self._taken |= taking
        try:
            await asyncio.gather(*writes)
        finally:
            self._taken -= taking

    async def _write_hold(self, pod: PoolPod, patch: dict[str, Any]) -> None:
        """Send a hold's patch; the pod as written is what this replica sees of it from then on (the
        watch brings the same a moment later). A 409 (changed since) is left to the next round."""
        try:
            written = await asyncio.to_thread(
                self.core.patch_namespaced_pod, pod.name, pod.namespace, patch, field_manager=FIELD_MANAGER
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                log.warning("pool pod %s/%s: cannot hold it: %s", pod.namespace, pod.name, exc.reason)
            return
        except UNREACHABLE as exc:  # a hold not renewed expires; one not given back too
            log.warning("pool pod %s/%s: cannot hold it: %s", pod.namespace, pod.name, exc)
            return
        raw = self.api.sanitize_for_serialization(written)
        found = pool_pod(raw, RUNTIME_PORT)
        uid = (raw.get("metadata") or {}).get("uid", "")
        if found is not None and uid in self._pods:
            self._pods[uid] = found

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
        except UNREACHABLE as exc:  # a claimed one is swept later, a held one's hold expires
            log.warning("pool pod %s/%s: cannot delete it: %s", pod.namespace, pod.name, exc)

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
