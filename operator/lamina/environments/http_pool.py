"""Environments reached over HTTP (pods running `python -m lamina_runtime serve`).

The cluster's `EnvironmentPool`: one request per endpoint at a time, a cold start when every ready
endpoint is busy (the source is asked for one more replica and the request is held until it is ready),
and idle endpoints above provisioned concurrency handed back after the keep-alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from lamina.environments.base import FunctionConfig, hand_over
from lamina.environments.endpoints import EndpointSource
from lamina_runtime.protocol import (
    INVOKE_SECRET_HEADER,
    InvocationRequest,
    InvocationResult,
    decode_result,
    encode_request,
)

#: ``secret_for(fn)``: the invoke secret the function's pods require, or None when they require none.
SecretFor = Callable[[FunctionConfig], str | None]

#: How long an endpoint that refused a connection sits out before it is offered again.
REFUSED_PAUSE_S = 0.2
#: How long an endpoint that dropped an invocation sits out (it is usually gone for good: its pod's
#: deletion reaches the watch meanwhile).
LOST_PAUSE_S = 5.0


class NoEnvironment(Exception):
    """No environment became ready within the cold-start limit."""


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
    ready: set[str] = field(default_factory=set)
    idle: list[str] = field(default_factory=list)
    busy: set[str] = field(default_factory=set)
    last_used: dict[str, float] = field(default_factory=dict)
    waiters: deque[asyncio.Future[str]] = field(default_factory=deque)
    requested: int = 0  # replicas asked of the source
    resting: set[str] = field(default_factory=set)  # refused a connection; offered again shortly
    scaling: asyncio.Lock = field(default_factory=asyncio.Lock)

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
    ) -> None:
        self.source = source
        self.secret_for = secret_for
        self.cold_start_timeout = cold_start_timeout
        self.max_environments = max_environments
        self.reap_interval = reap_interval
        self._pools = {f.pool_key: _Pool(f) for f in functions}
        self._session: aiohttp.ClientSession | None = None
        self._reaper: asyncio.Task[None] | None = None
        source.subscribe(self._on_endpoints)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
        )
        await self.source.start()
        for pool in self._pools.values():
            pool.requested = max(len(pool.ready), pool.config.provisioned_concurrency)
            if pool.requested != len(pool.ready):
                await self._scale(pool)
        self._reaper = asyncio.create_task(self._reap_forever())

    async def update(self, functions: list[FunctionConfig]) -> None:
        for fn in functions:
            pool = self._pools.setdefault(fn.pool_key, _Pool(fn))
            pool.config = fn
        for key in set(self._pools) - {f.pool_key for f in functions}:
            del self._pools[key]

    async def close(self) -> None:
        if self._reaper:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await self.source.close()
        if self._session:
            await self._session.close()

    def in_flight(self, fn: FunctionConfig) -> int:
        pool = self._pools.get(fn.pool_key)
        return len(pool.busy) if pool else 0

    def environments(self, fn: FunctionConfig) -> int:
        pool = self._pools.get(fn.pool_key)
        return len(pool.ready) if pool else 0

    def _on_endpoints(self, key: str, endpoints: list[str]) -> None:
        pool = self._pools.get(key)
        if pool is None:
            return
        new = set(endpoints)
        pool.idle = [e for e in pool.idle if e in new]
        for endpoint in sorted(new - pool.ready - pool.resting):
            pool.ready.add(endpoint)
            pool.free(endpoint)
        pool.ready = new

    async def invoke(self, fn: FunctionConfig, request: InvocationRequest) -> InvocationResult:
        pool = self._pools.get(fn.pool_key)
        if pool is None:
            pool = self._pools[fn.pool_key] = _Pool(fn)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cold_start_timeout
        while True:
            endpoint = await self._acquire(pool)
            refused = lost = False
            try:
                return await self._post(endpoint, request, fn)
            except aiohttp.ClientConnectorError as exc:
                # The request never reached the environment (a pod marked Ready before it listens, or
                # one going away): sending it again cannot run the function twice. The endpoint sits
                # out a moment instead of going straight back to the idle list.
                refused = True
                if loop.time() >= deadline:
                    raise NoEnvironment(
                        f"no environment of {pool.config.name} accepted the request within "
                        f"{self.cold_start_timeout:.0f} s (last: {endpoint}: {exc})"
                    ) from exc
            except (aiohttp.ClientError, TimeoutError) as exc:
                # Sent, and then the connection dropped or went silent past the function's timeout:
                # the handler may have run. Not retried here (it must not run twice).
                lost = True
                return environment_lost(request, f"{type(exc).__name__} from {endpoint}")
            finally:
                if lost:
                    pool.rest(endpoint, LOST_PAUSE_S)
                elif refused:
                    pool.rest(endpoint, REFUSED_PAUSE_S)
                else:
                    pool.free(endpoint)

    async def _scale(self, pool: _Pool, retire: str | None = None) -> None:
        """Ask the source for ``pool.requested`` replicas. One request at a time per function, each
        sending the count as it is when its turn comes: concurrent cold starts ask for 2 and then 3,
        and an unordered pair of writes must not leave the Deployment at 2."""
        async with pool.scaling:
            await self.source.scale(pool.config, pool.requested, retire=retire)

    async def _acquire(self, pool: _Pool) -> str:
        while pool.idle:
            endpoint = pool.idle.pop()
            if endpoint in pool.ready:
                pool.busy.add(endpoint)
                return endpoint
        cap = pool.config.reserved_concurrency
        cap = self.max_environments if cap is None else min(cap, self.max_environments)
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        pool.waiters.append(waiter)
        wanted = len(pool.busy) + len(pool.waiters)
        if wanted > pool.requested and pool.requested < cap:
            pool.requested = min(wanted, cap)
            await self._scale(pool)  # a cold start: hold the request
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), self.cold_start_timeout)
        except TimeoutError:
            waiter.cancel()
            raise NoEnvironment(
                f"no environment of {pool.config.name} became ready within {self.cold_start_timeout:.0f} s"
            ) from None

    async def _post(self, endpoint: str, request: InvocationRequest, fn: FunctionConfig) -> InvocationResult:
        assert self._session is not None
        headers = encode_request(request)
        secret = self.secret_for(fn) if self.secret_for is not None else None
        if secret:
            headers[INVOKE_SECRET_HEADER] = secret
        # The pod enforces the function timeout; this bound only catches a pod that vanished mid-call.
        timeout = aiohttp.ClientTimeout(total=fn.timeout_seconds + 30)
        async with self._session.post(
            f"http://{endpoint}/invoke",
            data=request.payload,
            headers=headers,
            timeout=timeout,
        ) as response:
            body = await response.read()
            if response.status != 200:
                raise EnvironmentRefused(response.status, body)
            return decode_result(request.request_id, response.headers, body)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.reap_interval)
            await self.reap(time.monotonic())

    async def reap(self, now: float) -> int:
        """Give back endpoints idle past the keep-alive, never below provisioned concurrency."""
        retired = 0
        for pool in self._pools.values():
            keep = pool.config.provisioned_concurrency
            for endpoint in sorted(pool.idle, key=lambda e: pool.last_used.get(e, 0)):
                if pool.requested <= keep:
                    break
                if now - pool.last_used.get(endpoint, now) < pool.config.idle_timeout_seconds:
                    continue
                pool.idle.remove(endpoint)
                pool.ready.discard(endpoint)
                pool.requested -= 1
                retired += 1
                await self._scale(pool, retire=endpoint)
        return retired
