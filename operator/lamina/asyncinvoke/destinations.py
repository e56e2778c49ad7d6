"""Delivery of invocation records to ``onSuccess`` / ``onFailure`` destinations.

An :class:`~lamina.api.Endpoint` is one of ``redis``, ``nats``, ``rabbitmq``, ``kafka``, ``sqs``
(delivered through the event-source package's :class:`~lamina.eventsources.base.Sink`
implementations, one connection per distinct endpoint, kept open) or ``function: {name}`` (an
asynchronous invocation of that function in the same namespace: the record is enqueued into the same
store, as Lambda does).

Any failure raises :class:`~lamina.asyncinvoke.errors.DestinationError`; the dispatcher keeps the
record and retries it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from lamina.api import Endpoint
from lamina.api.common import BrokerEndpoint, KeyRef, SecretValueFrom
from lamina.eventsources.factory import make_sink

from .errors import DestinationError
from .store import AsyncEventStore, QueuedEvent

#: ``url_resolver(namespace, url_from)`` reads the URL a destination names in a Secret (``urlFrom``).
UrlResolver = Callable[[str, SecretValueFrom], Awaitable[str]]

_RECORD_IDS = uuid.UUID("6f1d7a4e-2b55-4c8e-9a8e-1f0c5e7b3d21")


class Sink(Protocol):
    async def publish(self, body: bytes, headers: dict[str, str] | None = None) -> None: ...
    async def close(self) -> None: ...


#: ``may_invoke(source, target)``: whether the function ``source`` ("namespace/name", the owner of the
#: destination) may invoke ``target`` ("namespace/name[:qualifier]").
InvokeCheck = Callable[[str, str], Awaitable[bool]]

#: ``sink_factory(endpoint, url)``: a connected sink of a broker endpoint, its URL resolved.
SinkFactory = Callable[[Endpoint, str], Awaitable[Sink]]


async def default_sink_factory(endpoint: Endpoint, url: str) -> Sink:
    """The :mod:`lamina.eventsources` sink of the endpoint, connected."""
    try:
        sink = make_sink(endpoint, url)
    except ValueError as e:
        raise DestinationError(f"bad {endpoint.kind} destination: {e}") from e
    await sink.connect()
    return sink


def record_event_id(source_id: str, destination: str) -> str:
    """The request id of the event a function destination receives: stable, so that delivering the
    same record twice (a crash between delivery and completion) enqueues it once."""
    return str(uuid.uuid5(_RECORD_IDS, f"{source_id}/{destination}"))


class Destinations:
    """Delivers records; owns the destination connections (close with :meth:`close`)."""

    def __init__(
        self,
        store: AsyncEventStore,
        *,
        sink_factory: SinkFactory | None = None,
        url_resolver: UrlResolver | None = None,
        on_enqueued: Callable[[QueuedEvent], None] | None = None,
        clock: Callable[[], float] | None = None,
        may_invoke: InvokeCheck | None = None,
    ) -> None:
        self.store = store
        self._may_invoke = may_invoke
        self._factory = sink_factory or default_sink_factory
        self._resolver = url_resolver
        self._on_enqueued = on_enqueued
        self._clock = clock
        self._sinks: dict[str, Sink] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def _check_invoke(self, source: str, target: str) -> None:
        """A function destination runs as the destination's owner: the sending function's identity
        must be allowed to invoke the target (RBAC in a cluster). Refused, the record stays queued and
        its delivery is retried, so granting the permission later delivers it."""
        if self._may_invoke is None:
            return
        if not await self._may_invoke(source, target):
            raise DestinationError(
                f"function {source} may not invoke {target} (verb invoke on functions.lamina.dev for the "
                "function's ServiceAccount): grant it with a RoleBinding in the target's namespace"
            )

    async def _url(self, namespace: str, kind: str, target: BrokerEndpoint) -> str:
        if target.url:
            return target.url
        if target.url_from is None:
            raise DestinationError(f"{kind} destination has neither url nor urlFrom")
        if self._resolver is None:
            raise DestinationError(f"{kind} destination uses urlFrom but no secret resolver is configured")
        try:
            return await self._resolver(namespace, target.url_from)
        except Exception as e:
            raise DestinationError(f"cannot resolve urlFrom of the {kind} destination: {e}") from e

    async def _credentials(self, namespace: str, endpoint: Endpoint) -> dict[tuple[str, str], str]:
        """The Secret keys a kafka or sqs destination logs in with, read through the resolver."""
        found: dict[tuple[str, str], str] = {}
        for name, key, required in endpoint.secret_keys():
            if self._resolver is None:
                raise DestinationError(
                    f"{endpoint.kind} destination reads Secret {name}: no resolver configured"
                )
            try:
                ref = SecretValueFrom(secret_key_ref=KeyRef(name=name, key=key))
                found[(name, key)] = await self._resolver(namespace, ref)
            except Exception as e:
                if required:
                    raise DestinationError(
                        f"{endpoint.kind} destination: Secret {name} has no key {key!r}"
                    ) from e
        return found

    async def _login_sink(self, namespace: str, endpoint: Endpoint) -> Sink:
        """A connected kafka / sqs sink (no URL: the endpoint and its credentials say where)."""
        credentials = await self._credentials(namespace, endpoint)
        key = self._key(endpoint, namespace)
        sink = self._sinks.get(key)
        if sink is None:
            try:
                made = make_sink(endpoint, None, lambda name, k: credentials.get((name, k)))
            except ValueError as e:
                raise DestinationError(f"bad {endpoint.kind} destination: {e}") from e
            await made.connect()
            sink = self._sinks[key] = made
        return sink

    @staticmethod
    def _key(endpoint: Endpoint, url: str) -> str:
        return json.dumps([endpoint.to_dict(), url], sort_keys=True)

    async def _sink(self, endpoint: Endpoint, url: str) -> Sink:
        key = self._key(endpoint, url)
        sink = self._sinks.get(key)
        if sink is not None:
            return sink
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            sink = self._sinks.get(key)
            if sink is None:
                sink = await self._factory(endpoint, url)
                self._sinks[key] = sink
        return sink

    async def _drop_sink(self, endpoint: Endpoint, url: str) -> None:
        sink = self._sinks.pop(self._key(endpoint, url), None)
        if sink is not None:
            try:
                await sink.close()
            except Exception:
                pass

    async def deliver(
        self, event: QueuedEvent, destination: str, endpoint: Endpoint, record: dict[str, Any]
    ) -> None:
        """Deliver ``record`` (about ``event``) to ``endpoint``; ``destination`` is onSuccess/onFailure."""
        body = json.dumps(record, separators=(",", ":")).encode()
        if endpoint.function is not None:
            target = endpoint.function.name
            target_key = f"{endpoint.function.namespace or event.namespace}/{target}"
            await self._check_invoke(event.function, target_key)
            now = self._clock() if self._clock else None
            ev = QueuedEvent.new(
                target_key,
                body,
                request_id=record_event_id(event.id, destination),
                now=now,
            )
            try:
                added = await self.store.enqueue(ev)
            except Exception as e:
                raise DestinationError(f"cannot enqueue the record for function {target}: {e}") from e
            if added and self._on_enqueued is not None:
                self._on_enqueued(ev)
            return
        kind, broker = endpoint.kind, endpoint.target
        url = (
            await self._url(event.namespace, kind, broker)
            if isinstance(broker, BrokerEndpoint)
            else event.namespace  # kafka / sqs: no URL; their sinks are kept per namespace
        )
        headers = {
            "content-type": "application/json",
            "lamina-request-id": event.id,
            "lamina-function": event.function,
            "lamina-condition": record.get("requestContext", {}).get("condition", ""),
        }
        try:
            if isinstance(broker, BrokerEndpoint):
                sink = await self._sink(endpoint, url)
            else:
                sink = await self._login_sink(event.namespace, endpoint)
            await sink.publish(body, headers)
        except DestinationError:
            raise
        except Exception as e:
            await self._drop_sink(endpoint, url)  # reconnect on the next attempt
            raise DestinationError(f"{kind} destination failed: {type(e).__name__}: {e}") from e

    async def close(self) -> None:
        sinks, self._sinks = list(self._sinks.values()), {}
        for sink in sinks:
            try:
                await sink.close()
            except Exception:
                pass
