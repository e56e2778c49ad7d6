"""Fixtures shared by several test folders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import brokers, builds


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that need nothing built first, those waiting for the longest builds last (see builds)."""
    builds.order(items)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Wait for the builds a test needs before its timeout starts (a first build takes minutes)."""
    builds.wait_for(item)
    yield


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[brokers.RedisServer]:
    """A redis-server of this test's own on a loopback port (installed by scripts/test)."""
    if not brokers.available("redis"):
        pytest.fail("redis-server is not installed: run scripts/test, which installs it")
    server = brokers.RedisServer(tmp_path / "redis").start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def python312() -> str:
    """A CPython 3.12 interpreter: the one scripts/build-python builds (cached under ~/.cache/lamina;
    waited for before the test starts, see builds, so here it is only looked up)."""
    import subprocess

    script = Path(__file__).resolve().parents[1] / "scripts" / "build-python"
    done = subprocess.run([str(script), "3.12"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"scripts/build-python 3.12 failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]
