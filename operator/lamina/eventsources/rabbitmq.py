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
import aiormq
import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractQueue
from aiormq.abc import DeliveredMessage

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
    """Consumes with aiormq, the AMQP layer aio-pika is built on: a delivery is handed over as it is
    parsed, without aio-pika's per-message object (its attribute guards were a sixth of the worker's
    CPU in the throughput profile)."""

    kind = "rabbitmq"
    ordered = False

    def __init__(self, url: str, queue: str, *, prefetch: int = 10, linger_seconds: float = 0.002) -> None:
        super().__init__(queue)
        self.url = url
        self.prefetch = max(1, prefetch)
        self.linger_seconds = linger_seconds
        self._connection: Any = None
        self._channel: Any = None
        self._buffer: asyncio.Queue[tuple[int, DeliveredMessage]] = asyncio.Queue()
        self._generation = 0
        self._unacked: set[int] = set()  # delivery tags of this channel not yet acknowledged

    async def connect(self) -> None:
        self._generation += 1
        self._buffer = asyncio.Queue()
        self._unacked = set()
        generation = self._generation
        self._connection = await asyncio.wait_for(aiormq.connect(self.url), 10)
        try:
            channel = await self._connection.channel()
            try:
                await channel.queue_declare(self.name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                # A passive declare of a missing queue closes the channel; open another and create it.
                channel = await self._connection.channel()
                await channel.queue_declare(self.name, durable=True)
            await channel.basic_qos(prefetch_count=self.prefetch)
            self._channel = channel

            async def on_message(message: DeliveredMessage) -> None:
                tag = message.delivery_tag
                if generation == self._generation and tag is not None:
                    self._unacked.add(tag)
                self._buffer.put_nowait((generation, message))

            await channel.basic_consume(self.name, on_message, no_ack=False)
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

    def _record(self, message: DeliveredMessage) -> SourceRecord:
        properties = message.header.properties
        headers = {str(k): _header_text(v) for k, v in (properties.headers or {}).items()}
        attributes = dict(headers)
        if properties.content_type:
            attributes.setdefault("ContentType", properties.content_type)
        delivery: Any = message.delivery  # a Basic.Deliver: this is a consumer's delivery
        delivery_count = headers.get("x-delivery-count")  # quorum queues count redeliveries
        if delivery_count is not None and delivery_count.isdigit():
            receive_count = int(delivery_count) + 1
        else:
            receive_count = 2 if delivery.redelivered else 1
        stamp = properties.timestamp
        if stamp is not None and stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        arrival = stamp.timestamp() if stamp is not None else time.time()
        record_id = properties.message_id or f"lamina-{uuid.uuid4()}"
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
                "deliveryTag": delivery.delivery_tag,
                "redelivered": bool(delivery.redelivered),
                "exchange": delivery.exchange or "",
                "routingKey": delivery.routing_key or "",
            },
            handle=(self._generation, delivery.delivery_tag),
        )

    def _current(self, records: Sequence[SourceRecord]) -> list[int]:
        # Messages of an older channel were requeued by the broker when that channel closed.
        return [r.handle[1] for r in records if r.handle[0] == self._generation]

    async def ack(self, records: Sequence[SourceRecord]) -> None:
        self._live()
        tags = set(self._current(records))
        if not tags:
            return
        last = max(tags)
        if all(t in tags for t in self._unacked if t <= last):
            # Everything up to the last one goes: one frame acknowledges them all.
            await self._channel.basic_ack(last, multiple=True)
        else:
            for tag in sorted(tags):
                await self._channel.basic_ack(tag)
        self._unacked.difference_update(tags)

    async def release(self, records: Sequence[SourceRecord]) -> None:
        self._live()
        for tag in self._current(records):
            await self._channel.basic_nack(tag, requeue=True)
            self._unacked.discard(tag)

    async def close(self) -> None:
        connection = self._connection
        self._connection = self._channel = None
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
