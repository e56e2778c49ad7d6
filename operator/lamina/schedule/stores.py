"""Where tickers record which ticks were fired.

``claim`` is the single point of agreement between replicas (and between a
worker and its restarted self): whoever claims a tick fires it, everyone else
skips it, so each tick fires at most once.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from lamina.sqlite_wal import open_wal

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schedule_ticks (
    key       TEXT NOT NULL,
    fire_time INTEGER NOT NULL,
    PRIMARY KEY (key, fire_time)
);
"""


class TickStore(Protocol):
    """Durable-ish record of claimed ticks, keyed by schedule."""

    async def last_fired(self, key: str) -> datetime | None:
        """The latest claimed fire time of ``key`` (UTC), None if it never fired."""
        ...

    async def claim(self, key: str, fire_time: datetime) -> bool:
        """Atomically claim one tick; True only for the first caller."""
        ...


def to_micros(dt: datetime) -> int:
    """Integer microseconds since the epoch: exact, and ordered like the instants."""
    return (dt.astimezone(UTC) - EPOCH) // timedelta(microseconds=1)


def from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


class MemoryTickStore:
    """Per-process store: enough for ``lamina local`` and for tickers sharing one process."""

    def __init__(self) -> None:
        self._claimed: dict[str, set[int]] = {}

    async def last_fired(self, key: str) -> datetime | None:
        claimed = self._claimed.get(key)
        return from_micros(max(claimed)) if claimed else None

    async def claim(self, key: str, fire_time: datetime) -> bool:
        claimed = self._claimed.setdefault(key, set())
        micros = to_micros(fire_time)
        if micros in claimed:
            return False
        claimed.add(micros)
        return True


class SqliteTickStore:
    """A file shared by the processes of one machine; the primary key makes claims atomic.

    One connection per store, used from worker threads one call at a time, so
    the event loop never blocks on the file. Claims older than ``retention`` are
    pruned: tickers only claim ticks inside their grace window, so old rows can
    no longer be contended.
    """

    def __init__(self, path: str | Path, retention: timedelta = timedelta(days=7)) -> None:
        self._path = str(path)
        self._retention_micros = retention // timedelta(microseconds=1)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            # WAL + NORMAL survives process crashes; only a power loss may drop the
            # newest claims, which at worst repeats a tick.
            self._conn = open_wal(self._path, _SCHEMA, synchronous="NORMAL", check_same_thread=False)
        return self._conn

    def _last_fired(self, key: str) -> datetime | None:
        with self._lock:
            query = "SELECT MAX(fire_time) FROM schedule_ticks WHERE key = ?"
            row = self._connection().execute(query, (key,)).fetchone()
        return None if row[0] is None else from_micros(row[0])

    def _claim(self, key: str, fire_time: datetime) -> bool:
        micros = to_micros(fire_time)
        with self._lock:
            conn = self._connection()
            cursor = conn.execute(
                "INSERT OR IGNORE INTO schedule_ticks (key, fire_time) VALUES (?, ?)", (key, micros)
            )
            won = cursor.rowcount == 1
            if won:
                horizon = micros - self._retention_micros
                conn.execute("DELETE FROM schedule_ticks WHERE key = ? AND fire_time < ?", (key, horizon))
        return won

    def _close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    async def last_fired(self, key: str) -> datetime | None:
        return await asyncio.to_thread(self._last_fired, key)

    async def claim(self, key: str, fire_time: datetime) -> bool:
        return await asyncio.to_thread(self._claim, key, fire_time)

    async def close(self) -> None:
        await asyncio.to_thread(self._close)
