"""Opening a shared sqlite file in WAL mode when other processes open it at the same moment.

SQLite answers ``database is locked`` at once, without waiting out the busy
timeout, when two connections race to switch a fresh file to WAL or to create
its schema (it refuses rather than risk a deadlock). Replicas and restarted
workers do start together, so the setup is retried until ``timeout`` passes.
"""

from __future__ import annotations

import os
import sqlite3
import time

_RETRY_PAUSE_SECONDS = 0.01


def open_wal(
    path: str | os.PathLike[str],
    schema: str,
    *,
    synchronous: str = "NORMAL",
    timeout: float = 30.0,
    check_same_thread: bool = True,
) -> sqlite3.Connection:
    """A WAL-mode autocommit connection to ``path`` with ``schema`` (idempotent DDL) applied."""
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=check_same_thread)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA synchronous={synchronous}")
                conn.executescript(schema)
                return conn
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                if time.monotonic() >= deadline:
                    raise
                time.sleep(_RETRY_PAUSE_SECONDS)
    except BaseException:
        conn.close()
        raise
