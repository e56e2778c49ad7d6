"""Fixtures shared by several test folders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import brokers


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[brokers.RedisServer]:
    """A redis-server of this test's own on a loopback port (installed by scripts/test)."""
    if not brokers.available("redis"):
        pytest.fail("redis-server is not installed: run scripts/test, which installs it")
    server = brokers.RedisServer(tmp_path / "redis").start()
    yield server
    server.close()
