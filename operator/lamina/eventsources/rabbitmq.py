"""RabbitMQ: a durable queue consumed with manual acks and a prefetch of two batches.

With a prefetch of one batch the broker could send the next batch only after the worker acknowledged
the last one, so every batch began with an idle round trip (the profile of the throughput benchmark
was mostly the event loop waiting); with two, the next batch arrives while the function runs.

RabbitMQ keeps every delivered-but-unacknowledged message for the consumer's channel and puts it back
in the queue when the channel closes, so a worker that dies or loses its connection loses nothing.
The connection is not "robust" (no silent reconnects): a lost broker surfaces as an error and the
mapping reconnects with backoff; messages fetched on the old channel are then ignored because the
broker has already requeued them.

Queues carry no order that survives redelivery, so the mapping retries only the failed records.
The record id (``itemIdentifier``) is the message's ``message_id`` when the publisher set one, else
an id the worker makes up on delivery. :class:`RabbitMQSink` always sets ``message_id``, publishes
persistent messages and waits for the broker's confirm.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Sequence
from datetime import UTC
from typing import Any

import aio_pika
import aio_pika.exceptions
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue

from lamina.eventsources.base import Sink, Source, SourceError, SourceRecord


def _header_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


async def _declare(
    connection: AbstractConnection, queue: str, **channel_args: Any
) -> tuple[AbstractChannel, AbstractQueue]:
    """Open a channel and the durable queue: use it as it is when it exists, else create it."""
    channel = await connection.channel(**channel_args)
    try:
        return channel, await channel.declare_queue(queue, passive=True)
    except aio_pika.exceptions.ChannelClosed:
        # A passive declare of a missing queue closes the channel; open another and create it.
        channel = await connection.channel(**channel_args)
        return channel, await channel.declare_queue(queue, durable=True)


class RabbitMQSource(Source):
    kind = "rabbitmq"
    ordered = False

    def __init__(self, url: str, queue: str, *, prefetch: int = 10, linger_seconds: float = 0.002) -> None:
        super().__init__(queue)
        self.url = url
        self.prefetch = max(1, prefetch)
        self.linger_seconds = linger_seconds
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._buffer: asyncio.Queue[tuple[int, AbstractIncomingMessage]] = asyncio.Queue()
        self._generation = 0
        self._unacked: set[int] = set()  # delivery tags of this channel not yet acknowledged

    async def connect(self) -> None:
        self._generation += 1
        self._buffer = asyncio.Queue()
        self._unacked = set()
        generation = self._generation
        self._connection = await aio_pika.connect(self.url, timeout=10)
        try:
            self._channel, self._queue = await _declare(self._connection, self.name)
            await self._channel.set_qos(prefetch_count=self.prefetch)

            async def on_message(message: AbstractIncomingMessage) -> None:
                if generation == self._generation and message.delivery_tag is not None:
                    self._unacked.add(message.delivery_tag)
                self._buffer.put_nowait((generation, message))

            self._consumer_tag = await self._queue.consume(on_message, no_ack=False)
        except BaseException:
            await self.close()
            raise

    def _live(self) -> None:
        if (
            self._connection is None
            or self._connection.is_closed
            or self._channel is None
            or self._channel.is_closed
        ):
            raise SourceError(f"not connected to RabbitMQ queue {self.name}")

    async def fetch(
        self, max_records: int, wait_seconds: float, key: str | None = None
    ) -> list[SourceRecord]:
        self._live()
        records: list[SourceRecord] = []
        deadline = time.monotonic() + max(0.0, wait_seconds)
        while len(records) < max_records:
            try:
                generation, message = self._buffer.get_nowait()
            except asyncio.QueueEmpty:
                if records:
                    # The broker pushes deliveries one after the other: give the rest of a burst a
                    # moment to arrive rather than invoking with a sliver of it.
                    wait = self.linger_seconds
                else:
                    wait = min(deadline - time.monotonic(), 0.5)  # wake up to notice a closed channel
                    if wait <= 0:
                        break
                try:
                    generation, message = await asyncio.wait_for(self._buffer.get(), wait)
                except TimeoutError:
                    self._live()
                    if records:
                        break
                    continue
            if generation == self._generation:
                records.append(self._record(message))
        return records

    def _record(self, message: AbstractIncomingMessage) -> SourceRecord:
        headers = {str(k): _header_text(v) for k, v in (message.headers or {}).items()}
        attributes = dict(headers)
        if message.content_type:
            attributes.setdefault("ContentType", message.content_type)
        delivery_count = headers.get("x-delivery-count")  # quorum queues count redeliveries
        if delivery_count is not None and delivery_count.isdigit():
            receive_count = int(delivery_count) + 1
        else:
            receive_count = 2 if message.redelivered else 1
        stamp = message.timestamp
        if stamp is not None and stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        arrival = stamp.timestamp() if stamp is not None else time.time()
        record_id = message.message_id or f"lamina-{uuid.uuid4()}"
        return SourceRecord(
            id=record_id,
            body=message.body,
            attributes=attributes,
            arrival_time=arrival,
            ordering_key=None,
            receive_count=receive_count,
            source_fields={
                "queue": self.name,
                "messageId": record_id,
                "deliveryTag": message.delivery_tag,
                "redelivered": bool(message.redelivered),
                "exchange": message.exchange or "",
                "routingKey": message.routing_key or "",
            },
            handle=(self._generation, message),
        )

    def _current(self, records: Sequence[SourceRecord]) -> list[AbstractIncomingMessage]:
        # Messages of an older channel were requeued by the broker when that channel closed.
        return [r.handle[1] for r in records if r.handle[0] == self._generation]

    async def ack(self, records: Sequence[SourceRecord]) -> None:
        self._live()
        messages = self._current(records)
        if not messages:
            return
        tags = {m.delivery_tag for m in messages}
        # Consumed messages always carry a tag (no_ack is off); only a get with no_ack has none.
        last = max(messages, key=lambda m: m.delivery_tag or 0)
        if all(t in tags for t in self._unacked if t <= (last.delivery_tag or 0)):
            # Everything up to the last one goes: one frame acknowledges them all.
            await last.ack(multiple=True)
        else:
            for message in messages:
                await message.ack()
        self._unacked.difference_update(tags)

    async def release(self, records: Sequence[SourceRecord]) -> None:
        self._live()
        for message in self._current(records):
            await message.nack(requeue=True)
            self._unacked.discard(message.delivery_tag)

    async def close(self) -> None:
        connection = self._connection
        self._connection = self._channel = self._queue = None
        self._consumer_tag = None
        self._generation += 1
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(Exception):
                await connection.close()


class RabbitMQSink(Sink):
    """Publishes persistent messages to a durable queue through the default exchange, with confirms."""

    kind = "rabbitmq"

    def __init__(self, url: str, queue: str) -> None:
        super().__init__(queue)
        self.url = url
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None

    async def connect(self) -> None:
        self._connection = await aio_pika.connect(self.url, timeout=10)
        try:
            self._channel, _ = await _declare(self._connection, self.name, publisher_confirms=True)
        except BaseException:
            await self.close()
            raise

    async def publish(self, body: bytes, headers: dict[str, str] | None = None) -> None:
        if (
            self._connection is None
            or self._connection.is_closed
            or self._channel is None
            or (self._channel.is_closed)
        ):
            await self.close()
            await self.connect()
        assert self._channel is not None
        message = aio_pika.Message(
            body=body,
            headers=dict(headers or {}),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=str(uuid.uuid4()),
            timestamp=time.time(),
        )
        await self._channel.default_exchange.publish(message, routing_key=self.name, mandatory=True)

    async def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(Exception):
                await connection.close()
