"""NATS JetStream: a durable pull consumer per mapping with explicit acks.

The stream is looked up by subject (or taken from the endpoint's ``stream``) and created with file
storage when missing. The durable consumer ``lamina-<esm>`` keeps the position on the server, so a
new worker continues where the last one stopped; records a worker fetched and never acknowledged are
redelivered once ``ack_wait`` runs out. While the mapping holds records (the function runs, or a retry
waits) it sends in-progress acks every ``ack_wait / 3`` seconds so that they are not redelivered under
its feet.

The consumer's ``max_ack_pending`` is the batch size: the mapping never holds more than one batch, and
a worker that replaces a dead one gets nothing new until the dead one's batch comes back (after
``ack_wait``), so records are processed in stream order even across crashes.

The connection does not reconnect by itself: a lost server surfaces as an error, and the mapping
reconnects with backoff, so that the outage shows up in the mapping's state.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api

from lamina.eventsources.base import LATEST, Sink, Source, SourceError, SourceRecord

_STREAM_NAME_BAD = re.compile(r"[^A-Za-z0-9_-]")


def stream_name_for(subject: str) -> str:
    """The name lamina gives a stream it creates for ``subject`` (``orders.*`` -> ``orders__``)."""
    return _STREAM_NAME_BAD.sub("_", subject)


async def _quiet(_: Any) -> None:
    return None


async def open_connection(url: str) -> NATS:
    return await nats.connect(
        servers=[url],
        allow_reconnect=False,
        connect_timeout=5,
        error_cb=_quiet,
        disconnected_cb=None,
    )


async def ensure_stream(js: Any, subject: str, stream: str | None) -> str:
    """Name of the stream that stores ``subject``; creates one (file storage) when there is none."""
    if stream:
        try:
            await js.stream_info(stream)
            return stream
        except nats.js.errors.NotFoundError:
            pass
    else:
        try:
            return await js.find_stream_name_by_subject(subject)
        except nats.js.errors.NotFoundError:
            stream = stream_name_for(subject)
    await js.add_stream(api.StreamConfig(name=stream, subjects=[subject], storage=api.StorageType.FILE))
    return stream


class NatsJetStreamSource(Source):
    kind = "nats"
    ordered = True

    def __init__(
        self,
        url: str,
        subject: str,
        durable: str,
        *,
        stream: str | None = None,
        starting_position: str = "TRIM_HORIZON",
        ack_wait_seconds: float = 30.0,
        max_ack_pending: int = 10,
    ) -> None:
        super().__init__(subject)
        self.url = url
        self.subject = subject
        self.stream = stream
        self.durable = durable
        self.starting_position = starting_position
        self.ack_wait_seconds = ack_wait_seconds
        self.max_ack_pending = max_ack_pending
        self.heartbeat_interval = ack_wait_seconds / 3
        self._nc: NATS | None = None
        self._psub: Any = None

    @property
    def arn(self) -> str:
        return f"lamina:nats:{self.stream or stream_name_for(self.subject)}:{self.subject}"

    async def connect(self) -> None:
        self._nc = await open_connection(self.url)
        try:
            js = self._nc.jetstream()
            self.stream = await ensure_stream(js, self.subject, self.stream)
            deliver = api.DeliverPolicy.NEW if self.starting_position == LATEST else api.DeliverPolicy.ALL
            config = api.ConsumerConfig(
                durable_name=self.durable,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=self.ack_wait_seconds,
                deliver_policy=deliver,
                max_deliver=-1,
                max_ack_pending=self.max_ack_pending,
                filter_subject=self.subject,
            )
            await self._ensure_consumer(js, config)
            self._psub = await js.pull_subscribe_bind(durable=self.durable, stream=self.stream)
        except BaseException:
            await self.close()
            raise

    async def _ensure_consumer(self, js: Any, config: api.ConsumerConfig) -> None:
        """Create the durable consumer, or update the settings lamina owns (keeping the position)."""
        try:
            info = await js.consumer_info(self.stream, self.durable)
        except nats.js.errors.NotFoundError:
            await js.add_consumer(self.stream, config)
            return
        current = info.config
        if current.max_ack_pending != self.max_ack_pending or current.ack_wait != self.ack_wait_seconds:
            current.max_ack_pending = self.max_ack_pending
            current.ack_wait = self.ack_wait_seconds
            await js.add_consumer(self.stream, current)

    def _live(self) -> NATS:
        if self._nc is None or self._nc.is_closed or self._psub is None:
            raise SourceError(f"not connected to NATS at {self.url}")
        return self._nc

    async def fetch(
        self, max_records: int, wait_seconds: float, key: str | None = None
    ) -> list[SourceRecord]:
        self._live()
        try:
            msgs = await self._psub.fetch(batch=max_records, timeout=max(wait_seconds, 0.05))
        except (nats.errors.TimeoutError, TimeoutError):
            self._live()  # a closed connection also looks like "nothing arrived"
            return []
        return [self._record(m) for m in msgs]

    def _record(self, msg: Msg) -> SourceRecord:
        meta = msg.metadata
        seq = meta.sequence.stream
        headers = {str(k): str(v) for k, v in (msg.headers or {}).items()}
        return SourceRecord(
            id=str(seq),
            body=msg.data,
            attributes=headers,
            arrival_time=meta.timestamp.timestamp(),
            ordering_key=msg.subject,
            receive_count=meta.num_delivered,
            source_fields={
                "stream": meta.stream,
                "subject": msg.subject,
                "sequence": seq,
                "consumer": meta.consumer,
                "consumerSequence": meta.sequence.consumer,
            },
            handle=msg,
        )

    async def ack(self, records: Sequence[SourceRecord]) -> None:
        nc = self._live()
        for rec in records:
            try:
                await rec.handle.ack()
            except nats.errors.MsgAlreadyAckdError:
                pass
        await nc.flush(timeout=10)

    async def touch(self, records: Sequence[SourceRecord]) -> None:
        nc = self._live()
        for rec in records:
            await rec.handle.in_progress()
        await nc.flush(timeout=10)

    async def release(self, records: Sequence[SourceRecord]) -> None:
        nc = self._live()
        for rec in records:
            try:
                await rec.handle.nak()
            except nats.errors.MsgAlreadyAckdError:
                pass
        await nc.flush(timeout=10)

    async def close(self) -> None:
        nc, self._nc, self._psub = self._nc, None, None
        if nc is not None and not nc.is_closed:
            try:
                await nc.close()
            except Exception:  # closing a broken connection
                pass


class NatsJetStreamSink(Sink):
    """Publishes to a subject through JetStream (waits for the stream's acknowledgement)."""

    kind = "nats"

    def __init__(self, url: str, subject: str, *, stream: str | None = None) -> None:
        super().__init__(subject)
        self.url = url
        self.subject = subject
        self.stream = stream
        self._nc: NATS | None = None
        self._js: Any = None

    async def connect(self) -> None:
        self._nc = await open_connection(self.url)
        try:
            self._js = self._nc.jetstream()
            self.stream = await ensure_stream(self._js, self.subject, self.stream)
        except BaseException:
            await self.close()
            raise

    async def publish(self, body: bytes, headers: dict[str, str] | None = None) -> None:
        if self._nc is None or self._nc.is_closed:
            await self.close()
            await self.connect()
        await self._js.publish(self.subject, body, headers=headers or None, stream=self.stream)

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            try:
                await nc.close()
            except Exception:
                pass
