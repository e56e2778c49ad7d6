"""How late a scheduled tick fires, and what a next-fire computation costs.

Fire delay: ``--schedules`` one-time ``at(...)`` schedules, due at whole seconds
2-6 s ahead, each run by two tickers ("replicas") sharing one tick store
(in-memory, then sqlite), on the real clock. The delay is the wall time at which ``fire`` runs
minus the tick's scheduled time; the claim in the store is part of it. Each tick
must fire exactly once, which the script checks.

Next-fire cost: mean time of ``Schedule.next_after`` for a few expressions.

Usage: python benchmarks/schedule_fire_delay.py [--schedules 50]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from _common import summary

from lamina.schedule import MemoryTickStore, ScheduleTicker, SqliteTickStore, TickStore, parse_schedule

EXPRESSIONS = [
    "rate(5 minutes)",
    "cron(0/15 * * * ? *)",
    "cron(0 18 ? * MON-FRI *)",
    "cron(0 9 ? * 2#1 *)",
    "cron(0 0 LW * ? *)",
    "cron(0 0 29 2 ? *)",
]


async def fire_delays(count: int, make_store: Callable[[], TickStore]) -> list[float]:
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    delays_ms: list[float] = []
    fired: list[str] = []

    def firer(key: str) -> Callable[[datetime], Awaitable[None]]:
        async def fire(tick: datetime) -> None:
            delays_ms.append((time.time() - tick.timestamp()) * 1000)
            fired.append(key)

        return fire

    tasks = []
    for i in range(count):
        due = (start + timedelta(seconds=i % 5)).strftime("%Y-%m-%dT%H:%M:%S")
        schedule = parse_schedule(f"at({due})")
        key = f"bench-{i}"
        for _replica in range(2):
            ticker = ScheduleTicker(key, schedule)
            tasks.append(asyncio.create_task(ticker.run(firer(key), make_store())))
    await asyncio.gather(*tasks)
    if sorted(fired) != sorted(f"bench-{i}" for i in range(count)):
        raise SystemExit(f"expected each of {count} ticks to fire exactly once, got {len(fired)} fires")
    return delays_ms


def next_after_cost(repeats: int = 2000) -> list[str]:
    lines = []
    start = datetime(2024, 1, 1, tzinfo=UTC)
    for expression in EXPRESSIONS:
        schedule = parse_schedule(expression, "America/New_York")
        cursor = start
        began = time.perf_counter()
        for _ in range(repeats):
            cursor = schedule.next_after(cursor) or start
        per_call_us = (time.perf_counter() - began) / repeats * 1e6
        lines.append(f"next_after {expression:34} {per_call_us:8.1f} us/call")
    return lines


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--schedules", type=int, default=50)
    args = parser.parse_args()
    shared = MemoryTickStore()
    delays = await fire_delays(args.schedules, lambda: shared)
    print(summary(f"fire delay, memory store ({args.schedules} ticks x2)", delays))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ticks.sqlite"
        delays = await fire_delays(args.schedules, lambda: SqliteTickStore(path))
    print(summary(f"fire delay, sqlite store ({args.schedules} ticks x2)", delays))
    for line in next_after_cost():
        print(line)


if __name__ == "__main__":
    asyncio.run(main())
