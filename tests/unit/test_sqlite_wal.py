"""Several processes opening one fresh sqlite file at once all get a working WAL connection."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

from lamina.sqlite_wal import open_wal

SCHEMA = "CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY);"


def _open_and_insert(path: str, key: int, start: multiprocessing.synchronize.Event) -> None:
    start.wait()
    conn = open_wal(path, SCHEMA)
    conn.execute("INSERT INTO t (k) VALUES (?)", (key,))
    conn.close()


def test_simultaneous_first_opens_all_succeed(tmp_path: Path) -> None:
    for round_ in range(10):
        path = str(tmp_path / f"shared-{round_}.sqlite")
        ctx = multiprocessing.get_context("fork")
        start = ctx.Event()
        procs = [ctx.Process(target=_open_and_insert, args=(path, k, start)) for k in range(8)]
        for p in procs:
            p.start()
        start.set()
        for p in procs:
            p.join(30)
        assert [p.exitcode for p in procs] == [0] * 8
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert sorted(r[0] for r in conn.execute("SELECT k FROM t")) == list(range(8))
        conn.close()


def test_a_real_error_is_not_retried(tmp_path: Path) -> None:
    try:
        open_wal(str(tmp_path / "x.sqlite"), "CREATE TABLE broken (;")
    except sqlite3.OperationalError as e:
        assert "syntax error" in str(e)
    else:
        raise AssertionError("bad schema was accepted")
