"""The ticker fires each tick once: in order, after restarts, and across replicas.

Time is a ``VirtualClock`` whose ``sleep`` parks the caller until the test moves
the clock to that sleeper's wake-up time. The test only advances once every
ticker is parked, so the sequence of fires is fully deterministic while the
ticker's own arithmetic (what to sleep, which tick is due) is what is tested.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lamina.schedule import MemoryTickStore, ScheduleTicker, SqliteTickStore, TickStore, parse_schedule

T0 = datetime(2024, 1, 1, 10, 0, 30, tzinfo=UTC)


def at(hh_mm: str, day: int = 1) -> datetime:
    hour, minute = map(int, hh_mm.split(":"))
    return datetime(2024, 1, day, hour, minute, tzinfo=UTC)


class VirtualClock:
    """A wall clock that moves only when the test wakes the earliest sleeper."""

    def __init__(self, start: datetime) -> None:
        self.time = start
        self._sleepers: list[tuple[datetime, asyncio.Future[None]]] = []
        self._parked = asyncio.Event()

    def now(self) -> datetime:
        return self.time

    async def sleep(self, seconds: float) -> None:
        assert seconds > 0, "the ticker must never busy-loop with zero sleeps"
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.time + timedelta(seconds=seconds), future))
        self._parked.set()
        await future

    async def until_parked(self, count: int) -> None:
        """Wait (bounded, as a hang guard) until ``count`` tasks sleep."""
        async with asyncio.timeout(30):
            while len(self._sleepers) < count:
                self._parked.clear()
                await self._parked.wait()

    def wake_earliest(self) -> None:
        wake_at = min(when for when, _ in self._sleepers)
        self.time = max(self.time, wake_at)
        due = [s for s in self._sleepers if s[0] <= wake_at]
        self._sleepers = [s for s in self._sleepers if s[0] > wake_at]
        for _, future in due:
            future.set_result(None)

    def jump(self, to: datetime) -> None:
        """Simulate downtime: no ticker is running while the clock moves."""
        self._sleepers.clear()
        self.time = to


class Recorder:
    """A ``fire`` callable that records (tick, clock time when fired, who fired)."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.fired: list[tuple[datetime, datetime, str]] = []

    def for_ticker(self, name: str) -> Callable[[datetime], Awaitable[None]]:
        async def fire(tick: datetime) -> None:
            self.fired.append((tick, self.clock.now(), name))

        return fire

    @property
    def ticks(self) -> list[datetime]:
        return [tick for tick, _, _ in self.fired]


async def drive(
    clock: VirtualClock, sleepers: int, done: Callable[[], bool], max_steps: int = 10_000
) -> None:
    """Advance the clock sleeper by sleeper until ``done()``."""
    for _ in range(max_steps):
        await clock.until_parked(sleepers)
        if done():
            return
        clock.wake_earliest()
    raise AssertionError("the tickers did not reach the expected state")


async def stop(*tasks: asyncio.Task[None]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def ticker(
    expression: str, clock: VirtualClock, key: str = "fn-schedule", **kwargs: object
) -> ScheduleTicker:
    return ScheduleTicker(key, parse_schedule(expression), now=clock.now, sleep=clock.sleep, **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- stores


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not on PATH; the Redis tick store is tested only against a live server")
    port = _free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(500):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"redis-server exited with {proc.returncode}")
                time.sleep(0.02)
        else:
            pytest.fail("redis-server did not answer PING")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


StoreFactory = Callable[[], TickStore]


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Makes handles on ONE shared store, as two processes or replicas would hold."""
    if request.param == "memory":
        shared = MemoryTickStore()
        yield lambda: shared
    elif request.param == "sqlite":
        path = tmp_path / "ticks.sqlite"
        opened: list[SqliteTickStore] = []

        def open_sqlite() -> TickStore:
            opened.append(SqliteTickStore(path))
            return opened[-1]

        yield open_sqlite
        for store in opened:
            await store.close()
    else:
        from lamina.schedule.redis_store import RedisTickStore

        url = request.getfixturevalue("redis_url")
        made: list[RedisTickStore] = []

        def make() -> TickStore:
            made.append(RedisTickStore.from_url(url))
            return made[-1]

        yield make
        for store in made:
            await store.close()


async def test_claim_succeeds_once_per_tick_and_key(store_factory: StoreFactory) -> None:
    one, two = store_factory(), store_factory()
    assert await one.claim("a", at("10:01"))
    assert not await two.claim("a", at("10:01"))
    assert not await one.claim("a", at("10:01"))
    assert await two.claim("a", at("10:02"))
    assert await one.claim("b", at("10:01"))


async def test_last_fired_is_the_latest_claim_in_any_order(store_factory: StoreFactory) -> None:
    one, two = store_factory(), store_factory()
    assert await one.last_fired("a") is None
    await one.claim("a", at("10:05"))
    await two.claim("a", at("10:03"))
    assert await two.last_fired("a") == at("10:05")
    assert await one.last_fired("b") is None


async def test_concurrent_claims_have_exactly_one_winner(store_factory: StoreFactory) -> None:
    stores = [store_factory() for _ in range(4)]
    results = await asyncio.gather(*(stores[i % 4].claim("race", at("10:01")) for i in range(20)))
    assert results.count(True) == 1


async def test_sqlite_claims_survive_a_new_store_on_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "ticks.sqlite"
    assert await SqliteTickStore(path).claim("a", at("10:01"))
    reopened = SqliteTickStore(path)
    assert await reopened.last_fired("a") == at("10:01")
    assert not await reopened.claim("a", at("10:01"))


async def test_sqlite_prunes_old_claims_but_keeps_the_latest(tmp_path: Path) -> None:
    store = SqliteTickStore(tmp_path / "ticks.sqlite", retention=timedelta(days=1))
    await store.claim("a", at("10:00", day=1))
    await store.claim("a", at("10:00", day=3))
    # The day-1 row was pruned, so claiming it again succeeds; the latest stays.
    assert await store.claim("a", at("10:00", day=1))
    assert await store.last_fired("a") == at("10:00", day=3)


# ---------------------------------------------------------------- ticker


async def test_fires_each_tick_once_in_order_when_due() -> None:
    clock = VirtualClock(T0)
    rec = Recorder(clock)
    task = asyncio.create_task(ticker("rate(1 minute)", clock).run(rec.for_ticker("a"), MemoryTickStore()))
    await drive(clock, 1, lambda: len(rec.fired) >= 4)
    await stop(task)
    # 10:00 lies before start-up and is not fired; each tick fires when the clock reaches it.
    assert rec.ticks == [at("10:01"), at("10:02"), at("10:03"), at("10:04")]
    assert all(tick == fired_at for tick, fired_at, _ in rec.fired)


async def test_sparse_cron_sleeps_through_the_gap_and_fires_on_time() -> None:
    clock = VirtualClock(T0)
    rec = Recorder(clock)
    task = asyncio.create_task(
        ticker("cron(0 0/6 * * ? *)", clock).run(rec.for_ticker("a"), MemoryTickStore())
    )
    await drive(clock, 1, lambda: len(rec.fired) >= 3)
    await stop(task)
    assert rec.ticks == [at("12:00"), at("18:00"), at("00:00", day=2)]
    assert all(tick == fired_at for tick, fired_at, _ in rec.fired)


async def test_restart_fires_only_the_newest_missed_tick(tmp_path: Path) -> None:
    path = tmp_path / "ticks.sqlite"
    clock = VirtualClock(T0)
    rec = Recorder(clock)
    first = asyncio.create_task(
        ticker("rate(1 minute)", clock).run(rec.for_ticker("a"), SqliteTickStore(path))
    )
    await drive(clock, 1, lambda: len(rec.fired) >= 2)
    await stop(first)
    clock.jump(at("10:05") + timedelta(seconds=30))  # down while 10:03, 10:04 and 10:05 passed

    second = asyncio.create_task(
        ticker("rate(1 minute)", clock).run(rec.for_ticker("b"), SqliteTickStore(path))
    )
    await drive(clock, 1, lambda: len(rec.fired) >= 4)
    await stop(second)
    assert rec.ticks == [at("10:01"), at("10:02"), at("10:05"), at("10:06")]
    assert rec.fired[2][1] == at("10:05") + timedelta(seconds=30)  # caught up right after start-up


@pytest.mark.parametrize(
    ("restart_at", "expected"),
    [
        ("11:03", ["11:00", "12:00"]),  # 11:00 missed 3 minutes ago: inside the 5-minute grace window
        ("11:07", ["12:00"]),  # 11:00 missed 7 minutes ago: too late, skipped
    ],
)
async def test_missed_tick_is_fired_only_within_grace(restart_at: str, expected: list[str]) -> None:
    store = MemoryTickStore()
    await store.claim("hourly", at("10:00"))
    clock = VirtualClock(at(restart_at))
    rec = Recorder(clock)
    task = asyncio.create_task(
        ticker("cron(0 * * * ? *)", clock, key="hourly").run(rec.for_ticker("a"), store)
    )
    await drive(clock, 1, lambda: len(rec.fired) >= len(expected))
    await stop(task)
    assert rec.ticks == [at(t) for t in expected]


async def test_grace_window_is_configurable() -> None:
    store = MemoryTickStore()
    await store.claim("hourly", at("10:00"))
    clock = VirtualClock(at("11:07"))
    rec = Recorder(clock)
    hourly = ticker("cron(0 * * * ? *)", clock, key="hourly", grace=timedelta(minutes=10))
    task = asyncio.create_task(hourly.run(rec.for_ticker("a"), store))
    await drive(clock, 1, lambda: len(rec.fired) >= 1)
    await stop(task)
    assert rec.ticks == [at("11:00")]


async def test_two_tickers_on_one_store_fire_each_tick_once(store_factory: StoreFactory) -> None:
    clock = VirtualClock(T0)
    rec = Recorder(clock)
    tasks = [
        asyncio.create_task(ticker("rate(1 minute)", clock).run(rec.for_ticker(name), store_factory()))
        for name in ("replica-1", "replica-2")
    ]
    await drive(clock, 2, lambda: len(rec.fired) >= 6)
    await stop(*tasks)
    assert rec.ticks == [at(f"10:0{m}") for m in range(1, 7)]


async def test_one_time_schedule_fires_once_and_run_returns() -> None:
    clock = VirtualClock(T0)
    rec = Recorder(clock)
    once = ScheduleTicker("once", parse_schedule("at(2024-01-01T10:30:00)"), now=clock.now, sleep=clock.sleep)
    store = MemoryTickStore()
    task = asyncio.create_task(once.run(rec.for_ticker("a"), store))
    while not task.done():
        await asyncio.wait([task, asyncio.create_task(clock.until_parked(1))], return_when="FIRST_COMPLETED")
        if not task.done():
            clock.wake_earliest()
    await task
    assert rec.ticks == [at("10:30")]
    # Restarted after it fired, the one-time schedule has nothing left to do.
    await ScheduleTicker("once", once.schedule, now=clock.now, sleep=clock.sleep).run(
        rec.for_ticker("b"), store
    )
    assert rec.ticks == [at("10:30")]


async def test_a_failing_target_does_not_stop_the_schedule() -> None:
    clock = VirtualClock(T0)
    attempts: list[datetime] = []

    async def flaky(tick: datetime) -> None:
        attempts.append(tick)
        if len(attempts) == 1:
            raise RuntimeError("target down")

    task = asyncio.create_task(ticker("rate(1 minute)", clock).run(flaky, MemoryTickStore()))
    await drive(clock, 1, lambda: len(attempts) >= 2)
    await stop(task)
    assert attempts == [at("10:01"), at("10:02")]


async def test_rate_ticker_uses_its_anchor() -> None:
    clock = VirtualClock(T0)
    rec = Recorder(clock)
    anchored = ticker("rate(15 minutes)", clock, anchor=at("09:07"))
    task = asyncio.create_task(anchored.run(rec.for_ticker("a"), MemoryTickStore()))
    await drive(clock, 1, lambda: len(rec.fired) >= 2)
    await stop(task)
    assert rec.ticks == [at("10:07"), at("10:22")]


def test_grace_must_be_positive() -> None:
    with pytest.raises(ValueError, match="grace must be positive"):
        ScheduleTicker("k", parse_schedule("rate(1 minute)"), grace=timedelta(0))


async def test_a_ticker_stopped_while_it_fires_a_claimed_tick_finishes_firing_it() -> None:
    """A tick claimed in the store is nobody else's to fire, so a ticker stopped (local mode or the
    mapping's worker on SIGTERM) between the claim and the end of the fire (the event's enqueue) must
    finish that fire before it stops: cancelled there, the tick was claimed and never fired."""
    clock = VirtualClock(T0)
    entered, release = asyncio.Event(), asyncio.Event()
    fired: list[datetime] = []

    async def enqueue(tick: datetime) -> None:
        entered.set()
        await release.wait()  # the enqueue's write, still in flight
        fired.append(tick)

    store = MemoryTickStore()
    task = asyncio.create_task(ticker("rate(1 minute)", clock).run(enqueue, store))
    await clock.until_parked(1)
    clock.wake_earliest()
    await asyncio.wait_for(entered.wait(), 30)
    task.cancel()
    await asyncio.sleep(0)  # the cancellation is delivered while the enqueue waits
    assert not task.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fired == [at("10:01")]
    assert await store.last_fired("fn-schedule") == at("10:01")
