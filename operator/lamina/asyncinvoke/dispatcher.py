"""Takes due events from the store and runs them with Lambda's asynchronous-invocation rules.

* Function error (the handler raised, timed out, crashed): retried up to ``maximumRetryAttempts``
  (0-2) more times, waiting ``retry_base_seconds`` x the attempt number (Lambda: about 1 min, then
  about 2 min), then ``RetriesExhausted`` to ``onFailure``.
* Throttled (over reserved concurrency) or a system error before the handler ran: the event stays
  queued and is retried with exponential backoff from ``throttle_min_seconds`` (1 s) to
  ``throttle_max_seconds`` (5 min) until ``maximumEventAgeSeconds``, then ``EventAgeExceeded``.
  Such attempts do not count as retries. A function whose reserved concurrency is 0 sends its events
  straight to ``onFailure`` (``RetriesExhausted``, ``approximateInvokeCount`` 0) without retries.
* Success: the record goes to ``onSuccess`` if configured.
* A record that cannot be delivered stays in the store (``pending_record``) and only its delivery is
  retried, with backoff, until it is delivered: nothing accepted is ever dropped silently.
* An unknown function (deleted, or not yet seen after a restart) is retried like a throttle for
  ``not_found_grace_seconds`` of event age, then dropped with a log line and the metric.

``approximateInvokeCount`` counts the runs of the handler (function errors plus the final run).

Up to ``max_in_flight`` events run at once, at most ``max_in_flight_per_function`` (default 3/4 of
them) for one function. Claimed events that cannot start yet wait in a local queue per function
(started round-robin as slots free up, at most ``max_in_flight`` of them waiting); an event that
waited ``defer_after_seconds`` while its function is at its share goes back to the store for
``defer_seconds``, which makes room to claim other functions' events: one slow function does not
hold up the others. A slot is held while the handler runs: the write of the outcome to the store
(and the delivery of a record to a destination) goes on without it, so the next events run during
that round trip; at most ``4 x max_in_flight`` events are held in all. Leases of events in flight are
extended every third of ``lease_seconds``; after a crash, events come back when their lease ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from lamina.api import Endpoint
from lamina.invocation.errors import FunctionNotFound, ThrottledError
from lamina.invocation.invoker import Invoker
from lamina_runtime.protocol import InvocationResult

from . import records
from .config import EventInvokeConfig
from .destinations import Destinations, InvokeCheck, SinkFactory, UrlResolver
from .store import AsyncEventStore, QueuedEvent

log = logging.getLogger(__name__)

#: ``config_lookup("namespace/name")``: the function's event invoke config; None when it is unknown.
ConfigLookup = Callable[[str], EventInvokeConfig | None]


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


class AsyncDispatcher:
    def __init__(
        self,
        store: AsyncEventStore,
        invoker: Invoker,
        config_lookup: ConfigLookup,
        clock: Callable[[], float] = time.time,
        *,
        destinations: Destinations | None = None,
        sink_factory: SinkFactory | None = None,
        url_resolver: UrlResolver | None = None,
        may_invoke: InvokeCheck | None = None,
        metrics: Any = None,
        max_in_flight: int = 64,
        max_in_flight_per_function: int | None = None,
        lease_seconds: float = 60.0,
        poll_interval: float = 0.5,
        retry_base_seconds: float = 60.0,
        throttle_min_seconds: float = 1.0,
        throttle_max_seconds: float = 300.0,
        delivery_retry_min_seconds: float = 1.0,
        delivery_retry_max_seconds: float = 300.0,
        not_found_grace_seconds: float = 600.0,
        defer_after_seconds: float = 1.0,
        defer_seconds: float = 1.0,
        region: str | None = None,
        account: str = records.ACCOUNT,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self.store = store
        self._invoker = invoker
        self._lookup = config_lookup
        self._clock = clock
        self._own_destinations = destinations is None
        self.destinations = destinations or Destinations(
            store,
            sink_factory=sink_factory,
            url_resolver=url_resolver,
            on_enqueued=self._enqueued,
            clock=clock,
            may_invoke=may_invoke,
        )
        self.metrics = metrics
        self.max_in_flight = max_in_flight
        self.max_in_flight_per_function = max_in_flight_per_function or max(1, (max_in_flight * 3) // 4)
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.retry_base_seconds = retry_base_seconds
        self.throttle_min_seconds = throttle_min_seconds
        self.throttle_max_seconds = throttle_max_seconds
        self.delivery_retry_min_seconds = delivery_retry_min_seconds
        self.delivery_retry_max_seconds = delivery_retry_max_seconds
        self.not_found_grace_seconds = not_found_grace_seconds
        self.defer_after_seconds = defer_after_seconds
        self.defer_seconds = defer_seconds
        self.region, self.account = region, account
        self.stats: Counter[str] = Counter()
        self._tasks: dict[str, asyncio.Task[None]] = {}  # held: running, or writing its outcome
        # Events holding a run slot: their handler has not returned yet. An event whose handler
        # returned gives its slot back while its outcome is written to the store, so the next events
        # run during that round trip instead of after it.
        self._running: set[str] = set()
        self._per_function: Counter[str] = Counter()  # running, by function
        self._reserved: dict[str, int | None] = {}  # reserved concurrency, as last looked up
        self._waiting: dict[str, deque[tuple[QueuedEvent, float]]] = {}  # claimed, not started
        self._waiting_count = 0
        self._wake = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._next_due: float | None = None
        self._stopping = False
        self._runner: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    # -- public API ---------------------------------------------------------------------------
    async def enqueue(
        self,
        function: Any,
        payload: bytes,
        *,
        request_id: str | None = None,
        count: bool = True,
        trace: str | None = None,
    ) -> QueuedEvent:
        """Store one Event invocation durably (the gateway answers 202 after this returns).

        ``function`` is "namespace/name" or anything with such a ``key`` (the gateway's
        FunctionConfig). ``count=False`` skips the ``async_event_received`` hook (the caller counts).
        ``trace``: the caller's trace context, which the invocation continues (see QueuedEvent).
        """
        key = function if isinstance(function, str) else function.key
        ev = QueuedEvent.new(key, payload, request_id=request_id, now=self._clock(), trace=trace)
        await self.store.enqueue(ev)
        self.stats["received"] += 1
        if count:
            self._metric("async_event_received", key)
        self.wake()
        return ev

    def gateway_queue(self) -> GatewayQueue:
        """This dispatcher as the gateway's ``AsyncQueue`` (``enqueue(fn, request_id, payload)``)."""
        return GatewayQueue(self)

    def wake(self) -> None:
        """Look for due events now (something was enqueued)."""
        self._wake.set()

    @property
    def in_flight(self) -> int:
        """Events held by this dispatcher: running, or claimed and waiting for a slot."""
        return len(self._tasks) + self._waiting_count

    async def start(self) -> None:
        if self._runner is not None:
            return
        self._stopping = False
        self._runner = asyncio.create_task(self._run(), name="lamina-async-dispatcher")
        self._heartbeat = asyncio.create_task(self._renew_leases(), name="lamina-async-leases")

    async def stop(self, drain_seconds: float = 30.0) -> None:
        """Stop taking events, let those in flight finish for up to ``drain_seconds``, then cancel
        the rest and hand them back to the store (due at once) so the next start runs them."""
        self._stopping = True
        self._wake.set()
        self._slot_freed.set()
        if self._runner is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        await self._release_waiting(lambda fn, since: True)
        tasks = dict(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks.values(), timeout=drain_seconds)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
                now = self._clock()
                for ev_id, task in tasks.items():
                    if task in pending:
                        ev = getattr(task, "lamina_event", None)
                        if ev is not None:
                            with contextlib.suppress(Exception):
                                await self.store.reschedule(
                                    ev_id, now, ev.attempts, ev.last_error, throttles=ev.throttles
                                )
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        if self._own_destinations:
            await self.destinations.close()

    async def __aenter__(self) -> AsyncDispatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- loop ---------------------------------------------------------------------------------
    def _enqueued(self, ev: QueuedEvent) -> None:
        self.stats["received"] += 1
        self._metric("async_event_received", ev.function)
        self._wake.set()

    def _metric(self, name: str, *args: Any) -> None:
        fn = getattr(self.metrics, name, None) if self.metrics is not None else None
        if fn is not None:
            try:
                fn(*args)
            except Exception:
                log.exception("metrics hook %s failed", name)

    def _due_at(self, t: float) -> None:
        if self._next_due is None or t < self._next_due:
            self._next_due = t

    async def _idle_wait(self) -> None:
        timeout = self.poll_interval
        if self._next_due is not None:
            timeout = max(0.0, min(timeout, self._next_due - self._clock()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _run(self) -> None:
        held_limit = 2 * self.max_in_flight
        while not self._stopping:
            self._start_waiting()
            # Events whose handler returned and whose outcome is being written (or delivered to a
            # destination) hold no run slot, and get an allowance of their own: a deep backlog is
            # claimed while the last batch's completions travel, not after them.
            limit = (
                min(held_limit - len(self._running), 2 * held_limit - len(self._tasks)) - self._waiting_count
            )
            if limit <= 0:
                if await self._release_stale_waiting():
                    continue
                self._slot_freed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._slot_freed.wait(), max(0.01, self.defer_after_seconds / 2))
                continue
            self._wake.clear()
            if self._next_due is not None and self._next_due <= self._clock():
                self._next_due = None
            try:
                events = await self.store.claim_due(limit, self.lease_seconds)
            except Exception as e:
                self.stats["store_errors"] += 1
                log.warning("async event store: claim failed (%s: %s); retrying", type(e).__name__, e)
                await asyncio.sleep(self.poll_interval)
                continue
            waiting_ids = {e.id for q in self._waiting.values() for e, _ in q} if self._waiting else set()
            now = time.monotonic()
            for ev in events:
                # our own lease ran out while we still hold the event: keep the copy we have
                if ev.id in self._tasks or ev.id in waiting_ids:
                    continue
                self._waiting.setdefault(ev.function, deque()).append((ev, now))
                self._waiting_count += 1
            self._start_waiting()
            if len(events) < limit:
                await self._idle_wait()
            else:
                await asyncio.sleep(0)

    def _cap(self, fn: str) -> int:
        """Events of one function run at once: its share of the slots, and never more than its
        reserved concurrency (more would only be throttled and backed off, delaying them for nothing)."""
        reserved = self._reserved.get(fn)
        share = self.max_in_flight_per_function
        return share if reserved is None else max(1, min(share, reserved))

    def _start_waiting(self) -> None:
        """Start waiting events while slots are free, one function after the other."""
        while self._waiting and len(self._running) < self.max_in_flight:
            started = False
            for fn in list(self._waiting):
                if len(self._running) >= self.max_in_flight:
                    break
                if self._per_function[fn] >= self._cap(fn):
                    continue
                q = self._waiting[fn]
                ev, _ = q.popleft()
                if not q:
                    del self._waiting[fn]
                self._waiting_count -= 1
                self._spawn(ev)
                started = True
            if not started:
                break

    async def _release_stale_waiting(self) -> int:
        """Hand back events that waited too long behind their function's share of the slots."""
        cutoff = time.monotonic() - self.defer_after_seconds
        return await self._release_waiting(
            lambda fn, since: since <= cutoff and self._per_function[fn] >= self._cap(fn),
            delay=self.defer_seconds,
        )

    async def _release_waiting(self, which: Callable[[str, float], bool], delay: float = 0.0) -> int:
        released: list[QueuedEvent] = []
        for fn in list(self._waiting):
            q = self._waiting[fn]
            keep = deque(item for item in q if not which(fn, item[1]))
            released += [ev for ev, since in q if which(fn, since)]
            if keep:
                self._waiting[fn] = keep
            else:
                del self._waiting[fn]
        self._waiting_count -= len(released)
        t = self._clock() + delay
        for ev in released:
            self.stats["deferred"] += 1
            try:
                await self.store.reschedule(ev.id, t, ev.attempts, ev.last_error, throttles=ev.throttles)
            except Exception:
                log.exception("async event store: cannot hand back %s; it returns after its lease", ev.id)
        if released:
            self._due_at(t)
        return len(released)

    def _spawn(self, ev: QueuedEvent) -> None:
        self._per_function[ev.function] += 1
        self._running.add(ev.id)
        task = asyncio.create_task(self._guarded(ev), name=f"lamina-async-{ev.id}")
        task.lamina_event = ev  # type: ignore[attr-defined]
        self._tasks[ev.id] = task

        def done(_: asyncio.Task[None]) -> None:
            self._tasks.pop(ev.id, None)
            self._free_slot(ev)
            self._slot_freed.set()  # room to claim more, even when the run slot was freed before
            self._wake.set()

        task.add_done_callback(done)

    def _free_slot(self, ev: QueuedEvent) -> None:
        """Give the event's run slot back (once): its handler returned, or its task ended."""
        if ev.id not in self._running:
            return
        self._running.discard(ev.id)
        self._per_function[ev.function] -= 1
        if self._per_function[ev.function] <= 0:
            del self._per_function[ev.function]
        if not self._stopping:
            self._start_waiting()
        self._slot_freed.set()

    async def _renew_leases(self) -> None:
        interval = max(0.05, self.lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            ids = [*self._tasks, *(ev.id for q in self._waiting.values() for ev, _ in q)]
            if ids:
                try:
                    await self.store.touch(ids, self.lease_seconds)
                except Exception:
                    log.exception("async event store: lease renewal failed")

    async def _guarded(self, ev: QueuedEvent) -> None:
        try:
            await self._process(ev)
        except asyncio.CancelledError:
            raise
        except Exception:
            # the store failed (or a bug): leave the lease to run out, then the event comes back
            self.stats["errors"] += 1
            log.exception(
                "async event %s of %s: processing failed; it is retried when its lease ends",
                ev.id,
                ev.function,
            )

    # -- one event ----------------------------------------------------------------------------
    async def _invoke(self, ev: QueuedEvent) -> InvocationResult:
        # The event's id names the invocation: its retries and its record share it, as on Lambda.
        try:
            if ev.trace:  # only the gateway's invoker takes a trace; events of other queuers have none
                return await self._invoker(ev.function, ev.payload, request_id=ev.id, trace=ev.trace)  # type: ignore[call-arg]
            return await self._invoker(ev.function, ev.payload, request_id=ev.id)
        finally:
            self._free_slot(ev)  # the outcome's write to the store needs no run slot

    async def _process(self, ev: QueuedEvent) -> None:
        pending = ev.pending_record_obj()
        if pending is not None:
            await self._deliver(ev, pending)
            return
        cfg = self._lookup(ev.function)
        if cfg is not None:
            self._reserved[ev.function] = cfg.reserved_concurrency
        now = self._clock()
        if cfg is None:
            await self._function_missing(ev, now, "no such function")
            return
        age = now - ev.enqueued_at
        if age >= cfg.maximum_event_age_seconds:
            await self._finish(ev, cfg, records.EVENT_AGE_EXCEEDED, ev.last_error_obj(), ev.attempts, now)
            return
        if cfg.reserved_concurrency == 0:
            self.stats["throttled"] += 1
            response = records.throttled_response(
                "Rate Exceeded.", "ReservedFunctionConcurrentInvocationLimitExceeded"
            )
            await self._finish(ev, cfg, records.RETRIES_EXHAUSTED, response, ev.attempts, now)
            return
        self._metric("async_event_age", ev.function, age)
        try:
            result = await self._invoke(ev)
        except ThrottledError as e:
            self.stats["throttled"] += 1
            self._metric("async_event_throttled", ev.function)
            response = records.throttled_response(e.message, e.reason)
            await self._back_off(ev, cfg, response)
            return
        except FunctionNotFound as e:
            await self._function_missing(ev, self._clock(), str(e))
            return
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the platform failed before/around the handler: like Lambda's 5xx
            self.stats["system_errors"] += 1
            log.warning(
                "async event %s of %s: invoke failed: %s: %s", ev.id, ev.function, type(e).__name__, e
            )
            await self._back_off(ev, cfg, records.service_error_response(e))
            return
        self.stats["invocations"] += 1
        now = self._clock()
        if result.function_error is None:
            self.stats["succeeded"] += 1
            # the response is parsed only for a record: most events have no onSuccess destination
            parsed = records.response_from_result(result) if cfg.on_success is not None else None
            await self._finish(ev, cfg, records.SUCCESS, parsed, ev.attempts + 1, now)
            return
        response = records.response_from_result(result)
        self.stats["function_errors"] += 1
        attempts = ev.attempts + 1
        if attempts > cfg.maximum_retry_attempts:
            await self._finish(ev, cfg, records.RETRIES_EXHAUSTED, response, attempts, now)
            return
        deadline = ev.enqueued_at + cfg.maximum_event_age_seconds
        t = min(now + self.retry_base_seconds * attempts, deadline)
        await self.store.reschedule(ev.id, t, attempts, _dumps(response), throttles=ev.throttles)
        self._due_at(t)

    def _throttle_delay(self, n: int) -> float:
        return min(self.throttle_max_seconds, self.throttle_min_seconds * (2 ** max(0, min(n - 1, 30))))

    async def _back_off(self, ev: QueuedEvent, cfg: EventInvokeConfig, response: dict[str, Any]) -> None:
        throttles = ev.throttles + 1
        now = self._clock()
        deadline = ev.enqueued_at + cfg.maximum_event_age_seconds
        t = min(now + self._throttle_delay(throttles), deadline)
        # a throttle does not replace the response of an earlier function error in the record
        last_error = ev.last_error if ev.last_error and ev.attempts > 0 else _dumps(response)
        await self.store.reschedule(ev.id, t, ev.attempts, last_error, throttles=throttles)
        self._due_at(t)

    async def _function_missing(self, ev: QueuedEvent, now: float, why: str) -> None:
        self.stats["not_found"] += 1
        if now - ev.enqueued_at >= self.not_found_grace_seconds:
            self.stats["dropped"] += 1
            self._metric("async_event_dropped", ev.function, "FunctionNotFound")
            log.warning("async event %s dropped: function %s not found (%s)", ev.id, ev.function, why)
            await self.store.complete(ev.id)
            return
        throttles = ev.throttles + 1
        t = min(now + self._throttle_delay(throttles), ev.enqueued_at + self.not_found_grace_seconds)
        response = {
            "statusCode": 404,
            "responsePayload": {
                "errorType": "ResourceNotFoundException",
                "errorMessage": f"Function not found: {ev.function}",
            },
        }
        await self.store.reschedule(
            ev.id, t, ev.attempts, ev.last_error or _dumps(response), throttles=throttles
        )
        self._due_at(t)

    async def _finish(
        self,
        ev: QueuedEvent,
        cfg: EventInvokeConfig,
        condition: str,
        response: dict[str, Any] | None,
        invoke_count: int,
        now: float,
    ) -> None:
        success = condition == records.SUCCESS
        destination = "onSuccess" if success else "onFailure"
        endpoint = cfg.on_success if success else cfg.on_failure
        if not success:
            self.stats["dropped"] += 1
            self.stats[condition] += 1
            self._metric("async_event_dropped", ev.function, condition)
            if endpoint is None:
                log.warning(
                    "async event %s of %s failed for good (%s) and has no onFailure destination",
                    ev.id,
                    ev.function,
                    condition,
                )
        if endpoint is None:
            await self.store.complete(ev.id)
            return
        record = records.invocation_record(
            request_id=ev.id,
            function_name=ev.name,
            condition=condition,
            invoke_count=invoke_count,
            request_payload=ev.payload,
            response=response,
            now=now,
            region=self.region,
            account=self.account,
        )
        # Kept in the store as it is delivered, should the delivery fail: the endpoint in its wire form.
        pending = {"destination": destination, "endpoint": endpoint.to_dict(), "record": record}
        await self._deliver(ev, pending)

    async def _deliver(self, ev: QueuedEvent, pending: dict[str, Any]) -> None:
        try:
            endpoint = Endpoint.model_validate(pending["endpoint"])
            await self.destinations.deliver(ev, pending["destination"], endpoint, pending["record"])
        except asyncio.CancelledError:
            raise
        except Exception as e:
            n = int(pending.get("deliveryAttempts", 0)) + 1
            pending = {**pending, "deliveryAttempts": n, "lastDeliveryError": str(e)}
            self.stats["destination_delivery_failures"] += 1
            self._metric("destination_delivery_failure", ev.function, pending["destination"])
            log.warning(
                "async event %s of %s: %s delivery failed (attempt %d): %s",
                ev.id,
                ev.function,
                pending["destination"],
                n,
                e,
            )
            delay = min(
                self.delivery_retry_max_seconds, self.delivery_retry_min_seconds * (2 ** min(n - 1, 30))
            )
            t = self._clock() + delay
            await self.store.reschedule(
                ev.id, t, ev.attempts, ev.last_error, throttles=ev.throttles, pending_record=_dumps(pending)
            )
            self._due_at(t)
            return
        self.stats["delivered"] += 1
        self.stats[f"delivered_{pending['destination']}"] += 1
        await self.store.complete(ev.id)


class GatewayQueue:
    """Adapter to ``lamina.gateway.service.AsyncQueue``; the gateway counts received events itself."""

    def __init__(self, dispatcher: AsyncDispatcher) -> None:
        self.dispatcher = dispatcher

    async def enqueue(self, fn: Any, request_id: str, payload: bytes, trace: str | None = None) -> None:
        await self.dispatcher.enqueue(fn, payload, request_id=request_id, count=False, trace=trace)
