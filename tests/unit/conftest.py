"""Fixtures several unit-test modules share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import brokers


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of the module's own on a loopback port (the Redis-backed stores' tests; skipped
    where redis-server is not installed). A module that needs a server per test defines its own."""
    if not brokers.available("redis"):
        pytest.skip("redis-server is not installed")
    with brokers.server_for("redis", tmp_path_factory.mktemp("redis")) as server:
        yield server.url
