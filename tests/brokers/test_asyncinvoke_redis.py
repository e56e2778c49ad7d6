"""The async queue on real brokers: Redis as the cluster store (crashes of Redis and of dispatchers,
several dispatchers sharing one queue) and records delivered to Redis, NATS and RabbitMQ."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import uuid
from collections import Counter

import pytest
import redis.asyncio as aioredis

from lamina.api import Endpoint
from lamina.asyncinvoke import AsyncDispatcher, EventInvokeConfig
from lamina.asyncinvoke.redis_store import RedisEventStore
from lamina.asyncinvoke.store import QueuedEvent
from lamina_runtime.protocol import InvocationResult

from .conftest import ROOT, Kit, eventually

pytestmark = pytest.mark.brokers

FAST = dict(poll_interval=0.05, retry_base_seconds=0.05, throttle_min_seconds=0.02, throttle_max_seconds=0.1)


def prefix() -> str:
    return f"{{aq-{uuid.uuid4().hex[:8]}}}"


class Echo:
    def __init__(self) -> None:
        self.calls: Counter[bytes] = Counter()

    async def __call__(self, fn: str, payload: bytes, request_id: str | None = None) -> InvocationResult:
        self.calls[payload] += 1
        return InvocationResult(str(uuid.uuid4()), payload)


async def test_accepted_events_survive_a_sigkill_of_redis(private_server):
    server = private_server("redis")
    admin = aioredis.Redis.from_url(server.url)
    await admin.config_set("appendfsync", "always")
    await admin.aclose()
    p = prefix()
    store = RedisEventStore(server.url, prefix=p)
    events = [QueuedEvent.new("default/f", f"{i}".encode()) for i in range(200)]
    for e in events:
        assert await store.enqueue(e)
    leased = await store.claim_due(50, 0.5)  # some are in flight when Redis dies
    assert len(leased) == 50
    await store.close()

    await server.astop(kill=True)
    await server.astart()

    store = RedisEventStore(server.url, prefix=p)
    try:
        assert await store.pending_count() == 200
        got: list[QueuedEvent] = []

        async def all_claimed():
            got.extend(await store.claim_due(200 - len(got), 60))
            return len(got) == 200

        await eventually(all_claimed, limit=30, what="every event claimable again")
        assert sorted(int(e.payload) for e in got) == list(range(200))
    finally:
        await store.close()


_DISPATCHER = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, sys.argv[1])
    from lamina.asyncinvoke import AsyncDispatcher, EventInvokeConfig
    from lamina.asyncinvoke.redis_store import RedisEventStore

    async def main(url, prefix, n):
        entered = 0

        async def hang(fn, payload, request_id=None):
            nonlocal entered
            entered += 1
            if entered == n:
                print("all in flight", flush=True)
            await asyncio.Event().wait()

        store = RedisEventStore(url, prefix=prefix, consumer="doomed")
        d = AsyncDispatcher(store, hang, lambda k: EventInvokeConfig(), lease_seconds=2, poll_interval=0.05)
        await d.start()
        await asyncio.Event().wait()

    asyncio.run(main(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    """
)


async def test_events_of_a_killed_dispatcher_run_elsewhere_after_the_lease(redis_server):
    p = prefix()
    n = 10
    store = RedisEventStore(redis_server.url, prefix=p, consumer="survivor")
    stream = f"ok-{uuid.uuid4().hex[:8]}"
    cfg = EventInvokeConfig(
        on_success=Endpoint.model_validate({"redis": {"url": redis_server.url, "stream": stream}})
    )
    fns = Echo()
    d = AsyncDispatcher(store, fns, lambda k: cfg, lease_seconds=2, **FAST)
    ids = [(await d.enqueue("default/f", f'{{"i": {i}}}'.encode())).id for i in range(n)]

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _DISPATCHER, str(ROOT), redis_server.url, p, str(n),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line.strip() == b"all in flight"
    finally:
        proc.kill()
        await proc.wait()
    assert await store.pending_count() == n  # all leased by the dead process, none lost

    async with d:
        await eventually(lambda: d.stats["delivered"] == n, limit=60, what="every event run by the survivor")
    r = aioredis.Redis.from_url(redis_server.url)
    records = [json.loads(f[b"body"]) for _, f in await r.xrange(stream)]
    await r.aclose()
    assert sorted(rec["requestContext"]["requestId"] for rec in records) == sorted(ids)
    assert sum(fns.calls.values()) == n
    assert await store.pending_count() == 0
    await store.close()


async def test_two_dispatchers_share_one_queue_without_running_an_event_twice(redis_server):
    p = prefix()
    stores = [RedisEventStore(redis_server.url, prefix=p, consumer=c) for c in ("a", "b")]
    fns = Echo()
    ds = [AsyncDispatcher(s, fns, lambda k: EventInvokeConfig(), max_in_flight=8, **FAST) for s in stores]
    n = 300
    for d in ds:
        await d.start()
    try:
        for i in range(n):
            await ds[i % 2].enqueue("default/f", f"{i}".encode())
        await eventually(lambda: sum(fns.calls.values()) >= n, limit=60, what="every event run")
        await eventually(lambda: all(d.in_flight == 0 for d in ds), limit=30)
    finally:
        for d in ds:
            await d.stop()
    assert set(fns.calls) == {f"{i}".encode() for i in range(n)}
    assert max(fns.calls.values()) == 1
    assert all(d.stats["succeeded"] > 0 for d in ds)  # both took a share
    assert await stores[0].pending_count() == 0
    for s in stores:
        await s.close()


async def test_on_failure_record_reaches_each_broker_kind(kit: Kit):
    store = RedisEventStore(kit.url, prefix=prefix()) if kit.kind == "redis" else None
    if store is None:
        import tempfile

        from lamina.asyncinvoke.sqlite_store import SqliteEventStore

        store = SqliteEventStore(tempfile.mkdtemp(prefix="aq-"))
    dlq = kit.name("async-dlq")
    cfg = EventInvokeConfig(maximum_retry_attempts=1, on_failure=kit.endpoint(dlq))

    async def failing(fn, payload, request_id=None):
        return InvocationResult(
            "r", b'{"errorMessage": "nope", "errorType": "KeyError"}', function_error="Unhandled"
        )

    try:
        async with AsyncDispatcher(store, failing, lambda k: cfg, **FAST) as d:
            ev = await d.enqueue("shop/charge", b'{"amount": 5}')
            await eventually(lambda: d.stats["delivered"] == 1, limit=60, what="the record delivered")
        [rec] = await kit.dead_letters(dlq)
    finally:
        await store.close()
    assert rec["requestContext"]["requestId"] == ev.id
    assert rec["requestContext"]["condition"] == "RetriesExhausted"
    assert rec["requestContext"]["approximateInvokeCount"] == 2
    arn = rec["requestContext"]["functionArn"]
    assert arn == "arn:aws:lambda:us-east-1:000000000000:function:charge:$LATEST"
    assert rec["requestPayload"] == {"amount": 5}
    assert rec["responsePayload"] == {"errorMessage": "nope", "errorType": "KeyError"}


async def test_a_redis_restart_mid_stream_loses_nothing(private_server):
    server = private_server("redis")
    store = RedisEventStore(server.url, prefix=prefix())
    fns = Echo()
    gate = asyncio.Event()

    async def slow(fn, payload, request_id=None):
        if int(payload) >= 10:
            await gate.wait()
        return await fns(fn, payload)

    n = 40
    d = AsyncDispatcher(store, slow, lambda k: EventInvokeConfig(), max_in_flight=4, lease_seconds=2, **FAST)
    async with d:
        for i in range(n):
            await d.enqueue("default/f", f"{i}".encode())
        await eventually(lambda: len(fns.calls) >= 10, limit=30, what="the first events")
        await server.arestart(kill=True)
        gate.set()
        await eventually(lambda: len(fns.calls) == n, limit=90, what="every event after the restart")
        await eventually(lambda: d.in_flight == 0, limit=60)

        async def drained():
            try:
                return await store.pending_count() == 0
            except Exception:
                return False

        await eventually(drained, limit=60, what="the queue to drain")
    assert set(fns.calls) == {f"{i}".encode() for i in range(n)}  # at least once each
    await store.close()


async def test_scripts_the_server_forgot_are_loaded_again(redis_server):
    """The store sends its scripts by digest (no SCRIPT EXISTS round trip per pipeline): a Redis that
    lost them (a restart without the cache, SCRIPT FLUSH) answers NOSCRIPT, and the store loads and
    runs them rather than failing the writes."""
    store = RedisEventStore(redis_server.url, prefix=prefix())
    admin = aioredis.Redis.from_url(redis_server.url)
    try:
        first = QueuedEvent.new("default/f", b"before")
        assert await store.enqueue(first)
        await admin.script_flush()
        events = [QueuedEvent.new("default/f", f"{i}".encode()) for i in range(20)]
        assert all(await asyncio.gather(*(store.enqueue(e) for e in events)))  # one pipeline
        await admin.script_flush()
        claimed = await store.claim_due(100, 30)
        assert {e.id for e in claimed} == {first.id} | {e.id for e in events}
        await admin.script_flush()
        await asyncio.gather(*(store.complete(e.id) for e in claimed))
        assert await store.pending_count() == 0
        assert await store.get(first.id) is None
    finally:
        await admin.aclose()
        await store.close()
