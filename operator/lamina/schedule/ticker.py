"""Turns a schedule into calls, once per tick, across restarts and replicas.

Each loop turn looks at the ticks that fell due since the last one handled and
fires only the newest of them, and only if it is younger than the grace window:
after downtime a schedule catches up with one call, not a burst. A tick is
fired by whoever claims it in the shared :class:`TickStore` first.

``now`` and ``sleep`` are injectable so tests can drive the loop through
hours of schedule without waiting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from lamina.schedule.expressions import Schedule
from lamina.schedule.stores import TickStore

log = logging.getLogger(__name__)

Fire = Callable[[datetime], Awaitable[None]]

# Sleep in bounded steps so a wall-clock jump (NTP, suspend) is noticed soon.
MAX_SLEEP_SECONDS = 60.0


def utc_now() -> datetime:
    return datetime.now(UTC)


class ScheduleTicker:
    """Fires ``fire(tick_time)`` for each tick of ``schedule``; ``key`` names it in the store."""

    def __init__(
        self,
        key: str,
        schedule: Schedule,
        *,
        anchor: datetime | None = None,
        grace: timedelta = timedelta(minutes=5),
        now: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if grace <= timedelta(0):
            raise ValueError(f"grace must be positive (got {grace}); a tick is fired only inside it")
        self.key = key
        self.schedule = schedule
        self.anchor = anchor
        self.grace = grace
        self._now = now
        self._sleep = sleep

    async def run(self, fire: Fire, store: TickStore) -> None:
        """Loop until cancelled, or until the schedule has no further fire time."""
        now = self._now()
        last = await store.last_fired(self.key)
        # Never fired: ticks before start-up belong to nobody. Fired before: the
        # ticks missed while down are considered (within the grace window).
        cursor = now if last is None else min(last, now)
        missed = self.schedule.next_after(cursor, self.anchor)
        if missed is not None and missed <= now - self.grace:
            log.warning(
                "schedule %s: ticks since %s fell outside the %s grace window and are skipped",
                self.key,
                missed.isoformat(),
                self.grace,
            )
        while True:
            now = self._now()
            due = self._latest_due(cursor, now)
            if due is not None:
                await self._fire_once(due, fire, store)
                cursor = due
                continue
            upcoming = self.schedule.next_after(max(cursor, now), self.anchor)
            if upcoming is None:
                return
            await self._sleep(min(MAX_SLEEP_SECONDS, (upcoming - now).total_seconds()))

    def _latest_due(self, cursor: datetime, now: datetime) -> datetime | None:
        """The newest tick in ``(cursor, now]`` that is still inside the grace window."""
        window_start = max(cursor, now - self.grace)
        latest = None
        for tick in self.schedule.fires_between(window_start, now, self.anchor):
            latest = tick
        return latest

    async def _fire_once(self, tick: datetime, fire: Fire, store: TickStore) -> None:
        """Claim the tick and fire it. Stopped meanwhile (cancelled), the ticker first finishes what
        it began: a tick claimed is nobody else's to fire, so a claim without its fire would lose
        the tick (both are one store write each)."""
        work = asyncio.ensure_future(self._claim_and_fire(tick, fire, store))
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            await work
            raise

    async def _claim_and_fire(self, tick: datetime, fire: Fire, store: TickStore) -> None:
        if not await store.claim(self.key, tick):
            return
        try:
            await fire(tick)
        except Exception:
            # The tick stays claimed: a failing target must not turn into a retry
            # storm here; retries belong to the asynchronous invocation queue.
            log.exception("schedule %s: firing the tick of %s failed", self.key, tick.isoformat())
