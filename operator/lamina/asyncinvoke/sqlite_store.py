"""Embedded async-event store: one SQLite file under a state directory (local mode).

* WAL journal. ``enqueue`` commits with ``synchronous=FULL`` so the event is on disk (the WAL is
  fsynced) before the caller answers 202; it survives SIGKILL of the process and power loss.
  Claims, completions and reschedules commit with ``synchronous=NORMAL``: after a power loss one of
  them may be lost, which only means the event is delivered once more (at-least-once anyway).
* Every SQLite call runs on one dedicated thread that owns the only connection, so the event loop
  never blocks on disk. Concurrent enqueues are *group-committed*: the thread takes every enqueue
  waiting in its queue, writes them in one transaction and fsyncs once.
* A lease is a ``visible_at`` time in the future: claimed rows are invisible to ``claim_due`` until
  completed, rescheduled, or the lease runs out.
"""

from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from lamina.sqlite_wal import open_wal

from .errors import QueueFull, StoreError, base_function
from .store import QueuedEvent

_SCHEMA = """
CREATE TABLE IF NOT EXISTS async_events (
    id              TEXT PRIMARY KEY,
    function        TEXT NOT NULL,
    payload         BLOB NOT NULL,
    enqueued_at     REAL NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    throttles       INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error      TEXT,
    pending_record  TEXT,
    trace           TEXT,
    visible_at      REAL NOT NULL,
    claims          INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS async_events_visible ON async_events (visible_at);
CREATE INDEX IF NOT EXISTS async_events_function ON async_events (function);
"""
_COLUMNS = (
    "id, function, payload, enqueued_at, attempts, throttles, next_attempt_at, last_error, pending_record,"
    " trace"
)
_MAX_GROUP = 512
DEFAULT_FILENAME = "async-events.sqlite3"


def _row_to_event(row: tuple[Any, ...]) -> QueuedEvent:
    return QueuedEvent(
        id=row[0],
        function=row[1],
        payload=bytes(row[2]),
        enqueued_at=row[3],
        attempts=row[4],
        throttles=row[5],
        next_attempt_at=row[6],
        last_error=row[7],
        pending_record=row[8],
        trace=row[9],
    )


class _Op:
    __slots__ = ("args", "fn", "fut", "kind", "loop")

    def __init__(self, kind: str, fn: Callable[..., Any], args: tuple[Any, ...], loop, fut) -> None:
        self.kind, self.fn, self.args, self.loop, self.fut = kind, fn, args, loop, fut


class SqliteEventStore:
    """:class:`~lamina.asyncinvoke.store.AsyncEventStore` on an embedded SQLite database."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        max_per_function: int | None = None,
    ) -> None:
        p = Path(path)
        if p.is_dir() or not p.suffix:
            p.mkdir(parents=True, exist_ok=True, mode=0o700)
            p = p / DEFAULT_FILENAME
        else:
            p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = p
        self._clock = clock
        self.max_per_function = max_per_function
        self._ops: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()

    # -- thread side --------------------------------------------------------------------------
    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            if self._closed:
                raise StoreError("the async event store is closed")
            ready: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
            self._thread = threading.Thread(
                target=self._run, args=(ready,), name="lamina-async-sqlite", daemon=True
            )
            self._thread.start()
            err = ready.get()
            if err is not None:
                self._thread = None
                raise StoreError(f"cannot open {self.path}: {err}") from err

    def _connect(self) -> sqlite3.Connection:
        conn = open_wal(self.path, _SCHEMA, synchronous="FULL")
        columns = {row[1] for row in conn.execute("PRAGMA table_info(async_events)")}
        if "trace" not in columns:  # a queue written before events carried their trace context
            conn.execute("ALTER TABLE async_events ADD COLUMN trace TEXT")
        conn.execute("PRAGMA user_version=2")
        return conn

    def _run(self, ready: queue.SimpleQueue[BaseException | None]) -> None:
        try:
            conn = self._connect()
        except BaseException as e:
            ready.put(e)
            return
        ready.put(None)
        self._sync = "FULL"
        try:
            pending: list[_Op] = []
            while True:
                op = pending.pop(0) if pending else self._ops.get()
                if op is None:
                    break
                if op.kind == "enqueue":
                    group = [op]
                    while len(group) < _MAX_GROUP:
                        try:
                            nxt = self._ops.get_nowait()
                        except queue.Empty:
                            break
                        if nxt is not None and nxt.kind == "enqueue":
                            group.append(nxt)
                        else:
                            pending.append(nxt)  # type: ignore[arg-type]
                            break
                    self._run_enqueues(conn, group)
                else:
                    self._run_one(conn, op)
            for op in pending:  # close() raced with queued work: fail it rather than hang callers
                if op is not None:
                    self._resolve(op, exc=StoreError("store closed"))
        finally:
            conn.close()

    def _synchronous(self, conn: sqlite3.Connection, level: str) -> None:
        if self._sync != level:
            conn.execute(f"PRAGMA synchronous={level}")
            self._sync = level

    @staticmethod
    def _resolve(op: _Op, result: Any = None, exc: BaseException | None = None) -> None:
        def settle() -> None:
            if op.fut.done():
                return
            if exc is not None:
                op.fut.set_exception(exc)
            else:
                op.fut.set_result(result)

        try:
            op.loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop is gone; nobody waits any more
            pass

    def _run_one(self, conn: sqlite3.Connection, op: _Op) -> None:
        try:
            self._synchronous(conn, "NORMAL")
            result = op.fn(conn, *op.args)
        except BaseException as e:
            if conn.in_transaction:
                conn.rollback()
            self._resolve(op, exc=StoreError(str(e)) if isinstance(e, sqlite3.Error) else e)
        else:
            self._resolve(op, result)

    def _run_enqueues(self, conn: sqlite3.Connection, group: list[_Op]) -> None:
        try:
            self._synchronous(conn, "FULL")
            conn.execute("BEGIN IMMEDIATE")
            results = [self._insert(conn, op.args[0], limit=self.max_per_function) for op in group]
            conn.execute("COMMIT")
        except BaseException as e:
            if conn.in_transaction:
                conn.rollback()
            if len(group) == 1:
                self._resolve(group[0], exc=e if isinstance(e, StoreError) else StoreError(str(e)))
                return
            for op in group:  # isolate the bad one
                self._run_enqueues(conn, [op])
            return
        for op, res in zip(group, results, strict=True):
            self._resolve(op, res)

    @staticmethod
    def _insert(conn: sqlite3.Connection, ev: QueuedEvent, limit: int | None = None) -> bool:
        if limit:
            base = base_function(ev.function)
            queued = conn.execute(
                "SELECT COUNT(*) FROM async_events WHERE function = ? OR (function >= ? AND function < ?)",
                (base, base + ":", base + ";"),
            ).fetchone()[0]
            exists = conn.execute("SELECT 1 FROM async_events WHERE id = ?", (ev.id,)).fetchone()
            if queued >= limit and exists is None:
                raise QueueFull(base, limit)
        cur = conn.execute(
            f"INSERT OR IGNORE INTO async_events ({_COLUMNS}, visible_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                ev.id,
                ev.function,
                sqlite3.Binary(ev.payload),
                ev.enqueued_at,
                ev.attempts,
                ev.throttles,
                ev.next_attempt_at,
                ev.last_error,
                ev.pending_record,
                ev.trace,
                ev.next_attempt_at,
            ),
        )
        return cur.rowcount == 1

    # -- operations (run on the thread) -------------------------------------------------------
    @staticmethod
    def _claim(conn: sqlite3.Connection, now: float, limit: int, lease: float) -> list[QueuedEvent]:
        conn.execute("BEGIN IMMEDIATE")
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM async_events WHERE visible_at <= ? ORDER BY visible_at LIMIT ?",
            (now, limit),
        ).fetchall()
        if rows:
            conn.executemany(
                "UPDATE async_events SET visible_at = ?, claims = claims + 1 WHERE id = ?",
                [(now + lease, r[0]) for r in rows],
            )
        conn.execute("COMMIT")
        return [_row_to_event(r) for r in rows]

    @staticmethod
    def _touch(conn: sqlite3.Connection, ids: list[str], until: float) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("UPDATE async_events SET visible_at = ? WHERE id = ?", [(until, i) for i in ids])
        conn.execute("COMMIT")

    @staticmethod
    def _complete(conn: sqlite3.Connection, id: str) -> None:
        conn.execute("DELETE FROM async_events WHERE id = ?", (id,))

    @staticmethod
    def _reschedule(
        conn: sqlite3.Connection,
        id: str,
        next_at: float,
        attempts: int,
        last_error: str | None,
        throttles: int | None,
        pending_record: str | None,
    ) -> None:
        conn.execute(
            "UPDATE async_events SET next_attempt_at = ?, visible_at = ?, attempts = ?, last_error = ?,"
            " throttles = COALESCE(?, throttles), pending_record = COALESCE(?, pending_record) WHERE id = ?",
            (next_at, next_at, attempts, last_error, throttles, pending_record, id),
        )

    @staticmethod
    def _count(conn: sqlite3.Connection) -> int:
        return conn.execute("SELECT COUNT(*) FROM async_events").fetchone()[0]

    @staticmethod
    def _get(conn: sqlite3.Connection, id: str) -> QueuedEvent | None:
        row = conn.execute(f"SELECT {_COLUMNS} FROM async_events WHERE id = ?", (id,)).fetchone()
        return _row_to_event(row) if row else None

    # -- async API ------------------------------------------------------------------------------
    async def _call(self, kind: str, fn: Callable[..., Any], *args: Any) -> Any:
        if self._thread is None:
            await asyncio.to_thread(self._start)
        if self._closed:
            raise StoreError("the async event store is closed")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._ops.put(_Op(kind, fn, args, loop, fut))
        return await fut

    async def open(self) -> None:
        if self._thread is None:
            await asyncio.to_thread(self._start)

    async def enqueue(self, event: QueuedEvent) -> bool:
        return await self._call("enqueue", None, event)  # type: ignore[arg-type]

    async def claim_due(self, limit: int, lease_seconds: float) -> list[QueuedEvent]:
        if limit <= 0:
            return []
        return await self._call("op", self._claim, self._clock(), int(limit), float(lease_seconds))

    async def touch(self, ids: Iterable[str], lease_seconds: float) -> None:
        ids = list(ids)
        if ids:
            await self._call("op", self._touch, ids, self._clock() + lease_seconds)

    async def release_leases(self) -> int:
        """Make every leased event visible again at once: for a process that knows it is the only
        consumer (local mode at start-up), leases left by its own previous, killed run are void."""
        return int(await self._call("op", self._release_leases))

    @staticmethod
    def _release_leases(conn: sqlite3.Connection) -> int:
        with conn:
            cur = conn.execute(
                "UPDATE async_events SET visible_at = next_attempt_at WHERE visible_at > next_attempt_at"
            )
        return cur.rowcount

    async def complete(self, id: str) -> None:
        await self._call("op", self._complete, id)

    async def reschedule(
        self,
        id: str,
        next_attempt_at: float,
        attempts: int,
        last_error: str | None,
        *,
        throttles: int | None = None,
        pending_record: str | None = None,
    ) -> None:
        await self._call(
            "op", self._reschedule, id, next_attempt_at, attempts, last_error, throttles, pending_record
        )

    async def pending_count(self) -> int:
        return await self._call("op", self._count)

    async def get(self, id: str) -> QueuedEvent | None:
        return await self._call("op", self._get, id)

    async def close(self) -> None:
        await asyncio.to_thread(self.close_sync)

    def close_sync(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._ops.put(None)
            thread.join()
        while True:  # anything put after the thread stopped: fail it instead of leaving it hanging
            try:
                op = self._ops.get_nowait()
            except queue.Empty:
                break
            if op is not None:
                self._resolve(op, exc=StoreError("the async event store is closed"))
