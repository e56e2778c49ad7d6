"""Redis Streams: a consumer group per mapping, XREADGROUP / XACK, XAUTOCLAIM for what a dead worker held.

Record layout in the stream: an entry's ``body`` field is the record body and its other fields become
attributes (``messageAttributes`` in the event). An entry without a ``body`` field is delivered with
its whole field map as a JSON object for body. :class:`RedisStreamSink` writes entries in that layout.

Every worker of a mapping joins the group ``lamina-<esm>`` under a fresh consumer name. On connect it
claims every pending entry of the group (``XAUTOCLAIM`` with idle time 0) and delivers those first:
they are the records a previous worker read and never acknowledged. While running it also claims
entries that stayed pending longer than ``claim_idle_seconds`` (a worker that died while another was
already running, as during a rolling update). One worker per mapping is the design; two at once get
at-least-once delivery, never loss.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from lamina.eventsources.base import LATEST, Sink, Source, SourceRecord

BODY_FIELD = b"body"


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def entry_to_record(stream: str, entry_id: bytes | str, fields: dict[Any, Any]) -> SourceRecord:
    """Turn one stream entry into a :class:`SourceRecord` (see the module doc for the layout)."""
    eid = _text(entry_id)
    raw = {(k if isinstance(k, bytes) else str(k).encode()): v for k, v in fields.items()}
    if BODY_FIELD in raw:
        body = raw.pop(BODY_FIELD)
        body = body if isinstance(body, bytes) else str(body).encode()
        attributes = {_text(k): _text(v) for k, v in raw.items()}
    else:
        body = json.dumps({_text(k): _text(v) for k, v in raw.items()}, separators=(",", ":")).encode()
        attributes = {}
    try:
        arrival = int(eid.split("-", 1)[0]) / 1000.0
    except ValueError:
        arrival = time.time()
    return SourceRecord(
        id=eid,
        body=body,
        attributes=attributes,
        arrival_time=arrival,
        ordering_key=stream,
        source_fields={"stream": stream, "entryId": eid},
    )


class RedisStreamSource(Source):
    kind = "redis"
    ordered = True

    def __init__(
        self,
        url: str,
        stream: str,
        group: str,
        *,
        consumer: str | None = None,
        starting_position: str = "TRIM_HORIZON",
        claim_idle_seconds: float = 300.0,
    ) -> None:
        super().__init__(stream)
        self.url = url
        self.group = group
        self.consumer = consumer or default_consumer_name()
        self.starting_position = starting_position
        self.claim_idle_seconds = claim_idle_seconds
        self._redis: aioredis.Redis | None = None
        self._recover_cursor: str | None = None  # not None while claiming what is pending at start
        self._inflight: set[str] = set()
        self._last_idle_claim = 0.0

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            raise RuntimeError("source not connected")
        return self._redis

    async def connect(self) -> None:
        self._redis = aioredis.Redis.from_url(self.url, socket_connect_timeout=5)
        try:
            await self._redis.ping()
            start = "$" if self.starting_position == LATEST else "0"
            try:
                await self._redis.xgroup_create(self.name, self.group, id=start, mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        except BaseException:
            await self.close()
            raise
        self._inflight.clear()
        self._recover_cursor = "0-0"
        self._last_idle_claim = time.monotonic()

    async def _receive_counts(self, ids: list[str]) -> dict[str, int]:
        if not ids:
            return {}
        rows: Any = await self.redis.xpending_range(  # redis-py types its replies loosely
            self.name, self.group, min=ids[0], max=ids[-1], count=len(ids) * 2, consumername=self.consumer
        )
        return {_text(r["message_id"]): int(r["times_delivered"]) for r in rows}

    async def _claim(self, min_idle_ms: int, start: str, count: int) -> tuple[str, list[SourceRecord]]:
        reply = await self.redis.xautoclaim(
            self.name, self.group, self.consumer, min_idle_time=min_idle_ms, start_id=start, count=count
        )
        cursor, entries = _text(reply[0]), reply[1]
        records: list[SourceRecord] = []
        gone: list[str] = []
        for entry_id, fields in entries:
            eid = _text(entry_id)
            if fields is None:  # trimmed away while pending (Redis < 7 reports it this way)
                gone.append(eid)
            elif eid not in self._inflight:
                records.append(entry_to_record(self.name, eid, fields))
        if gone:
            await self.redis.xack(self.name, self.group, *gone)
        counts = await self._receive_counts([r.id for r in records])
        for rec in records:
            rec.receive_count = max(1, counts.get(rec.id, 2))
        return cursor, records

    async def _forget_idle_consumers(self) -> None:
        for info in await self.redis.xinfo_consumers(self.name, self.group):
            name = _text(info["name"])
            if name != self.consumer and int(info["pending"]) == 0:
                await self.redis.xgroup_delconsumer(self.name, self.group, name)

    async def fetch(
        self, max_records: int, wait_seconds: float, key: str | None = None
    ) -> list[SourceRecord]:
        records: list[SourceRecord] = []
        # 1. Whatever the group still has pending from before (a dead worker, a released batch).
        while self._recover_cursor is not None and not records:
            cursor, records = await self._claim(0, self._recover_cursor, max_records)
            if cursor == "0-0":
                self._recover_cursor = None
                await self._forget_idle_consumers()
            else:
                self._recover_cursor = cursor
        # 2. Entries another (dead) consumer kept pending for too long.
        if not records and time.monotonic() - self._last_idle_claim >= self.claim_idle_seconds / 2:
            self._last_idle_claim = time.monotonic()
            _, records = await self._claim(int(self.claim_idle_seconds * 1000), "0-0", max_records)
        # 3. New entries.
        if not records:
            block = int(wait_seconds * 1000) if wait_seconds >= 0.001 else None
            reply: Any = await self.redis.xreadgroup(  # redis-py types its replies loosely
                self.group, self.consumer, {self.name: ">"}, count=max_records, block=block
            )
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    records.append(entry_to_record(self.name, entry_id, fields or {}))
        self._inflight.update(r.id for r in records)
        return records

    async def ack(self, records: Sequence[SourceRecord]) -> None:
        ids = [r.id for r in records]
        if ids:
            await self.redis.xack(self.name, self.group, *ids)
            self._inflight.difference_update(ids)

    async def release(self, records: Sequence[SourceRecord]) -> None:
        # They stay in this consumer's pending list; claim them again on the next fetch.
        self._inflight.difference_update(r.id for r in records)
        self._recover_cursor = "0-0"

    async def close(self) -> None:
        client, self._redis = self._redis, None
        if client is not None:
            try:
                await client.aclose()
            except Exception:  # closing a broken connection
                pass


class RedisStreamSink(Sink):
    kind = "redis"

    def __init__(self, url: str, stream: str, *, maxlen: int | None = None) -> None:
        super().__init__(stream)
        self.url = url
        self.maxlen = maxlen
        self._redis: aioredis.Redis | None = None

    async def connect(self) -> None:
        self._redis = aioredis.Redis.from_url(self.url, socket_connect_timeout=5)
        await self._redis.ping()

    async def publish(self, body: bytes, headers: dict[str, str] | None = None) -> None:
        if self._redis is None:
            await self.connect()
        assert self._redis is not None
        fields: dict[Any, Any] = {k: v for k, v in (headers or {}).items() if k != "body"}
        fields["body"] = body
        await self._redis.xadd(self.name, fields, maxlen=self.maxlen, approximate=True)

    async def close(self) -> None:
        client, self._redis = self._redis, None
        if client is not None:
            try:
                await client.aclose()
            except Exception:
                pass
