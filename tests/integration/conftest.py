from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.local_mode import REPO, LocalServer

MANIFESTS = Path(__file__).parent / "manifests"


@pytest.fixture(scope="module")
def local_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """One `lamina local` serving the examples and the test manifests, for a module of tests."""
    state = tmp_path_factory.mktemp("state")
    server = LocalServer(
        [REPO / "examples", MANIFESTS], state, extra_args=["--async-retry-base-seconds", "0.2"]
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def lambda_client(local_server: LocalServer):
    return local_server.lambda_client()
