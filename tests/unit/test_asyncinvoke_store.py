"""The AsyncEventStore contract, run against the embedded sqlite store and the Redis Streams store."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from lamina.asyncinvoke.redis_store import RedisEventStore
from lamina.asyncinvoke.sqlite_store import SqliteEventStore
from lamina.asyncinvoke.store import QueuedEvent

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "redis"])
async def store(request, tmp_path):
    if request.param == "sqlite":
        s = SqliteEventStore(tmp_path / "state")
    else:
        url = request.getfixturevalue("redis_url")
        s = RedisEventStore(url, prefix=f"{{t-{uuid.uuid4().hex[:8]}}}")
    yield s
    await s.close()


def ev(payload: bytes = b'{"n": 1}', fn: str = "default/hello", **kw) -> QueuedEvent:
    return QueuedEvent.new(fn, payload, **kw)


async def claim_until(store, want: int, lease: float, within: float = 20.0) -> list[QueuedEvent]:
    got: list[QueuedEvent] = []
    deadline = time.monotonic() + within
    while len(got) < want and time.monotonic() < deadline:
        got += await store.claim_due(want - len(got), lease)
        if len(got) < want:
            await asyncio.sleep(0.05)
    return got


async def test_enqueue_then_claim_returns_the_event_intact(store):
    payload = bytes(range(256)) + b"\x00tail"
    e = ev(payload, fn="team-a/resize")
    e.last_error = '{"statusCode": 200}'
    assert await store.enqueue(e) is True
    assert await store.pending_count() == 1
    [got] = await store.claim_due(10, 30)
    assert got.id == e.id
    assert got.function == "team-a/resize"
    assert got.payload == payload
    assert got.enqueued_at == pytest.approx(e.enqueued_at)
    assert (got.attempts, got.throttles, got.pending_record) == (0, 0, None)
    assert got.last_error == '{"statusCode": 200}'
    assert got.trace is None


async def test_the_callers_trace_context_is_kept_with_the_event(store):
    trace = '{"traceId": "Root=1-6749f000-0123456789abcdef01234567;Lineage=1a2b3c4d:3"}'
    e = ev(trace=trace)
    assert await store.enqueue(e) is True
    [got] = await store.claim_due(10, 30)
    assert got.trace == trace


async def test_a_queue_written_before_events_carried_a_trace_opens_and_keeps_working(tmp_path):
    """An existing local-mode state directory: the table gets its trace column on open."""
    import sqlite3

    state = tmp_path / "state"
    state.mkdir()
    old = sqlite3.connect(state / "async-events.sqlite3")
    old.executescript(
        "CREATE TABLE async_events (id TEXT PRIMARY KEY, function TEXT NOT NULL, payload BLOB NOT NULL,"
        " enqueued_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, throttles INTEGER NOT NULL"
        " DEFAULT 0, next_attempt_at REAL NOT NULL, last_error TEXT, pending_record TEXT,"
        " visible_at REAL NOT NULL, claims INTEGER NOT NULL DEFAULT 0);"
        "INSERT INTO async_events VALUES ('old', 'default/f', x'7b7d', 1, 0, 0, 1, NULL, NULL, 1, 0);"
    )
    old.commit()
    old.close()
    store = SqliteEventStore(state)
    try:
        await store.enqueue(ev(trace='{"traceId": "Root=1-a-b"}'))
        got = {e.id: e for e in await claim_until(store, 2, 30)}
        assert got["old"].trace is None and got["old"].payload == b"{}"
        assert [e.trace for k, e in got.items() if k != "old"] == ['{"traceId": "Root=1-a-b"}']
    finally:
        await store.close()


async def test_enqueue_of_a_known_id_changes_nothing(store):
    e = ev(b"first")
    assert await store.enqueue(e)
    dup = QueuedEvent(id=e.id, function=e.function, payload=b"second")
    assert await store.enqueue(dup) is False
    assert await store.pending_count() == 1
    [got] = await store.claim_due(10, 30)
    assert got.payload == b"first"


async def test_a_claimed_event_is_not_handed_out_twice_while_leased(store):
    for i in range(3):
        await store.enqueue(ev(f"{i}".encode()))
    first = await store.claim_due(2, 60)
    second = await store.claim_due(10, 60)
    assert len(first) == 2 and len(second) == 1
    assert {e.id for e in first}.isdisjoint({e.id for e in second})
    assert await store.claim_due(10, 60) == []
    assert await store.pending_count() == 3  # leased events still count


async def test_an_expired_lease_redelivers_the_event(store):
    e = ev()
    await store.enqueue(e)
    [first] = await store.claim_due(1, 0.3)
    # never completed (the dispatcher "crashed"): it comes back once the lease is over
    again = await claim_until(store, 1, lease=30)
    assert [x.id for x in again] == [first.id]
    assert again[0].payload == e.payload


async def test_touch_keeps_the_lease(store):
    await store.enqueue(ev())
    [e] = await store.claim_due(1, 3)
    await asyncio.sleep(2)
    await store.touch([e.id], 3)
    await asyncio.sleep(2)  # 4 s after the claim, 2 s after the touch
    assert await store.claim_due(1, 3) == []


async def test_complete_removes_the_event_for_good(store):
    e = ev()
    await store.enqueue(e)
    [got] = await store.claim_due(1, 0.2)
    await store.complete(got.id)
    assert await store.pending_count() == 0
    assert await store.get(e.id) is None
    await asyncio.sleep(0.4)  # past the lease: nothing may come back
    assert await store.claim_due(10, 1) == []


async def test_reschedule_hides_the_event_until_its_time_and_keeps_the_counters(store):
    e = ev()
    await store.enqueue(e)
    [got] = await store.claim_due(1, 60)
    later = time.time() + 0.5
    await store.reschedule(got.id, later, 2, '{"functionError": "Unhandled"}', throttles=5)
    assert await store.claim_due(10, 60) == [] or time.time() >= later
    [again] = await claim_until(store, 1, lease=60)
    assert again.id == e.id
    assert (again.attempts, again.throttles) == (2, 5)
    assert again.last_error == '{"functionError": "Unhandled"}'
    assert again.next_attempt_at == pytest.approx(later)


async def test_reschedule_keeps_throttles_and_pending_record_unless_given(store):
    e = ev()
    await store.enqueue(e)
    [got] = await store.claim_due(1, 60)
    await store.reschedule(got.id, time.time() - 1, 1, None, throttles=3, pending_record='{"x": 1}')
    [got] = await claim_until(store, 1, lease=60)
    await store.reschedule(got.id, time.time() - 1, 2, None)
    [got] = await claim_until(store, 1, lease=60)
    assert (got.attempts, got.throttles, got.pending_record, got.last_error) == (2, 3, '{"x": 1}', None)


async def test_an_event_enqueued_for_later_waits(store):
    now = time.time()
    later = QueuedEvent(
        id=str(uuid.uuid4()), function="default/x", payload=b"l", enqueued_at=now, next_attempt_at=now + 3600
    )
    due = ev(b"d")
    await store.enqueue(later)
    await store.enqueue(due)
    got = await store.claim_due(10, 60)
    assert [g.id for g in got] == [due.id]
    assert await store.pending_count() == 2
    fetched = await store.get(later.id)
    assert fetched is not None and fetched.next_attempt_at == pytest.approx(now + 3600)


async def test_concurrent_enqueues_all_land(store):
    events = [ev(f"{i}".encode(), fn=f"ns/fn{i % 3}") for i in range(200)]
    results = await asyncio.gather(*(store.enqueue(e) for e in events))
    assert all(results)
    assert await store.pending_count() == 200
    got = await claim_until(store, 200, lease=60)
    assert sorted(g.id for g in got) == sorted(e.id for e in events)


_CHILD = textwrap.dedent(
    """
    import asyncio, os, sys
    from lamina.asyncinvoke.sqlite_store import SqliteEventStore
    from lamina.asyncinvoke.store import QueuedEvent

    async def main(state, n):
        store = SqliteEventStore(state)
        for i in range(n):
            await store.enqueue(QueuedEvent(id=f"ev-{i}", function="default/hello", payload=b"%d" % i))
            print(f"ev-{i}", flush=True)   # acknowledged to the caller, like the gateway's 202
        await store.claim_due(n // 2, 0.5)  # half of them are leased when the process dies
        print("claimed", flush=True)
        await asyncio.sleep(3600)          # killed here, without close()

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


def test_sqlite_store_keeps_every_acknowledged_event_across_sigkill(tmp_path):
    state = tmp_path / "state"
    n = 300
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(state), str(n)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    acked = []
    assert child.stdout is not None
    for line in child.stdout:
        line = line.strip()
        if line == "claimed":
            break
        acked.append(line)
    child.send_signal(signal.SIGKILL)
    child.wait(30)
    assert len(acked) == n

    async def check():
        store = SqliteEventStore(state)
        try:
            assert await store.pending_count() == n
            got = await claim_until(store, n, lease=60)  # the leased half comes back after its lease
            assert sorted(int(e.payload) for e in got) == list(range(n))
            assert {e.id for e in got} == set(acked)
        finally:
            await store.close()

    asyncio.run(check())


async def test_redis_store_lease_moves_to_another_consumer(redis_url):
    prefix = f"{{t-{uuid.uuid4().hex[:8]}}}"
    a = RedisEventStore(redis_url, prefix=prefix, consumer="a")
    b = RedisEventStore(redis_url, prefix=prefix, consumer="b")
    try:
        e = ev()
        await a.enqueue(e)
        [got] = await a.claim_due(1, 60)
        assert await b.claim_due(1, 60) == []  # leased to a
        await a.touch([got.id], 0.3)  # a's lease now ends soon, and a never finishes
        [taken] = await claim_until(b, 1, lease=0.3)
        assert taken.id == got.id
        await b.complete(taken.id)
        # a's late completion of an event b finished is harmless
        await a.complete(got.id)
        assert await a.pending_count() == 0
        await asyncio.sleep(0.5)
        assert await a.claim_due(10, 0.3) == []
    finally:
        await a.close()
        await b.close()


async def test_a_function_over_its_quota_is_refused_and_others_are_not(store):
    """issue 9: the queue of one function cannot grow without bound (nor starve the others)."""
    from lamina.asyncinvoke.errors import QueueFull

    store.max_per_function = 2
    first, second = ev(fn="team-a/busy"), ev(fn="team-a/busy:live")  # a qualifier counts for its function
    assert await store.enqueue(first) and await store.enqueue(second)
    with pytest.raises(QueueFull, match="team-a/busy is full"):
        await store.enqueue(ev(fn="team-a/busy"))
    assert await store.enqueue(first) is False  # a known id is still just known, not "full"
    assert await store.enqueue(ev(fn="team-a/quiet"))
    assert await store.pending_count() == 3
    await store.complete(first.id)
    assert await store.enqueue(ev(fn="team-a/busy"))
    with pytest.raises(QueueFull):
        await store.enqueue(ev(fn="team-a/busy:2"))


async def test_a_quota_holds_for_enqueues_that_arrive_together(store):
    """Concurrent enqueues share one script run on Redis: the quota is counted event by event in it."""
    from lamina.asyncinvoke.errors import QueueFull

    store.max_per_function = 3
    events = [ev(f"{i}".encode(), fn="team-a/busy") for i in range(5)] + [ev(fn="team-a/quiet")]
    results = await asyncio.gather(*(store.enqueue(e) for e in events), return_exceptions=True)
    assert sum(r is True for r in results[:5]) == 3
    assert sum(isinstance(r, QueueFull) for r in results[:5]) == 2
    assert results[5] is True
    got = await claim_until(store, 4, lease=60)
    assert len(got) == 4
    await asyncio.gather(*(store.complete(e.id) for e in got))
    # every completion gave its place back: the function may queue three again
    assert all(await asyncio.gather(*(store.enqueue(ev(fn="team-a/busy")) for _ in range(3))))


async def test_completions_of_one_event_that_arrive_together_count_it_once(store):
    from lamina.asyncinvoke.errors import QueueFull

    store.max_per_function = 2
    first, second = ev(fn="team-a/f"), ev(fn="team-a/f")
    assert await store.enqueue(first) and await store.enqueue(second)
    [got, _] = await store.claim_due(2, 60)
    await asyncio.gather(store.complete(got.id), store.complete(got.id), store.complete(got.id))
    assert await store.pending_count() == 1
    assert await store.get(got.id) is None
    # one place was given back, not three: a second new event is over the quota
    assert await store.enqueue(ev(fn="team-a/f"))
    with pytest.raises(QueueFull):
        await store.enqueue(ev(fn="team-a/f"))


async def test_redis_events_enqueued_together_are_due_at_once(redis_url):
    """A pipeline of enqueues puts every due event in the stream, none in the delayed set (which the
    next claim would have to move, at a cost to Redis and a delay to the event)."""
    import redis.asyncio as aioredis

    store = RedisEventStore(redis_url, prefix=f"{{t-{uuid.uuid4().hex[:8]}}}")
    r = aioredis.Redis.from_url(redis_url)
    try:
        assert all(await asyncio.gather(*(store.enqueue(ev(f"{i}".encode())) for i in range(50))))
        assert (await r.xlen(store.ready_key), await r.zcard(store.delayed_key)) == (50, 0)
    finally:
        await r.aclose()
        await store.close()
