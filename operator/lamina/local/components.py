"""Local-mode components around the gateway: the async queue, event source mappings, schedules.

Each gets what it uses (the invocation service, the manifests' Secrets, the state directory), not the
whole stack; each has ``start()``, ``stop()``, ``describe() -> list[str]`` and ``status()`` (its part
of ``GET /lamina/status``). :class:`~lamina.local.runner.LocalStack` runs them in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from lamina.api import EventSourceMapping
from lamina.api.manifests import Manifests
from lamina.api.rollouts import Counts, ErrorWindow
from lamina.api.versions import declared_routes
from lamina.asyncinvoke.dispatcher import AsyncDispatcher
from lamina.asyncinvoke.sqlite_store import SqliteEventStore
from lamina.asyncinvoke.store import MAX_QUEUED_PER_FUNCTION
from lamina.eventsources.kubernetes import FileCheckpoint
from lamina.eventsources.runners import KubernetesAccess, mapping_runner
from lamina.gateway.async_queue import AsyncInvocations
from lamina.gateway.service import InvocationService
from lamina.kubeapi import api_client
from lamina.local.versions import LocalVersions, apply_routes
from lamina.schedule.stores import SqliteTickStore


class Component(Protocol):
    async def start(self) -> None: ...
    async def stop(self, grace_seconds: float) -> None:
        """Take no more work; let what runs finish within ``grace_seconds`` (then give it back)."""

    def describe(self) -> list[str]: ...
    async def status(self) -> dict[str, Any]: ...


class LocalAsyncQueue:
    """Event invocations: an embedded durable queue (sqlite under the state dir) and its dispatcher."""

    def __init__(
        self, service: InvocationService, manifests: Manifests, state_dir: Path, retry_base_seconds: float
    ) -> None:
        self.path = state_dir / "async-events.sqlite3"
        self.store = SqliteEventStore(self.path, max_per_function=MAX_QUEUED_PER_FUNCTION)

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

    async def stop(self, grace_seconds: float) -> None:
        """Events still running after the grace are handed back to the store, due at once: the next
        run resumes them (an accepted event is in the store before its 202, so none is lost)."""
        await self.queue.stop(drain_seconds=grace_seconds)

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

        def checkpoint(esm: EventSourceMapping) -> FileCheckpoint:
            ns = esm.metadata.namespace
            return FileCheckpoint(state_dir / "mappings" / ns / f"{esm.name}.resource-version")

        # Kubernetes sources watch the cluster the current KUBECONFIG names, as kubectl would.
        kube = KubernetesAccess(api_client=api_client, checkpoint=checkpoint)

        async def enqueue(function_key: str, payload: bytes, request_id: str | None = None) -> None:
            await dispatcher.enqueue(function_key, payload, request_id=request_id)

        self.mappings = [
            mapping_runner(esm, service.invoke_key, enqueue, manifests.secret_value, self.ticks, kube)
            for esm in mappings
        ]

    async def start(self) -> None:
        for mapping in self.mappings:
            await mapping.start()

    async def stop(self, grace_seconds: float) -> None:
        """A batch in flight is acknowledged if it finishes within the grace, else left to the broker."""
        await asyncio.gather(*(mapping.stop(grace_seconds) for mapping in self.mappings))

    def snapshot(self) -> list[dict[str, Any]]:
        return [m.snapshot() for m in self.mappings]

    def describe(self) -> list[str]:
        return [
            f"  mapping {s['name']}: {s['source']} -> {s['function']} ({s['state']})" for s in self.snapshot()
        ]

    async def status(self) -> dict[str, Any]:
        return {"mappings": self.snapshot()}


class AliasRollouts:
    """Local mode's rollout loop (the operator's, in a cluster): once a second, the gateway's per-version
    counts go into an error window and every alias with a rollout advances; a changed routing goes to
    the registry and the pool at once."""

    def __init__(
        self, service: InvocationService, manifests: Manifests, state_dir: Path, tick: float = 1.0
    ) -> None:
        self.service = service
        self.functions = [
            f for f in manifests.functions.values() if any(a.rollout for a in f.spec.aliases.values())
        ]
        self.versions = LocalVersions(state_dir, environment_from=None)
        self.window = ErrorWindow()
        self.tick = tick
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.functions:
            self._task = asyncio.create_task(self._run(), name="lamina-rollouts")

    async def stop(self, grace_seconds: float) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def describe(self) -> list[str]:
        return [f"  rollouts: {', '.join(f.name for f in self.functions)}"] if self.functions else []

    async def status(self) -> dict[str, Any]:
        return {}

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            try:
                await self.advance(time.time())
            except Exception as exc:  # one bad tick must not end the loop
                print(f"lamina local: rollout tick failed: {exc}", flush=True)

    async def advance(self, now: float) -> None:
        registry, metrics = self.service.registry, self.service.metrics.registry
        changed = False
        for fn in self.functions:
            ns, name = fn.metadata.namespace, fn.name
            config = registry.get(f"{ns}/{name}")
            if config is None:
                continue
            for version in config.versions:
                labels = {"namespace": ns, "function": name, "version": version}
                invocations = metrics.get_sample_value("lamina_version_invocations_total", labels) or 0.0
                errors = metrics.get_sample_value("lamina_version_errors_total", labels) or 0.0
                self.window.observe((ns, name, version), now, invocations, errors)
            declared = declared_routes(fn.spec, list(config.versions))

            def counts(version: str, seconds: float, since: float, ns: str = ns, name: str = name) -> Counts:
                return self.window.counts((ns, name, version), now, seconds, since)

            effective = self.versions.route_aliases(fn, declared, now, counts)
            if effective != config.routes:
                apply_routes(config, fn.spec, effective)
                changed = True
        if changed:
            await self.service.pool.update(self.service.environment_configs())


def build_components(
    service: InvocationService, manifests: Manifests, state_dir: Path, async_retry_base_seconds: float
) -> list[Component]:
    """The components of local mode, in start order (the mappings enqueue into the async queue)."""
    queue = LocalAsyncQueue(service, manifests, state_dir, async_retry_base_seconds)
    mappings = EventSourceMappings(
        manifests.mappings.values(), service, queue.dispatcher, manifests, state_dir
    )
    return [queue, mappings, AliasRollouts(service, manifests, state_dir)]
