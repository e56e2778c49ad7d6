"""An in-process gateway serving the Invoke API on a free loopback port, as `lamina gateway` serves it
(:func:`lamina.cluster.gateway.start_http`), and boto3's Lambda client for it: for tests that build
the gateway's service themselves (its pool, its registry, its queue) and call it as a user would."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from lamina.cluster.gateway import start_http
from lamina.gateway.drain import Drain
from lamina.gateway.service import InvocationService
from tests.support.local_mode import free_port, lambda_client


@dataclass
class LoopbackGateway:
    runner: web.AppRunner
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, read_timeout: float = 60) -> Any:
        """boto3's Lambda client, without retries (:func:`tests.support.local_mode.lambda_client`)."""
        return lambda_client(self.url, read_timeout)


@contextlib.asynccontextmanager
async def loopback_gateway(
    service: InvocationService, drain: Drain | None = None
) -> AsyncIterator[LoopbackGateway]:
    """``service`` on a free loopback port (``drain``: what a stopping gateway still runs) until the
    block ends."""
    port = free_port()
    runner = await start_http(service, "127.0.0.1", port, drain=drain)
    try:
        yield LoopbackGateway(runner, port)
    finally:
        await runner.cleanup()
