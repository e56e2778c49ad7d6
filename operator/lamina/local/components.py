"""Local-mode components around the gateway: the async queue, event source mappings, schedules.

Each gets what it uses (the invocation service, the manifests' Secrets, the state directory), not the
whole stack; each has ``start()``, ``stop()``, ``describe() -> list[str]`` and ``status()`` (its part
of ``GET /lamina/status``). :class:`~lamina.local.runner.LocalStack` runs them in order.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from lamina.api import EventSourceMapping
from lamina.api.manifests import Manifests
from lamina.asyncinvoke.dispatcher import AsyncDispatcher
from lamina.asyncinvoke.sqlite_store import SqliteEventStore
from lamina.eventsources.runners import literal_or_secret, mapping_runner
from lamina.gateway.async_queue import AsyncInvocations
from lamina.gateway.service import InvocationService
from lamina.schedule.stores import SqliteTickStore


class Component(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def describe(self) -> list[str]: ...
    async def status(self) -> dict[str, Any]: ...


class LocalAsyncQueue:
    """Event invocations: an embedded durable queue (sqlite under the state dir) and its dispatcher."""

    def __init__(
        self, service: InvocationService, manifests: Manifests, state_dir: Path, retry_base_seconds: float
    ) -> None:
        self.path = state_dir / "async-events.sqlite3"
        self.store = SqliteEventStore(self.path)

        async def secret_value(namespace: str, name: str, key: str) -> str | None:
            return manifests.secret_value(namespace, name, key)

        self.queue = AsyncInvocations(
            service, self.store, secret_value, retry_base_seconds=retry_base_seconds
        )

    @property
    def dispatcher(self) -> AsyncDispatcher:
        return self.queue.dispatcher

    async def start(self) -> None:
        await self.store.open()
        # This process holds the state directory's lock, so leases of a previous run are void.
        released = await self.store.release_leases()
        if released:
            print(f"lamina local: {released} async event(s) of a previous run resume", flush=True)
        await self.queue.start()

    async def stop(self) -> None:
        await self.queue.stop(drain_seconds=5)

    def describe(self) -> list[str]:
        return [f"  async queue: {self.path}"]

    async def status(self) -> dict[str, Any]:
        return {"asyncPending": await self.store.pending_count()}


class EventSourceMappings:
    """Every EventSourceMapping of the manifests: broker consumers and schedules."""

    def __init__(
        self,
        mappings: Iterable[EventSourceMapping],
        service: InvocationService,
        dispatcher: AsyncDispatcher,
        manifests: Manifests,
        state_dir: Path,
    ) -> None:
        self.ticks = SqliteTickStore(state_dir / "schedule-ticks.sqlite3")
        resolve = literal_or_secret(manifests.secret_value)

        async def enqueue(function_key: str, payload: bytes, request_id: str | None = None) -> None:
            await dispatcher.enqueue(function_key, payload, request_id=request_id)

        self.mappings = [
            mapping_runner(esm, service.invoke_key, enqueue, resolve, self.ticks) for esm in mappings
        ]

    async def start(self) -> None:
        for mapping in self.mappings:
            await mapping.start()

    async def stop(self) -> None:
        for mapping in self.mappings:
            await mapping.stop()

    def snapshot(self) -> list[dict[str, Any]]:
        return [m.snapshot() for m in self.mappings]

    def describe(self) -> list[str]:
        return [
            f"  mapping {s['name']}: {s['source']} -> {s['function']} ({s['state']})" for s in self.snapshot()
        ]

    async def status(self) -> dict[str, Any]:
        return {"mappings": self.snapshot()}


def build_components(
    service: InvocationService, manifests: Manifests, state_dir: Path, async_retry_base_seconds: float
) -> list[Component]:
    """The components of local mode, in start order (the mappings enqueue into the async queue)."""
    queue = LocalAsyncQueue(service, manifests, state_dir, async_retry_base_seconds)
    mappings = EventSourceMappings(
        manifests.mappings.values(), service, queue.dispatcher, manifests, state_dir
    )
    return [queue, mappings]
