"""LocalProcessPool with real worker processes: warm reuse, caps, reaping, replacement."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from lamina.environments.base import FunctionConfig
from lamina.environments.local_pool import LocalProcessPool
from lamina_runtime.protocol import InvocationRequest
from tests.support.waiting import wait_for

CODE = """import os, time
def handler(event, context):
    if event.get("crash"):
        os._exit(3)
    time.sleep(event.get("seconds", 0))
    return {"pid": os.getpid()}
"""


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    (tmp_path / "index.py").write_text(CODE)
    return tmp_path


def fn(code_dir: Path, **kw: object) -> FunctionConfig:
    return FunctionConfig(name="f", code_dir=str(code_dir), timeout_seconds=5, **kw)  # type: ignore[arg-type]


async def call(pool: LocalProcessPool, config: FunctionConfig, **event: object) -> dict:
    result = await pool.invoke(config, InvocationRequest(request_id="r", payload=json.dumps(event).encode()))
    return {
        "error": result.error_type,
        "cold": result.init_duration_ms is not None,
        **(json.loads(result.payload) if not result.function_error else {}),
    }


async def test_provisioned_environments_start_first_and_are_never_reaped(code_dir: Path) -> None:
    config = fn(code_dir, provisioned_concurrency=2, idle_timeout_seconds=0)
    pool = LocalProcessPool([config], reap_interval=3600)
    await pool.start()
    try:
        assert pool.environments(config) == 2
        first = await call(pool, config)
        assert first["cold"] is False
        assert await pool.reap(asyncio.get_running_loop().time() + 10_000) == 0
        assert pool.environments(config) == 2
    finally:
        await pool.close()


async def test_on_demand_environments_are_reused_then_reaped_when_idle(code_dir: Path) -> None:
    config = fn(code_dir, idle_timeout_seconds=60)
    pool = LocalProcessPool([config], reap_interval=3600)
    await pool.start()
    try:
        first, second = await call(pool, config), await call(pool, config)
        assert first["cold"] and not second["cold"]
        assert first["pid"] == second["pid"]
        import time

        assert await pool.reap(time.monotonic()) == 0  # not idle long enough
        assert await pool.reap(time.monotonic() + 61) == 1
        assert pool.environments(config) == 0  # scaled to zero
        assert (await call(pool, config))["cold"]
    finally:
        await pool.close()


async def test_reserved_concurrency_caps_environments_and_queues_the_rest(code_dir: Path) -> None:
    config = fn(code_dir, reserved_concurrency=2)
    pool = LocalProcessPool([config], reap_interval=3600)
    await pool.start()
    try:
        results = await asyncio.gather(*(call(pool, config, seconds=0.3) for _ in range(5)))
        assert len({r["pid"] for r in results}) == 2
        assert pool.environments(config) == 2
    finally:
        await pool.close()


async def test_a_crashed_environment_is_replaced(code_dir: Path) -> None:
    config = fn(code_dir, provisioned_concurrency=1)
    pool = LocalProcessPool([config], reap_interval=3600)
    await pool.start()
    try:
        before = (await call(pool, config))["pid"]
        crashed = await call(pool, config, crash=True)
        assert crashed["error"] == "Runtime.ExitError"
        for _ in range(100):  # the provisioned environment is re-initialised in the background
            if pool.describe()[config.key]["idle"] == 1:
                break
            await asyncio.sleep(0.05)
        after = await call(pool, config)
        assert after["pid"] != before
        assert after["cold"] is False  # re-INITialised ahead of the call
    finally:
        await pool.close()


async def test_versions_have_their_own_environments_and_unrouted_ones_are_retired(code_dir: Path) -> None:
    from dataclasses import replace

    latest = fn(code_dir)
    v1 = replace(latest, version="1", provisioned_concurrency=1, routed=True)
    v2 = replace(latest, version="2", routed=True)
    pool = LocalProcessPool([latest, v1, v2], reap_interval=3600)
    await pool.start()
    try:
        assert (pool.environments(latest), pool.environments(v1), pool.environments(v2)) == (0, 1, 0)
        assert (await call(pool, v2))["cold"] is True
        assert pool.environments(v2) == 1 and pool.environments(latest) == 0
        # The alias moves from 1 to 2: 1 is no longer routed nor provisioned, 2 gets the warm one.
        await pool.update(
            [
                latest,
                replace(v1, provisioned_concurrency=0, routed=False),
                replace(v2, provisioned_concurrency=1),
            ]
        )
        assert pool.environments(v1) == 0
        assert pool.environments(v2) == 1  # the on-demand one now counts as provisioned
        assert pool.describe()["default/f:2"]["provisioned"] == 1
    finally:
        await pool.close()


HOLDING = """import os, sys, time
open(os.environ["PIDS"], "a").write(f"{os.getpid()}\\n")
if os.environ.get("SLOW_INIT"):
    time.sleep(600)
def handler(event, context):
    open(os.environ["PIDS"], "a").write(f"{os.getpid()}\\n")
    time.sleep(600)
"""


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"


@pytest.mark.parametrize("slow_init", [False, True], ids=["while-invoked", "during-init"])
async def test_a_cancelled_call_then_close_leaves_no_process(tmp_path: Path, slow_init: bool) -> None:
    """A call cut while it runs (or while its environment's INIT runs) discards its environment; a
    pool closed right after (lamina local stopping) still stops that environment's process instead of
    cancelling the stop and leaving the process behind."""
    (tmp_path / "index.py").write_text(HOLDING)
    pids = tmp_path / "pids"
    env = {"PIDS": str(pids), **({"SLOW_INIT": "1"} if slow_init else {})}
    config = FunctionConfig(name="held", code_dir=str(tmp_path), timeout_seconds=900, environment=env)
    pool = LocalProcessPool([config], reap_interval=3600)
    await pool.start()
    running = asyncio.create_task(pool.invoke(config, InvocationRequest(request_id="r", payload=b"{}")))
    expected = 1 if slow_init else 2  # INIT wrote its pid; the handler too, once it runs
    await asyncio.to_thread(wait_for, lambda: pids.exists() and len(pids.read_text().split()) == expected)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    await pool.close()
    [pid] = set(map(int, pids.read_text().split()))
    assert gone(pid)
