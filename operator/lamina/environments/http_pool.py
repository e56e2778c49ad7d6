"""Environments reached over HTTP (pods running `python -m lamina_runtime serve`).

The cluster's `EnvironmentPool`: one request per endpoint at a time, a cold start when every ready
endpoint is busy (the source is asked for one more replica and the request is held until it is ready),
and idle endpoints above provisioned concurrency handed back after the keep-alive.

A held request does not wait for the kubelet's readiness probe: pods that have an address but are not
Ready yet are probed here while a request waits, and the first to answer takes it. The probe is
`GET /healthz?wait=S`, which the runtime holds until its INIT is over, so the answer comes the moment
the environment can serve; until the runtime listens, the connection is retried every few ms. A pod
whose INIT failed answers 503 with `Lamina-Init-Failed`: an on-demand cold start takes it anyway, and
the caller gets the INIT error, as on Lambda. A held request also does not
wait for what cannot come: when the source reports why pods cannot start (an image that cannot be
pulled, a failed init container, a crash) and nothing else can serve, it fails at once with that cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from lamina.environments.base import EnvironmentFailed, FunctionConfig, NoEnvironment, hand_over
from lamina.environments.endpoints import Claims, EndpointSource, PodSet, ScaleTargetMissing
from lamina.environments.pod_client import Broken, PodClient, Refused
from lamina.resources.pod_state import PodProblem
from lamina_runtime.protocol import (
    FUNCTION_HEADER,
    HEALTH_WAIT_PARAM,
    INIT_FAILED_HEADER,
    INVOKE_SECRET_HEADER,
    MISDIRECTED,
    InvocationRequest,
    InvocationResult,
    ReplyMismatch,
    decode_result,
    encode_request,
)

__all__ = ["EnvironmentFailed", "HttpEnvironmentPool", "NoEnvironment"]

log = logging.getLogger(__name__)

#: ``secret_for(fn)``: the invoke secret the function's pods require, or None when they require none.
SecretFor = Callable[[FunctionConfig], str | None]
#: ``owns(fn)``: whether this gateway replica serves ``fn`` now (with several replicas, one at a time
#: does: lamina.cluster.leases). Only that replica scales its Deployment, reaps and deletes its pods.
Owns = Callable[[FunctionConfig], bool]

#: How long an endpoint that refused a connection sits out before it is offered again.
REFUSED_PAUSE_S = 0.2
#: How long an endpoint that dropped an invocation sits out (it is usually gone for good: its pod's
#: deletion reaches the watch meanwhile).
LOST_PAUSE_S = 5.0
#: How long an endpoint that answered 429 (busy: another replica's call still runs there, as after
#: this one took over the function from a lost replica) sits out; the call goes to another endpoint.
BUSY_PAUSE_S = 0.5
#: Probing a starting pod while a request waits: first gap, growth per miss, longest gap (seconds)
#: between connection attempts until the runtime listens (a refused connection costs microseconds);
#: then one probe is held by the runtime for up to PROBE_WAIT_S while INIT runs.
PROBE_FIRST_S = 0.005
PROBE_GROWTH = 1.3
PROBE_MAX_S = 0.02
PROBE_WAIT_S = 5.0
PROBE_TIMEOUT_S = 1.0
#: A scale the source could not take (the Deployment not made yet, the API away) is asked again,
#: backing off from the first gap to the last, until it is taken or the function is gone.
RESCALE_FIRST_S = 0.25
RESCALE_MAX_S = 5.0
HEALTH_PATH = f"/healthz?{HEALTH_WAIT_PARAM}={PROBE_WAIT_S:g}"


def environment_lost(request: InvocationRequest, why: str) -> InvocationResult:
    """The result of an invocation whose environment vanished after the request reached it (the pod's
    kernel OOM kill, a node going away): the handler may have run, so, as on Lambda, it is a function
    error (``Runtime.ExitError``), which an async event counts against ``maximumRetryAttempts`` instead
    of retrying it as a platform error until its maximum age."""
    message = f"RequestId: {request.request_id} Error: Runtime exited without providing a reason"
    error = {"errorType": "Runtime.ExitError", "errorMessage": message, "requestId": request.request_id}
    return InvocationResult(
        request_id=request.request_id,
        payload=json.dumps(error).encode(),
        function_error="Unhandled",
        error_type="Runtime.ExitError",
        log=f"{message}\nRuntime.ExitError ({why})\n",
    )


class EnvironmentRefused(Exception):
    """An environment answered /invoke with an error status: the function did not run (a wrong
    invoke secret, a busy or broken environment)."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"the execution environment answered HTTP {status}: {body[:200]!r}")
        self.status = status


@dataclass(eq=False)
class _Pool:
    config: FunctionConfig
    ready: set[str] = field(default_factory=set)  # kube_ready | probed: may take requests
    kube_ready: set[str] = field(default_factory=set)  # Ready by the orchestrator's readiness
    starting: set[str] = field(default_factory=set)  # have an address, not Ready yet
    probed: set[str] = field(default_factory=set)  # starting, but answered our own probe
    probes: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    problem: PodProblem | None = None  # why pods cannot start, as the source last said
    pending: int = 0  # pods coming that have no address yet and no problem
    idle: list[str] = field(default_factory=list)
    busy: set[str] = field(default_factory=set)
    last_used: dict[str, float] = field(default_factory=dict)
    waiters: deque[asyncio.Future[str]] = field(default_factory=deque)
    requested: int = 0  # replicas asked of the source
    resting: set[str] = field(default_factory=set)  # refused a connection; offered again shortly
    retired: set[str] = field(default_factory=set)  # given back to the source, not gone yet
    scaling: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: The version stopped being routed to (an alias moved away): the next reap retires its idle
    #: endpoints without waiting for the keep-alive.
    flush_idle: bool = False
    #: Claimed pool pods serving this function (given back by deleting them, never by scaling), and
    #: those of them the source has reported at least once (a claimed pod it stops reporting is gone).
    claimed: set[str] = field(default_factory=set)
    claim_seen: set[str] = field(default_factory=set)
    claiming: int = 0  # claims under way
    stale: set[str] = field(default_factory=set)  # claimed pods of an older revision: deleted when free
    #: Whether ``requested`` counts what the Deployment runs: False while another replica serves the
    #: function (it scales the Deployment), set from the pods seen when this one takes it over.
    adopted: bool = False
    rescaling: bool = False  # a scale the source could not take is being asked again

    def waiting(self) -> int:
        return sum(1 for w in self.waiters if not w.done())

    def failure(self) -> EnvironmentFailed | None:
        """Why a request that needs a new environment cannot get one now: pods cannot start, and
        nothing is Ready, starting or pending without a problem. One pod's problem (no room on the
        node for it) while others come up is no reason to fail the requests: they wait for those."""
        if self.problem is None or self.ready or self.starting or self.pending:
            return None
        return EnvironmentFailed(self.config.name, self.problem.reason, self.problem.message)

    def fail_waiters(self, error: Exception) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    def rest(self, endpoint: str, seconds: float) -> None:
        """Keep a refusing endpoint out of rotation for ``seconds``. It is neither busy nor idle, so
        it does not count as demand: one slow-starting pod does not make the pool ask for more."""
        self.busy.discard(endpoint)
        self.resting.add(endpoint)
        asyncio.get_running_loop().call_later(seconds, self._wake, endpoint)

    def _wake(self, endpoint: str) -> None:
        self.resting.discard(endpoint)
        if endpoint in self.ready and endpoint not in self.busy and endpoint not in self.idle:
            self.free(endpoint)

    def free(self, endpoint: str) -> None:
        self.busy.discard(endpoint)
        self.last_used[endpoint] = time.monotonic()
        if endpoint in self.ready:
            hand_over(endpoint, self.waiters, self.busy, self.idle)


class HttpEnvironmentPool:
    """An `EnvironmentPool` whose environments are HTTP endpoints published by an `EndpointSource`."""

    def __init__(
        self,
        source: EndpointSource,
        functions: list[FunctionConfig],
        *,
        cold_start_timeout: float = 120.0,
        max_environments: int = 1000,
        reap_interval: float = 5.0,
        secret_for: SecretFor | None = None,
        claims: Claims | None = None,
        owns: Owns | None = None,
    ) -> None:
        self.source = source
        self.owns = owns
        self.secret_for = secret_for
        self.claims = claims
        self.cold_start_timeout = cold_start_timeout
        self.max_environments = max_environments
        self.reap_interval = reap_interval
        self._pools = {f.pool_key: _Pool(f) for f in functions}
        self._client = PodClient()
        self._reaper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        source.subscribe(self._on_endpoints)

    async def start(self) -> None:
        await self.source.start()
        for pool in self._pools.values():
            if not self._serves(pool):
                continue
            pool.requested = max(len(pool.ready), pool.config.provisioned_concurrency)
            if pool.requested != len(pool.ready):
                await self._scale(pool)
        self._reaper = asyncio.create_task(self._reap_forever())

    async def update(self, functions: list[FunctionConfig]) -> None:
        for fn in functions:
            pool = self._pools.setdefault(fn.pool_key, _Pool(fn))
            pool.flush_idle = pool.flush_idle or (pool.config.routed and not fn.routed)
            if pool.config.revision != fn.revision and pool.claimed and self._serves(pool):
                # Claimed pool pods run the old code and configuration: deleted once free (the
                # function's own pods roll through their Deployment).
                pool.stale |= pool.claimed
                for endpoint in [e for e in pool.idle if e in pool.stale]:
                    self._drop_claimed(pool, endpoint)
            pool.config = fn
        for key in set(self._pools) - {f.pool_key for f in functions}:
            del self._pools[key]

    def abandon(self) -> None:
        """The gateway is stopping: calls cancelled from now on stop waiting for their environment's
        reply (:meth:`PodClient.abandon`)."""
        self._client.abandon()

    async def close(self) -> None:
        if self._reaper:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        probes = [t for pool in self._pools.values() for t in pool.probes.values()] + list(self._tasks)
        for task in probes:
            task.cancel()
        await asyncio.gather(*probes, return_exceptions=True)
        await self.source.close()
        self._client.close()

    def _serves(self, pool: _Pool) -> bool:
        """Whether this replica serves the function (always, with one replica). One that another
        replica serves is left alone: its idle pods are not reaped nor its Deployment scaled here,
        and when this replica takes it over, what its Deployment runs is counted afresh."""
        if self.owns is None:
            return True
        if not self.owns(pool.config):
            pool.adopted = False
            return False
        if not pool.adopted:
            own = (pool.kube_ready | pool.starting) - pool.claimed
            pool.requested = max(len(own) + pool.pending, pool.config.provisioned_concurrency)
            pool.adopted = True
        return True

    def in_flight(self, fn: FunctionConfig) -> int:
        pool = self._pools.get(fn.pool_key)
        return len(pool.busy) if pool else 0

    def environments(self, fn: FunctionConfig) -> int:
        pool = self._pools.get(fn.pool_key)
        return len(pool.ready) if pool else 0

    def _on_endpoints(self, key: str, pods: PodSet) -> None:
        pool = self._pools.get(key)
        if pool is None:
            return
        for gone in (pool.kube_ready | pool.starting) - set(pods.ready) - set(pods.starting):
            self._client.forget(gone)
        pool.kube_ready = set(pods.ready)
        pool.starting = set(pods.starting)
        pool.probed &= pool.starting  # Ready by now (in kube_ready), or gone
        # Claimed pool pods: ours are ready from their hand-over on, before the source reports them;
        # one the source reported and no longer does is gone. Pods another gateway (or this one
        # before a restart) claimed are adopted: released by deleting them, never by scaling.
        pool.claimed |= set(pods.pooled)
        pool.claim_seen |= pool.claimed & pool.kube_ready
        for gone in pool.claim_seen - pool.kube_ready - pool.starting:
            pool.claimed.discard(gone)
            pool.claim_seen.discard(gone)
            pool.stale.discard(gone)
        new = pool.kube_ready | pool.probed | pool.claimed
        pool.retired &= new | pool.starting  # retired and gone: forget
        new -= pool.retired  # retired, still on its way out: never offered again
        pool.idle = [e for e in pool.idle if e in new]
        added = new - pool.ready - pool.resting
        pool.ready = new
        for endpoint in sorted(added):
            pool.free(endpoint)
        pool.problem = pods.problem
        pool.pending = pods.pending
        failure = pool.failure()
        if failure is not None and pool.waiting():
            log.warning(
                "function %s: failing %d waiting requests: %s", pool.config.name, pool.waiting(), failure
            )
            pool.fail_waiters(failure)
        self._probe_starting(pool)

    async def invoke(self, fn: FunctionConfig, request: InvocationRequest) -> InvocationResult:
        pool = self._pools.get(fn.pool_key)
        if pool is None:
            pool = self._pools[fn.pool_key] = _Pool(fn)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cold_start_timeout
        while True:
            endpoint = await self._acquire(pool, deadline)
            # From here the request may reach the environment. If the caller goes away (the gateway's
            # handler is cancelled), the call still waits for the environment's reply (PodClient),
            # so the environment is handed on only once it is free again and the caller's
            # concurrency slot is held as long as the invocation runs.
            result = await self._call(pool, endpoint, request, fn)
            if result is not None:
                return result
            if loop.time() >= deadline:
                raise NoEnvironment(
                    f"no environment of {pool.config.name} accepted the request within "
                    f"{self.cold_start_timeout:.0f} s (last: {endpoint} refused it)"
                )

    async def _call(
        self, pool: _Pool, endpoint: str, request: InvocationRequest, fn: FunctionConfig
    ) -> InvocationResult | None:
        """POST to ``endpoint``; None when the connection was refused, the environment was busy or
        it serves another function (nothing ran: the request is sent elsewhere)."""
        refused = lost = busy = misdirected = False
        try:
            return await self._post(endpoint, request, fn)
        except EnvironmentRefused as exc:
            if exc.status == MISDIRECTED:
                # The address now belongs to another function's pod (ours is gone and its IP given
                # to a new pod before the watch said so): nothing ran; another environment takes it.
                log.warning("function %s: %s serves another function; passed over", fn.name, endpoint)
                self._client.forget(endpoint)
                misdirected = True
                return None
            if exc.status != 429:
                raise
            # Busy with a call this gateway did not send (one a lost replica sent before this one took
            # the function over): the function did not run; another environment takes the request.
            busy = True
            return None
        except Refused:
            # The request never reached the environment (a pod marked Ready before it listens, or
            # one going away): sending it again cannot run the function twice. The endpoint sits
            # out a moment instead of going straight back to the idle list.
            refused = True
            return None
        except Broken as exc:
            # Sent, and then the connection dropped or went silent past the function's timeout:
            # the handler may have run. Not retried here (it must not run twice).
            lost = True
            return environment_lost(request, f"{exc} from {endpoint}")
        except ReplyMismatch as exc:
            # An answer that is not this request's result is never its payload. The handler may have
            # run: the call fails as if its environment was lost, and the connections to that
            # environment, which can no longer be trusted to pair replies with requests, are closed.
            log.error("function %s: %s: %s", fn.name, endpoint, exc)
            self._client.forget(endpoint)
            lost = True
            return environment_lost(request, f"{exc} from {endpoint}")
        finally:
            if misdirected:
                # Out of rotation until the source drops the address; a claimed one is not released:
                # the pool pod at that address now is another function's.
                pool.rest(endpoint, LOST_PAUSE_S)
            elif (lost or refused) and endpoint in pool.claimed:
                self._drop_claimed(pool, endpoint)  # a claimed pool pod never comes back
            elif lost:
                pool.rest(endpoint, LOST_PAUSE_S)
            elif refused:
                pool.rest(endpoint, REFUSED_PAUSE_S)
            elif busy:
                pool.rest(endpoint, BUSY_PAUSE_S)
            elif endpoint in pool.stale:
                self._drop_claimed(pool, endpoint)
            else:
                pool.free(endpoint)

    def _drop_claimed(self, pool: _Pool, endpoint: str) -> None:
        """Take a claimed pool pod out of rotation for good and delete it."""
        pool.busy.discard(endpoint)
        if endpoint in pool.idle:
            pool.idle.remove(endpoint)
        pool.ready.discard(endpoint)
        pool.claimed.discard(endpoint)
        pool.claim_seen.discard(endpoint)
        pool.stale.discard(endpoint)
        pool.retired.add(endpoint)
        if self.claims is not None:
            self._spawn(self.claims.release(pool.config, endpoint))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` beside the requests, keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _claim(self, pool: _Pool) -> None:
        """One cold start from the warm pool; with nothing left to claim, one on the Deployment."""
        fn = pool.config
        assert self.claims is not None
        endpoint = None
        try:
            endpoint = await self.claims.claim(fn)
        except EnvironmentFailed as exc:
            log.warning("function %s: failing %d waiting requests: %s", fn.name, pool.waiting(), exc)
            pool.fail_waiters(exc)
            return
        except Exception:
            log.exception("function %s: claiming a pool pod failed; starting one on the Deployment", fn.name)
        finally:
            pool.claiming -= 1
        if endpoint is None:
            if pool.waiting():
                pool.requested += 1
                log.info(
                    "function %s: no pool pod to claim: asking for %d on the Deployment",
                    fn.name,
                    pool.requested,
                )
                await self._scale(pool)
                self._probe_starting(pool)
            return
        pool.claimed.add(endpoint)
        pool.retired.discard(endpoint)
        if endpoint not in pool.ready:  # else the source reported it (labelled serving) first: handed on
            pool.ready.add(endpoint)
            pool.free(endpoint)

    def _probe_starting(self, pool: _Pool) -> None:
        """While requests wait, probe each starting pod that is not probed yet."""
        if not pool.waiting():
            return
        for endpoint in sorted(pool.starting - pool.ready - pool.probes.keys()):
            pool.probes[endpoint] = asyncio.get_running_loop().create_task(self._probe(pool, endpoint))

    async def _probe(self, pool: _Pool, endpoint: str) -> None:
        """``GET /healthz`` of a starting pod until it answers 200 (INIT done) or nobody waits any
        more; then it takes requests without waiting for the kubelet's probe to say so."""
        gap = PROBE_FIRST_S
        started = time.monotonic()
        try:
            while endpoint in pool.starting and endpoint not in pool.ready and pool.waiting():
                if await self._healthy(endpoint):
                    if endpoint in pool.starting and endpoint not in pool.ready:
                        log.info(
                            "function %s: %s answered its probe after %.0f ms (before the kubelet's)",
                            pool.config.name,
                            endpoint,
                            (time.monotonic() - started) * 1000,
                        )
                        pool.probed.add(endpoint)
                        pool.ready.add(endpoint)
                        pool.free(endpoint)
                    return
                await asyncio.sleep(gap)
                gap = min(gap * PROBE_GROWTH, PROBE_MAX_S)
        finally:
            pool.probes.pop(endpoint, None)

    async def _healthy(self, endpoint: str) -> bool:
        """Whether the pod can take a request: INIT done, or failed (the request then gets its error)."""
        try:
            reply = await self._client.request(
                endpoint, "GET", HEALTH_PATH, {}, b"", PROBE_WAIT_S + PROBE_TIMEOUT_S
            )
        except (Refused, Broken):
            return False
        return reply.status == 200 or INIT_FAILED_HEADER.lower() in reply.headers

    async def _scale(self, pool: _Pool, retire: str | None = None) -> None:
        """Ask the source for ``pool.requested`` replicas. One request at a time per function, each
        sending the count as it is when its turn comes: concurrent cold starts ask for 2 and then 3,
        and an unordered pair of writes must not leave the Deployment at 2."""
        async with pool.scaling:
            if await self._ask(pool, retire):
                return
        if not pool.rescaling:
            pool.rescaling = True
            self._spawn(self._rescale(pool))

    async def _ask(self, pool: _Pool, retire: str | None) -> bool:
        """One request of the source for ``pool.requested``; False (logged) when it was not taken.
        A failed scale never fails the request that caused it: that request keeps waiting, and the
        gateway keeps starting, while the scale is asked again."""
        try:
            await self.source.scale(pool.config, pool.requested, retire=retire)
        except Exception as exc:
            name, replicas = pool.config.name, pool.requested
            if pool.rescaling:  # said once already, when it first failed
                log.debug("function %s: scaling to %d failed again: %s", name, replicas, exc)
            elif isinstance(exc, ScaleTargetMissing):  # expected: no traceback
                log.info("function %s: %s; asking again", name, exc)
            else:
                log.exception("function %s: scaling to %d failed; asking again", name, replicas)
            return False
        return True

    async def _rescale(self, pool: _Pool) -> None:
        """Ask the source again, backing off, until it takes the count or the function is gone."""
        gap = RESCALE_FIRST_S
        try:
            while self._pools.get(pool.config.pool_key) is pool:
                await asyncio.sleep(gap)
                async with pool.scaling:
                    if not self._serves(pool):
                        return  # another replica scales it now
                    if await self._ask(pool, None):
                        log.info("function %s: scaled to %d", pool.config.name, pool.requested)
                        return
                gap = min(gap * 2, RESCALE_MAX_S)
        finally:
            pool.rescaling = False

    async def _acquire(self, pool: _Pool, deadline: float) -> str:
        self._serves(pool)  # called here: it serves the function (counts the Deployment once taken over)
        while pool.idle:
            idle = pool.idle.pop()
            if idle in pool.ready:
                pool.busy.add(idle)
                return idle
        failure = pool.failure()
        if failure is not None:
            raise failure
        cap = pool.config.reserved_concurrency
        cap = self.max_environments if cap is None else min(cap, self.max_environments)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[str] = loop.create_future()
        pool.waiters.append(waiter)
        waited = time.monotonic()
        endpoint: str | None = None
        try:
            wanted = min(len(pool.busy) + pool.waiting(), cap)
            have = pool.requested + len(pool.claimed) + pool.claiming
            scale = False
            for _ in range(max(0, wanted - have)):
                if self.claims is not None and self.claims.can_claim(pool.config):
                    pool.claiming += 1  # a cold start from the warm pool
                    self._spawn(self._claim(pool))
                else:
                    pool.requested += 1
                    scale = True
            if scale:
                log.info(
                    "function %s: cold start: asking its Deployment for %d environments, %d requests waiting",
                    pool.config.name,
                    pool.requested,
                    pool.waiting(),
                )
                await self._scale(pool)  # a cold start: hold the request
            self._probe_starting(pool)
            endpoint = await asyncio.wait_for(asyncio.shield(waiter), max(deadline - loop.time(), 0))
        except TimeoutError:
            why = f"; last known problem: {pool.problem.message}" if pool.problem else ""
            log.warning(
                "function %s: no environment within %.0f s%s", pool.config.name, self.cold_start_timeout, why
            )
            raise NoEnvironment(
                f"no environment of {pool.config.name} became ready within {self.cold_start_timeout:.0f} s"
                + why
            ) from None
        finally:
            if endpoint is None:  # gave up: timed out, failed, or the caller went away
                if not waiter.done():
                    waiter.cancel()
                elif not waiter.cancelled() and waiter.exception() is None:
                    pool.free(waiter.result())  # handed over just as we gave up: to the next in line
        waited_ms = (time.monotonic() - waited) * 1000
        if waited_ms >= 50:
            log.info(
                "function %s: request held %.0f ms for an environment (%s)",
                pool.config.name,
                waited_ms,
                endpoint,
            )
        return endpoint

    async def _post(self, endpoint: str, request: InvocationRequest, fn: FunctionConfig) -> InvocationResult:
        headers = encode_request(request)
        headers[FUNCTION_HEADER] = fn.name  # a pod of another function refuses it (MISDIRECTED)
        secret = self.secret_for(fn) if self.secret_for is not None else None
        if secret:
            headers[INVOKE_SECRET_HEADER] = secret
        # The pod enforces the function timeout; this bound only catches a pod that vanished mid-call.
        reply = await self._client.request(
            endpoint, "POST", "/invoke", headers, request.payload, fn.timeout_seconds + 30
        )
        if reply.status != 200:
            raise EnvironmentRefused(reply.status, reply.body)
        return decode_result(request.request_id, reply.headers, reply.body)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.reap_interval)
            await self.reap(time.monotonic())

    async def reap(self, now: float) -> int:
        """Give back endpoints idle past the keep-alive, never below provisioned concurrency (claimed
        pool pods are deleted; the Deployment is scaled down for its own)."""
        retired = 0
        for pool in self._pools.values():
            if not self._serves(pool):
                continue
            keep = pool.config.provisioned_concurrency
            keep_alive = 0.0 if pool.flush_idle else pool.config.idle_timeout_seconds
            pool.flush_idle = False
            for endpoint in sorted(pool.idle, key=lambda e: pool.last_used.get(e, 0)):
                if now - pool.last_used.get(endpoint, now) < keep_alive:
                    continue
                if endpoint in pool.claimed:
                    self._drop_claimed(pool, endpoint)
                    retired += 1
                    continue
                if pool.requested <= keep:
                    continue
                pool.idle.remove(endpoint)
                pool.ready.discard(endpoint)
                pool.probed.discard(endpoint)
                pool.retired.add(endpoint)
                pool.requested -= 1
                retired += 1
                await self._scale(pool, retire=endpoint)
        return retired
