"""Event invocations of one gateway process, wired in one place: store, dispatcher, secrets, metrics.

Local mode (an embedded sqlite store) and the cluster gateway (Redis Streams) differ only in the store
they pass and where Secret values come from; everything else a dispatcher needs (the invoker and the
function lookup of the gateway's :class:`InvocationService`, the resolver of ``urlFrom`` destinations,
the gateway's Prometheus metrics) is connected here, so the two cannot drift apart again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from lamina.api.common import SecretValueFrom
from lamina.asyncinvoke.config import EventInvokeConfig
from lamina.asyncinvoke.destinations import InvokeCheck
from lamina.asyncinvoke.dispatcher import AsyncDispatcher
from lamina.asyncinvoke.store import AsyncEventStore
from lamina.gateway.metrics import GatewayMetrics
from lamina.gateway.service import InvocationService

#: A Secret's value by (namespace, name, key); None when the Secret or the key does not exist.
SecretValue = Callable[[str, str, str], Awaitable[str | None]]


class SecretUrls:
    """The dispatcher's resolver of a destination's ``urlFrom.secretKeyRef``."""

    def __init__(self, secret_value: SecretValue) -> None:
        self.secret_value = secret_value

    async def __call__(self, namespace: str, url_from: SecretValueFrom) -> str:
        ref = url_from.secret_key_ref
        value = await self.secret_value(namespace, ref.name, ref.key)
        if value is None:
            raise LookupError(f"Secret {ref.name!r} has no key {ref.key!r} in {namespace}")
        return value


class AsyncMetrics:
    """The dispatcher's metric hooks onto the gateway's Prometheus registry."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.m = metrics

    @staticmethod
    def _name(key: str) -> str:
        return key.split("/", 1)[-1]

    def async_event_age(self, key: str, age: float) -> None:
        self.m.async_age.labels(self._name(key)).observe(age)

    def async_event_dropped(self, key: str, condition: str) -> None:
        self.m.async_dropped.labels(self._name(key), condition).inc()


class AsyncInvocations:
    """The async queue of ``service``: Event invocations go into ``store`` and a dispatcher runs them.

    ``start`` connects the queue to the service (``service.async_queue``); the store is opened by the
    caller, who knows whether leases of an earlier run are void (local mode owns its state directory).
    """

    def __init__(
        self,
        service: InvocationService,
        store: AsyncEventStore,
        secret_value: SecretValue,
        *,
        retry_base_seconds: float = 60.0,
        lease_seconds: float = 60.0,
        may_invoke: InvokeCheck | None = None,
    ) -> None:
        self.service = service
        self.store = store
        self.dispatcher = AsyncDispatcher(
            store,
            service.invoke_key,
            self.event_config,
            url_resolver=SecretUrls(secret_value),
            may_invoke=may_invoke,
            metrics=AsyncMetrics(service.metrics),
            retry_base_seconds=retry_base_seconds,
            lease_seconds=lease_seconds,
        )

    def event_config(self, key: str) -> EventInvokeConfig | None:
        """The dispatcher's view of a function the gateway knows (None: unknown)."""
        fn = self.service.lookup(key)
        if fn is None:
            return None
        return EventInvokeConfig.from_async_config(fn.async_config, fn.reserved_concurrency)

    async def start(self) -> None:
        await self.dispatcher.start()
        self.service.async_queue = self.dispatcher.gateway_queue()

    async def stop(self, drain_seconds: float = 30.0) -> None:
        """Let the events in flight finish for up to ``drain_seconds``, then close the store."""
        await self.dispatcher.stop(drain_seconds=drain_seconds)
        await self.store.close()
