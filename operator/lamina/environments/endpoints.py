"""Where a cluster gateway finds environments: a source of endpoints that it can also ask to scale."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from lamina.environments.base import FunctionConfig

Listener = Callable[[str, list[str]], None]  # (function key, ready endpoints "host:port")


class EndpointSource(Protocol):
    """Ready environments of each function, and the knob that makes more or fewer of them."""

    def subscribe(self, listener: Listener) -> None:
        """`listener` is called (on the event loop) whenever a function's ready endpoints change."""

    async def start(self) -> None: ...

    async def scale(self, fn: FunctionConfig, replicas: int, retire: str | None = None) -> None:
        """Ask for `replicas` environments; `retire` names the endpoint to remove first when shrinking."""

    async def close(self) -> None: ...


class StaticEndpointSource:
    """Fixed endpoints per function: for tests, benchmarks and gateways in front of fixed pools."""

    def __init__(self, endpoints: dict[str, list[str]]) -> None:
        self.endpoints = {key: list(eps) for key, eps in endpoints.items()}
        self.requested: dict[str, int] = {}
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        for key, eps in self.endpoints.items():
            for listener in self._listeners:
                listener(key, list(eps))

    async def scale(self, fn: FunctionConfig, replicas: int, retire: str | None = None) -> None:
        self.requested[fn.pool_key] = replicas

    def set_endpoints(self, key: str, endpoints: list[str]) -> None:
        self.endpoints[key] = list(endpoints)
        loop = asyncio.get_running_loop()
        for listener in self._listeners:
            loop.call_soon(listener, key, list(endpoints))

    async def close(self) -> None:
        return None
