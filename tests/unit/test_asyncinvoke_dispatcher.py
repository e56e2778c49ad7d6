"""Lambda's asynchronous-invocation rules, run against both stores, with records delivered to a real
Redis stream (redis-server on a loopback port) or to another function."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import time
import uuid
from collections import Counter

import pytest
import redis.asyncio as aioredis

from lamina.api import Endpoint
from lamina.asyncinvoke import AsyncDispatcher, EventInvokeConfig, QueuedEvent
from lamina.asyncinvoke.destinations import record_event_id
from lamina.asyncinvoke.redis_store import RedisEventStore
from lamina.asyncinvoke.sqlite_store import SqliteEventStore
from lamina.invocation.errors import ThrottledError
from lamina_runtime.protocol import InvocationResult
from tests.support import brokers

pytest.importorskip("lamina.eventsources.redis_streams")

FAST = dict(
    poll_interval=0.05,
    retry_base_seconds=0.05,
    throttle_min_seconds=0.02,
    throttle_max_seconds=0.1,
    delivery_retry_min_seconds=0.05,
    delivery_retry_max_seconds=0.2,
    lease_seconds=10,
)


class Clock:
    """A clock the test moves by hand (event times, due times, ages); sleeping stays real."""

    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request, tmp_path, redis_url):
    made = []

    def make(clock=time.time):
        if request.param == "sqlite":
            s = SqliteEventStore(tmp_path / f"state-{len(made)}", clock=clock)
        else:
            s = RedisEventStore(redis_url, prefix=f"{{t-{uuid.uuid4().hex[:8]}}}", clock=clock)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close_sync() if isinstance(s, SqliteEventStore) else None


@pytest.fixture
async def store(make_store):
    s = make_store()
    yield s
    await s.close()


@pytest.fixture
def dest(redis_url):
    """A fresh destination stream on the real redis-server: (endpoint, reader)."""
    stream = f"dest-{uuid.uuid4().hex[:8]}"

    async def read() -> list[dict]:
        r = aioredis.Redis.from_url(redis_url)
        try:
            entries = await r.xrange(stream)
        finally:
            await r.aclose()
        return [json.loads(fields[b"body"]) for _, fields in entries]

    return Endpoint.model_validate({"redis": {"url": redis_url, "stream": stream}}), read


class Functions:
    """The invoker: plays the functions (the real environments are tested elsewhere)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.script: dict[str, list] = {}  # function -> outcomes in order; the last one repeats
        self.gates: dict[str, asyncio.Event] = {}

    def count(self, fn: str) -> int:
        return sum(1 for f, _ in self.calls if f == fn)

    async def __call__(self, fn: str, payload: bytes, request_id: str | None = None) -> InvocationResult:
        self.calls.append((fn, payload))
        if fn in self.gates:
            await self.gates[fn].wait()
        outcomes = self.script.get(fn, ["ok"])
        outcome = outcomes.pop(0) if len(outcomes) > 1 else outcomes[0]
        rid = str(uuid.uuid4())
        if outcome == "throttle":
            raise ThrottledError()
        if outcome == "error":
            body = {"errorMessage": "boom", "errorType": "ValueError", "stackTrace": []}
            return InvocationResult(rid, json.dumps(body).encode(), function_error="Unhandled")
        if outcome == "crash":
            raise ConnectionError("environment went away")
        return InvocationResult(rid, json.dumps({"echo": json.loads(payload)}).encode())


async def wait_until(pred, within: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + within
    while True:
        value = pred()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def dispatcher(store, fns, configs: dict, clock=time.time, **kw) -> AsyncDispatcher:
    return AsyncDispatcher(store, fns, lambda key: configs.get(key), clock, **{**FAST, **kw})


def check_record_shape(rec: dict, *, request_id: str, name: str, condition: str, count: int, payload):
    assert set(rec) >= {"version", "timestamp", "requestContext", "requestPayload", "responseContext"}
    assert rec["version"] == "1.0"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rec["timestamp"])
    assert rec["requestContext"] == {
        "requestId": request_id,
        "functionArn": f"arn:aws:lambda:us-east-1:000000000000:function:{name}:$LATEST",
        "condition": condition,
        "approximateInvokeCount": count,
    }
    assert rec["requestPayload"] == payload
    assert rec["responseContext"]["executedVersion"] == "$LATEST"


# -- success -------------------------------------------------------------------------------------


async def test_success_sends_the_record_to_on_success(store, dest):
    endpoint, read = dest
    fns = Functions()
    cfg = {"default/hello": EventInvokeConfig(on_success=endpoint)}
    async with dispatcher(store, fns, cfg) as d:
        ev = await d.enqueue("default/hello", b'{"order": 7}')
        [rec] = await wait_until(read, what="the onSuccess record")
        await wait_until(lambda: d.in_flight == 0)
    check_record_shape(
        rec, request_id=ev.id, name="hello", condition="Success", count=1, payload={"order": 7}
    )
    assert rec["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST"}
    assert rec["responsePayload"] == {"echo": {"order": 7}}
    assert fns.calls == [("default/hello", b'{"order": 7}')]
    assert await store.pending_count() == 0


async def test_success_without_destination_just_completes(store):
    fns = Functions()
    async with dispatcher(store, fns, {"default/hello": EventInvokeConfig()}) as d:
        await d.enqueue("default/hello", b"{}")
        await wait_until(lambda: d.stats["succeeded"] == 1)
        await wait_until(lambda: d.in_flight == 0)
    assert await store.pending_count() == 0
    assert d.stats["dropped"] == 0


# -- function errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("retries", [0, 1, 2])
async def test_function_error_runs_exactly_retries_plus_one_times(store, dest, retries):
    endpoint, read = dest
    fns = Functions()
    fns.script["default/flaky"] = ["error"]
    cfg = {"default/flaky": EventInvokeConfig(maximum_retry_attempts=retries, on_failure=endpoint)}
    async with dispatcher(store, fns, cfg) as d:
        ev = await d.enqueue("default/flaky", b'{"id": 1}')
        [rec] = await wait_until(read, what="the onFailure record")
        await wait_until(lambda: d.in_flight == 0)
    check_record_shape(
        rec,
        request_id=ev.id,
        name="flaky",
        condition="RetriesExhausted",
        count=retries + 1,
        payload={"id": 1},
    )
    assert rec["responseContext"] == {
        "statusCode": 200,
        "executedVersion": "$LATEST",
        "functionError": "Unhandled",
    }
    assert rec["responsePayload"]["errorMessage"] == "boom"
    assert fns.count("default/flaky") == retries + 1
    assert await store.pending_count() == 0  # nothing left that could run it again
    assert d.stats["RetriesExhausted"] == 1


async def test_an_error_then_success_is_a_success_with_two_invokes(store, dest):
    endpoint, read = dest
    fns = Functions()
    fns.script["default/f"] = ["error", "ok"]
    cfg = {
        "default/f": EventInvokeConfig(
            on_success=endpoint,
            on_failure=Endpoint.model_validate({"redis": {**endpoint.to_dict()["redis"], "stream": "nope"}}),
        )
    }
    async with dispatcher(store, fns, cfg) as d:
        await d.enqueue("default/f", b"1")
        [rec] = await wait_until(read)
    assert rec["requestContext"]["condition"] == "Success"
    assert rec["requestContext"]["approximateInvokeCount"] == 2
    assert rec["requestPayload"] == 1


async def test_retries_wait_one_then_two_base_delays(make_store):
    clock = Clock()
    store = make_store(clock)
    fns = Functions()
    fns.script["default/f"] = ["error"]
    cfg = {"default/f": EventInvokeConfig(maximum_retry_attempts=2)}
    d = dispatcher(store, fns, cfg, clock, retry_base_seconds=60)
    try:
        async with d:
            ev = await d.enqueue("default/f", b"{}")
            t0 = clock()
            await wait_until(lambda: fns.count("default/f") == 1)
            stored = await wait_until(lambda: _attempts(store, ev.id, 1))
            assert stored.next_attempt_at == pytest.approx(t0 + 60)
            clock.advance(60)
            await wait_until(lambda: fns.count("default/f") == 2)
            stored = await wait_until(lambda: _attempts(store, ev.id, 2))
            assert stored.next_attempt_at == pytest.approx(t0 + 60 + 120)
            clock.advance(120)
            await wait_until(lambda: d.stats["RetriesExhausted"] == 1)
        assert fns.count("default/f") == 3
    finally:
        await store.close()


async def _attempts(store, id, n):
    e = await store.get(id)
    return e if e is not None and e.attempts == n else None


async def test_a_retry_is_never_scheduled_past_the_event_age(make_store, dest):
    endpoint, read = dest
    clock = Clock()
    store = make_store(clock)
    fns = Functions()
    fns.script["default/f"] = ["error"]
    cfg = {"default/f": EventInvokeConfig(maximum_event_age_seconds=90, on_failure=endpoint)}
    try:
        async with dispatcher(store, fns, cfg, clock, retry_base_seconds=60) as d:
            ev = await d.enqueue("default/f", b"{}")
            t0 = clock()
            await wait_until(lambda: _attempts(store, ev.id, 1))
            clock.advance(60)
            stored = await wait_until(lambda: _attempts(store, ev.id, 2))
            assert stored.next_attempt_at == pytest.approx(t0 + 90)  # not t0 + 180
            clock.advance(30)
            [rec] = await wait_until(read)
        assert rec["requestContext"]["condition"] == "EventAgeExceeded"
        assert rec["requestContext"]["approximateInvokeCount"] == 2
        assert rec["responseContext"]["functionError"] == "Unhandled"  # the last attempt's answer
        assert fns.count("default/f") == 2
    finally:
        await store.close()


# -- age, throttles, reserved concurrency ---------------------------------------------------------


async def test_an_event_older_than_its_maximum_age_is_not_run(store, dest):
    endpoint, read = dest
    fns = Functions()
    cfg = {"default/f": EventInvokeConfig(maximum_event_age_seconds=60, on_failure=endpoint)}
    old = QueuedEvent(
        id=str(uuid.uuid4()), function="default/f", payload=b'"x"', enqueued_at=time.time() - 120
    )
    await store.enqueue(old)
    async with dispatcher(store, fns, cfg) as d:
        [rec] = await wait_until(read)
        await wait_until(lambda: d.in_flight == 0)
    check_record_shape(rec, request_id=old.id, name="f", condition="EventAgeExceeded", count=0, payload="x")
    assert fns.calls == []
    assert "responsePayload" not in rec


async def test_throttled_until_the_age_limit_then_event_age_exceeded(store, dest):
    endpoint, read = dest
    fns = Functions()
    fns.script["default/busy"] = ["throttle"]
    cfg = {"default/busy": EventInvokeConfig(maximum_event_age_seconds=1.0, on_failure=endpoint)}
    async with dispatcher(store, fns, cfg) as d:
        ev = await d.enqueue("default/busy", b"{}")
        [rec] = await wait_until(read)
        await wait_until(lambda: d.in_flight == 0)
    check_record_shape(rec, request_id=ev.id, name="busy", condition="EventAgeExceeded", count=0, payload={})
    assert rec["responseContext"]["statusCode"] == 429
    assert rec["responsePayload"]["errorType"] == "TooManyRequestsException"
    assert fns.count("default/busy") >= 2  # it was retried, not failed on the first throttle
    assert d.stats["throttled"] == fns.count("default/busy")
    assert await store.pending_count() == 0


async def test_throttled_events_wait_and_succeed_when_capacity_frees(store, dest):
    endpoint, read = dest
    fns = Functions()
    fns.script["default/capped"] = ["throttle", "throttle", "throttle", "ok"]
    cfg = {
        "default/capped": EventInvokeConfig(
            reserved_concurrency=1, on_success=endpoint, maximum_retry_attempts=0
        )
    }
    async with dispatcher(store, fns, cfg) as d:
        ev = await d.enqueue("default/capped", b'{"a": 1}')
        [rec] = await wait_until(read)
    # throttles are not retries: maximumRetryAttempts 0 still allows them, and they are not invocations
    check_record_shape(rec, request_id=ev.id, name="capped", condition="Success", count=1, payload={"a": 1})
    assert fns.count("default/capped") == 4
    assert d.stats["throttled"] == 3


async def test_throttle_backoff_doubles_from_the_minimum_up_to_the_maximum(make_store):
    clock = Clock()
    store = make_store(clock)
    fns = Functions()
    fns.script["default/f"] = ["throttle"]
    cfg = {"default/f": EventInvokeConfig()}
    seen = []
    try:
        async with dispatcher(store, fns, cfg, clock, throttle_min_seconds=1, throttle_max_seconds=5) as d:
            ev = await d.enqueue("default/f", b"{}")
            for n in range(1, 6):
                await wait_until(lambda n=n: fns.count("default/f") == n)
                stored = await wait_until(lambda n=n: _throttles(store, ev.id, n))
                seen.append(round(stored.next_attempt_at - clock(), 3))
                clock.advance(stored.next_attempt_at - clock())
        assert seen == [1, 2, 4, 5, 5]
        assert stored.attempts == 0
    finally:
        await store.close()


async def _throttles(store, id, n):
    e = await store.get(id)
    return e if e is not None and e.throttles == n else None


async def test_reserved_concurrency_zero_goes_straight_to_failure(store, dest):
    endpoint, read = dest
    fns = Functions()
    cfg = {"default/off": EventInvokeConfig(reserved_concurrency=0, on_failure=endpoint)}
    async with dispatcher(store, fns, cfg) as d:
        ev = await d.enqueue("default/off", b"{}")
        [rec] = await wait_until(read)
        await wait_until(lambda: d.in_flight == 0)
    check_record_shape(rec, request_id=ev.id, name="off", condition="RetriesExhausted", count=0, payload={})
    assert rec["responseContext"]["statusCode"] == 429
    assert fns.calls == []
    assert d.stats["throttled"] == 1 and await store.pending_count() == 0


async def test_system_errors_are_retried_like_throttles(store, dest):
    endpoint, read = dest
    fns = Functions()
    fns.script["default/f"] = ["crash", "crash", "ok"]
    cfg = {"default/f": EventInvokeConfig(maximum_retry_attempts=0, on_success=endpoint)}
    async with dispatcher(store, fns, cfg) as d:
        await d.enqueue("default/f", b"{}")
        [rec] = await wait_until(read)
    assert rec["requestContext"]["condition"] == "Success"
    assert d.stats["system_errors"] == 2


# -- destinations ----------------------------------------------------------------------------------


async def test_function_destination_receives_the_record_as_an_async_event(store):
    fns = Functions()
    cfg = {
        "team/f": EventInvokeConfig(
            maximum_retry_attempts=0, on_failure=Endpoint.model_validate({"function": {"name": "dlq"}})
        ),
        "team/dlq": EventInvokeConfig(),
    }
    async with dispatcher(store, fns, cfg) as d:
        ev = await d.enqueue("team/f", b'{"k": "v"}')
        fns.script["team/f"] = ["error"]
        await wait_until(lambda: fns.count("team/dlq") == 1)
        await wait_until(lambda: d.in_flight == 0)
    [(_, payload)] = [c for c in fns.calls if c[0] == "team/dlq"]
    rec = json.loads(payload)
    check_record_shape(
        rec, request_id=ev.id, name="f", condition="RetriesExhausted", count=1, payload={"k": "v"}
    )
    assert d.stats["received"] == 2  # the original and the record
    assert await store.pending_count() == 0
    # the record event's id is derived from the source event: delivering twice enqueues once
    assert (
        await store.enqueue(
            QueuedEvent(id=record_event_id(ev.id, "onFailure"), function="team/dlq", payload=b"")
        )
        is True
    )


async def test_an_undeliverable_record_is_kept_and_delivered_later(make_store, tmp_path):
    server = brokers.server_for("redis", tmp_path / "late-redis")
    url = server.url  # nothing listens there yet
    store = make_store()
    fns = Functions()
    fns.script["default/f"] = ["error"]
    cfg = {
        "default/f": EventInvokeConfig(
            maximum_retry_attempts=0,
            on_failure=Endpoint.model_validate({"redis": {"url": url, "stream": "dlq"}}),
        )
    }
    try:
        async with dispatcher(store, fns, cfg) as d:
            ev = await d.enqueue("default/f", b'{"keep": true}')
            await wait_until(lambda: d.stats["destination_delivery_failures"] >= 2)
            assert await store.pending_count() == 1
            kept = await store.get(ev.id)
            assert kept is not None and json.loads(kept.pending_record)["destination"] == "onFailure"
            await server.astart()
            await wait_until(lambda: d.stats["delivered"] == 1, what="delivery after the broker came up")
            await wait_until(lambda: d.in_flight == 0)
        r = aioredis.Redis.from_url(url)
        [(_, fields)] = await r.xrange("dlq")
        await r.aclose()
        rec = json.loads(fields[b"body"])
        assert rec["requestContext"]["requestId"] == ev.id
        assert rec["requestPayload"] == {"keep": True}
        assert fns.count("default/f") == 1  # only the delivery was retried, never the function
        assert await store.pending_count() == 0
    finally:
        await store.close()
        server.close()


# -- scheduling, unknown functions, stop ------------------------------------------------------------


async def test_a_slow_function_does_not_hold_up_the_others(store):
    fns = Functions()
    fns.gates["default/slow"] = asyncio.Event()
    cfg = {"default/slow": EventInvokeConfig(), "default/fast": EventInvokeConfig()}
    async with dispatcher(store, fns, cfg, max_in_flight=8, defer_after_seconds=0.1, defer_seconds=0.1) as d:
        for i in range(20):
            await d.enqueue("default/slow", str(i).encode())
        await wait_until(lambda: fns.count("default/slow") >= 6)
        await d.enqueue("default/fast", b"1")
        await wait_until(lambda: fns.count("default/fast") == 1, what="the fast function to run")
        assert d.stats["succeeded"] == 1  # the fast one; every slow one is still blocked
        assert fns.count("default/slow") <= 6  # per-function share of 8 slots
        fns.gates["default/slow"].set()
        await wait_until(lambda: d.stats["succeeded"] == 21)
    assert Counter(f for f, _ in fns.calls) == {"default/slow": 20, "default/fast": 1}


async def test_the_next_events_run_while_the_outcomes_of_the_last_are_written(store):
    """A run slot is held while the handler runs, not while its outcome travels to the store: with
    one slot, more events run while the first ones' completions are still being written; those
    events waiting on their writes get their own allowance (twice the held limit), no more."""
    written = asyncio.Event()
    complete = store.complete

    async def slow_complete(id: str) -> None:
        await written.wait()
        await complete(id)

    store.complete = slow_complete
    fns = Functions()
    async with dispatcher(store, fns, {"default/f": EventInvokeConfig()}, max_in_flight=1) as d:
        for i in range(6):
            await d.enqueue("default/f", f"{i}".encode())
        await wait_until(lambda: len(fns.calls) == 4, what="four handlers, before any completion")
        assert d.in_flight == 4  # held (leases renewed) until their completions land
        await asyncio.sleep(0.3)  # several claim rounds: nothing more is taken meanwhile
        assert len(fns.calls) == 4 and await store.pending_count() == 6
        written.set()
        await wait_until(lambda: d.in_flight == 0 and d.stats["succeeded"] == 6)
    assert await store.pending_count() == 0


async def test_unknown_function_is_retried_then_dropped_after_the_grace(store):
    dropped = []

    class Metrics:
        def async_event_dropped(self, fn, reason):
            dropped.append((fn, reason))

    fns = Functions()
    async with dispatcher(store, fns, {}, metrics=Metrics(), not_found_grace_seconds=0.5) as d:
        await d.enqueue("default/ghost", b"{}")
        await wait_until(lambda: dropped)
        await wait_until(lambda: d.in_flight == 0)
    assert dropped == [("default/ghost", "FunctionNotFound")]
    assert d.stats["not_found"] >= 2  # it waited for the function to appear first
    assert fns.calls == []
    assert await store.pending_count() == 0


async def test_a_function_that_appears_late_still_gets_its_event(store):
    fns = Functions()
    cfg: dict = {}
    async with dispatcher(store, fns, cfg) as d:
        await d.enqueue("default/late", b"{}")
        await wait_until(lambda: d.stats["not_found"] >= 1)
        cfg["default/late"] = EventInvokeConfig()
        await wait_until(lambda: d.stats["succeeded"] == 1)


async def test_stop_hands_in_flight_events_back(make_store):
    store = make_store()
    fns = Functions()
    fns.gates["default/f"] = asyncio.Event()
    cfg = {"default/f": EventInvokeConfig()}
    d = dispatcher(store, fns, cfg, lease_seconds=3600)
    await d.start()
    ev = await d.enqueue("default/f", b"{}")
    await wait_until(lambda: fns.count("default/f") == 1)
    await d.stop(drain_seconds=0.1)
    # released at once, not after the hour-long lease
    [back] = await store.claim_due(10, 60)
    assert back.id == ev.id
    await store.reschedule(back.id, time.time(), 0, None)
    fns.gates["default/f"].set()
    async with dispatcher(store, fns, cfg) as d2:
        await wait_until(lambda: d2.stats["succeeded"] == 1)
    assert await store.pending_count() == 0
    await store.close()


async def test_metrics_hooks_and_gateway_adapter(store):
    calls = []

    class Metrics:
        def async_event_received(self, fn):
            calls.append(("received", fn))

        def async_event_age(self, fn, seconds):
            calls.append(("age", fn, seconds >= 0))

        def async_event_dropped(self, fn, reason):
            calls.append(("dropped", fn, reason))

    class FunctionConfig:  # the gateway's shape: a key
        key = "default/f"

    seen_ids = []

    async def invoker(fn, payload, request_id=None):
        seen_ids.append(request_id)
        body = b'{"errorMessage": "no"}'
        return InvocationResult(request_id, body, function_error="Unhandled")

    cfg = {"default/f": EventInvokeConfig(maximum_retry_attempts=0)}
    async with AsyncDispatcher(store, invoker, cfg.get, metrics=Metrics(), **FAST) as d:
        await d.enqueue("default/f", b"{}")
        await d.gateway_queue().enqueue(FunctionConfig(), "rid-from-gateway", b"{}")
        await wait_until(lambda: d.stats["RetriesExhausted"] == 2)
    assert sorted(seen_ids)[-1] == "rid-from-gateway"  # the request id reaches the function
    assert calls.count(("received", "default/f")) == 1  # the gateway counts its own
    assert calls.count(("age", "default/f", True)) == 2
    assert calls.count(("dropped", "default/f", "RetriesExhausted")) == 2


def test_config_from_a_function_manifest():
    from lamina.api import Function

    fn = Function.model_validate(
        {
            "apiVersion": "lamina.dev/v1alpha1",
            "kind": "Function",
            "metadata": {"name": "f", "namespace": "default"},
            "spec": {
                "handler": "index.handler",
                "code": {"inline": "def handler(e, c): return e"},
                "reservedConcurrency": 3,
                "async": {
                    "maximumRetryAttempts": 1,
                    "maximumEventAgeSeconds": 120,
                    "onFailure": {"redis": {"url": "redis://r:6379/0", "stream": "dlq"}},
                    "onSuccess": {"function": {"name": "next"}},
                },
            },
        }
    )
    cfg = EventInvokeConfig.from_async_config(fn.spec.async_, fn.spec.reserved_concurrency)
    assert cfg == EventInvokeConfig(
        maximum_retry_attempts=1,
        maximum_event_age_seconds=120,
        on_success=Endpoint.model_validate({"function": {"name": "next"}}),
        on_failure=Endpoint.model_validate({"redis": {"url": "redis://r:6379/0", "stream": "dlq"}}),
        reserved_concurrency=3,
    )
    assert EventInvokeConfig.from_async_config(None, 2) == EventInvokeConfig(reserved_concurrency=2)
