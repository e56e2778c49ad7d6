"""A gateway told to stop answers every call it accepted: with the result, or with ServiceException.

SIGTERM reaches a gateway replica on a rolling update, a scale-in or a node drain. From then on
(:meth:`Drain.begin`) it listens no more, closes its idle keep-alive connections and fails its
readiness, so callers reconnect to a live replica; a request that still arrives on an open connection
is refused as a call that never ran (Lambda's ``ServiceException``, which the SDKs retry, or, for a call
another replica forwarded, "not the holder", which that replica asks again elsewhere). Calls in flight
get a bounded grace (:meth:`Drain.settle`: ``--drain-seconds``, shorter than the pod's
``terminationGracePeriodSeconds``); those still running at its end are cut (:meth:`Drain.cut`) and
answered ``ServiceException`` (500) in Lambda's error shape, never a dropped connection. A cut call may
still finish in its environment: as on Lambda, a ServiceException does not say the function did not run.

The middleware tracks the task of every request that can reach a function; cutting cancels it, and the
middleware turns that cancellation, and only that one, into the answer (a caller that hangs up is a
cancellation too, and stays one). Its cost per request is a dict insert and delete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from lamina.gateway.errors import ServiceError
from lamina.gateway.invoke_api import REQUEST_ID, error_response

log = logging.getLogger(__name__)

#: Open routes: probes and metrics are never tracked; /healthz answers 503 while draining.
HEALTH_PATH, METRICS_PATH = "/healthz", "/metrics"
#: How long cut calls get to write their answers before the connections close.
ANSWER_S = 2.0

Answer = Callable[[web.Request, str], web.StreamResponse]
#: What a request refused while draining, and a call cut at the end of the grace, are told.
REFUSED = "this gateway replica is shutting down and took no new call; send it again"
CUT = (
    "the gateway replica running this call was shut down before the call finished "
    "(it may still complete in its environment)"
)


def service_exception(request: web.Request, message: str) -> web.StreamResponse:
    """Lambda's ``ServiceException`` (500, ``x-amzn-ErrorType``, ``{"Type": "Service", "message"}``)."""
    request_id = request.get(REQUEST_ID) or str(uuid.uuid4())
    return error_response(ServiceError(message), request_id)


class Drain:
    """What a stopping gateway still runs, and how each route answers when it cannot finish."""

    def __init__(self) -> None:
        self.draining = False
        self._running: dict[asyncio.Task[Any], web.Request | None] = {}
        self._cut: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        #: (path prefix, answer to a request refused while draining, answer to a cut call); the first
        #: prefix that matches wins, Lambda's ServiceException otherwise.
        self._routes: list[tuple[str, Answer, Answer]] = []

    def answer(self, prefix: str, refused: Answer | None = None, cut: Answer | None = None) -> None:
        """How the routes under ``prefix`` answer a request refused while draining, and a cut call."""
        self._routes.append((prefix, refused or service_exception, cut or service_exception))

    def _answers(self, request: web.Request) -> tuple[Answer, Answer]:
        for prefix, refused, cut in self._routes:
            if request.path.startswith(prefix):
                return refused, cut
        return service_exception, service_exception

    @property
    def running(self) -> int:
        return len(self._running)

    def enter(self, task: asyncio.Task[Any], request: web.Request | None = None) -> None:
        """``task`` now runs a call that may reach a function: :meth:`cut` cancels it."""
        self._running[task] = request

    def leave(self, task: asyncio.Task[Any]) -> None:
        del self._running[task]
        self._cut.discard(task)
        if not self._running:
            self._idle.set()

    def was_cut(self, task: asyncio.Task[Any]) -> bool:
        """Whether ``task``'s cancellation is :meth:`cut`'s (else the caller hung up)."""
        return task in self._cut

    @property
    def middleware(self) -> Middleware:
        @web.middleware
        async def drain_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path in (HEALTH_PATH, METRICS_PATH):
                if self.draining and request.path == HEALTH_PATH:
                    return web.json_response({"status": "draining"}, status=503)
                return await handler(request)
            if self.draining:
                refused = self._answers(request)[0](request, REFUSED)
                refused.force_close()
                return refused
            task = asyncio.current_task()
            assert task is not None
            self.enter(task, request)
            try:
                return await handler(request)
            except asyncio.CancelledError:
                if not self.was_cut(task):
                    raise  # the caller hung up (or aiohttp is closing the connection)
                task.uncancel()
                answer = self._answers(request)[1](request, CUT)
                answer.force_close()
                return answer
            finally:
                self.leave(task)

        return drain_middleware

    async def begin(self, runner: web.AppRunner) -> None:
        """Stop taking calls: listen no more, close idle keep-alive connections (a busy one closes
        after its answer), fail readiness, refuse what still arrives."""
        self.draining = True
        for site in list(runner.sites):
            await site.stop()
        if runner.server is not None:
            runner.server.pre_shutdown()

    async def settle(
        self,
        deadline: float,
        tick: Callable[[], Awaitable[None]] | None = None,
        every: float = 0.25,
    ) -> int:
        """Wait until no call runs or the loop's clock passes ``deadline``, running ``tick`` every
        ``every`` seconds meanwhile (the gateway gives back the Leases of functions no call runs
        for); returns how many calls still run."""
        loop = asyncio.get_running_loop()
        while self._running and (left := deadline - loop.time()) > 0:
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), min(every, left))
            if tick is not None:
                await tick()
        return len(self._running)

    async def cut(self, within: float = ANSWER_S) -> int:
        """Answer every call still running with its route's cut answer (ServiceException); returns
        how many were cut. The callers' ``PodClient``s must have been abandoned first, or a cut call
        that reached its environment would wait for the environment's reply."""
        tasks = list(self._running)
        self._cut.update(tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=within)
            log.warning("%d call(s) running at the end of the grace: answered ServiceException", len(tasks))
        return len(tasks)


async def drain_and_stop(
    runner: web.AppRunner,
    drain: Drain,
    grace: float,
    *,
    beside: Sequence[Callable[[float], Coroutine[Any, Any, None]]] = (),
    tick: Callable[[], Awaitable[None]] | None = None,
    abandon: Sequence[Callable[[], None]] = (),
) -> None:
    """A gateway's stop, in cluster and local mode alike: take no more calls, let those in flight run
    for ``grace`` seconds, answer what still runs with ServiceException, then close the server.

    ``beside``: what stops meanwhile, each called at once with the grace (the async dispatcher and the
    event-source consumers stop taking work and let theirs finish within it); waited for until the
    deadline before the cut, and to their end after it. ``tick``: run before the wait and every
    quarter second during it. ``abandon``: run just before the cut (clients that must stop waiting
    for an environment's reply, see :meth:`Drain.cut`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    await drain.begin(runner)
    log.info("stopping: %d call(s) in flight get up to %.0f s to finish", drain.running, grace)
    stopping = [asyncio.create_task(stop(grace)) for stop in beside]
    if tick is not None:
        await tick()
    await drain.settle(deadline, tick)
    if stopping:
        await asyncio.wait(stopping, timeout=max(deadline - loop.time(), 0))
    for give_up in abandon:
        give_up()
    await drain.cut()
    await runner.cleanup()
    if stopping:
        await asyncio.gather(*stopping)
