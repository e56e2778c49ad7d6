"""Local-mode components around the gateway: the async queue, event source mappings, schedules.

Each has `start()`, `stop()` and `describe() -> list[str]`; `LocalStack` runs them in order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lamina.asyncinvoke.dispatcher import AsyncDispatcher
from lamina.asyncinvoke.sqlite_store import SqliteEventStore

if TYPE_CHECKING:
    from lamina.local.runner import LocalStack


class SecretUrls:
    """The async dispatcher's resolver of `urlFrom.secretKeyRef`, over the loaded Secrets."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack

    def __call__(self, namespace: str, url_from: dict[str, Any]) -> str:
        ref = url_from.get("secretKeyRef") or {}
        assert self.stack.manifests is not None
        value = self.stack.manifests.secret_value(namespace, ref.get("name", ""), ref.get("key", ""))
        if value is None:
            raise LookupError(f"Secret {ref.get('name')!r} has no key {ref.get('key')!r} in {namespace}")
        return value


class AsyncMetrics:
    """The dispatcher's metric hooks onto the gateway's Prometheus registry."""

    def __init__(self, stack: LocalStack) -> None:
        assert stack.service is not None
        self.m = stack.service.metrics

    @staticmethod
    def _name(key: str) -> str:
        return key.split("/", 1)[-1]

    def async_event_age(self, key: str, age: float) -> None:
        self.m.async_age.labels(self._name(key)).observe(age)

    def async_event_dropped(self, key: str, condition: str) -> None:
        self.m.async_dropped.labels(self._name(key), condition).inc()


class AsyncInvocations:
    """Event invocations: an embedded durable queue (sqlite under the state dir) and its dispatcher."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.path = stack.options.state_dir / "async-events.sqlite3"
        self.store = SqliteEventStore(self.path)
        assert stack.service is not None
        self.dispatcher = AsyncDispatcher(
            self.store,
            stack.service.invoke_key,
            stack.service.lookup,
            url_resolver=SecretUrls(stack),
            metrics=AsyncMetrics(stack),
            retry_base_seconds=stack.options.async_retry_base_seconds,
        )

    async def start(self) -> None:
        await self.store.open()
        # This process holds the state directory's lock, so leases of a previous run are void.
        released = await self.store.release_leases()
        if released:
            print(f"lamina local: {released} async event(s) of a previous run resume", flush=True)
        await self.dispatcher.start()
        assert self.stack.service is not None
        self.stack.service.async_queue = self.dispatcher.gateway_queue()

    async def stop(self) -> None:
        await self.dispatcher.stop(drain_seconds=5)
        await self.store.close()

    def describe(self) -> list[str]:
        return [f"  async queue: {self.path}"]


class EventSourceMappings:
    """Every EventSourceMapping of the manifests: broker consumers and schedules."""

    def __init__(self, stack: LocalStack, dispatcher: AsyncDispatcher) -> None:
        from lamina.eventsources.runners import literal_or_secret, mapping_runner
        from lamina.schedule.stores import SqliteTickStore

        assert stack.manifests is not None
        self.ticks = SqliteTickStore(stack.options.state_dir / "schedule-ticks.sqlite3")
        assert stack.service is not None
        invoke = stack.service.invoke_key
        resolve = literal_or_secret(stack.manifests.secret_value)

        async def enqueue(function_key: str, payload: bytes, request_id: str | None) -> None:
            await dispatcher.enqueue(function_key, payload, request_id=request_id)

        self.mappings = [
            mapping_runner(esm, invoke, enqueue, resolve, self.ticks)
            for esm in stack.manifests.mappings.values()
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


def build_components(stack: LocalStack) -> list[Any]:
    async_invocations = AsyncInvocations(stack)
    return [async_invocations, EventSourceMappings(stack, async_invocations.dispatcher)]
