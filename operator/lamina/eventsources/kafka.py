"""Apache Kafka (self-managed or MSK-like): a consumer group per mapping, batches per partition.

Semantics follow Lambda's Kafka event source mappings:

* every worker of a mapping is a member of the consumer group ``lamina-<esm>`` (or the group the
  spec names); Kafka spreads the topic's partitions over them, so ``scalingConfig`` workers process
  different partitions side by side;
* a batch holds records of one partition, in offset order (the mapping asks for one partition at a
  time, see ``Source.partitioned``), and the event groups them under ``"<topic>-<partition>"`` in
  Lambda's shape (base64 ``key`` and ``value``, headers as byte arrays);
* offsets are committed only for records that are done (processed, filtered out or written to the
  failure destination), and only up to the first record that is not: a commit always means
  "everything before this offset is done". Nothing is committed automatically;
* ``startingPosition`` applies when the group has no committed offset for a partition: the worker
  then resolves TRIM_HORIZON / LATEST / AT_TIMESTAMP to an offset and commits it at once, so that a
  restart before the first batch starts from the same place;
* a partition taken away by a rebalance forgets what it held: the new owner starts again from the
  last commit (at least once).

Credentials: TLS (with an optional CA bundle) and SASL (SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN) from
the Secrets the spec names. A broker that refuses them raises :class:`CredentialsError` naming the
Secret, so the mapping's status says which Secret to fix; a secret value never appears in an error.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from lamina.eventsources.base import (
    AT_TIMESTAMP,
    LATEST,
    CredentialsError,
    Sink,
    Source,
    SourceError,
    SourceRecord,
)

log = logging.getLogger(__name__)

#: Lambda calls a self-managed cluster's events ``SelfManagedKafka`` (MSK's are ``aws:kafka``).
EVENT_SOURCE = "SelfManagedKafka"
JOIN_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
MAX_FETCH_BYTES = 16 * 1024 * 1024  # larger than any record the payload limit lets through
#: aiokafka retries a lost broker by itself and its fetches then only come back empty: after this
#: many seconds without a record, an empty poll asks the cluster for its metadata, so a broker that
#: is gone becomes an error the mapping reports (and reconnects from the last commit).
PROBE_SECONDS = 3.0


@dataclass(frozen=True)
class KafkaAccess:
    """How to reach and log in to a cluster: everything but the topic.

    ``sasl_secret`` and ``ca_secret`` name the Secrets the credentials come from (for error messages
    only); ``ca`` is a PEM bundle; a ``mechanism`` without ``username``/``password`` means the Secret
    (or its key) is missing.
    """

    bootstrap_servers: tuple[str, ...]
    tls: bool = False
    ca: str | None = None
    mechanism: str | None = None  # SCRAM-SHA-512, SCRAM-SHA-256, PLAIN
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sasl_secret: str | None = None
    ca_secret: str | None = None

    @property
    def servers(self) -> str:
        return ",".join(self.bootstrap_servers)

    def client_options(self) -> dict[str, Any]:
        """aiokafka keyword arguments for the security settings."""
        if self.mechanism and (not self.username or self.password is None):
            missing = "username" if not self.username else "password"
            raise CredentialsError(
                f"Secret {self.sasl_secret} is missing or has no key {missing!r} (SASL {self.mechanism})",
                self.sasl_secret,
            )
        if self.ca_secret and not self.ca:
            raise CredentialsError(
                f"Secret {self.ca_secret} is missing or has no CA certificate key", self.ca_secret
            )
        protocol = ("SASL_" if self.mechanism else "") + ("SSL" if self.tls else "PLAINTEXT")
        options: dict[str, Any] = {"bootstrap_servers": self.servers, "security_protocol": protocol}
        if self.tls:
            options["ssl_context"] = (
                ssl.create_default_context(cadata=self.ca) if self.ca else (ssl.create_default_context())
            )
        if self.mechanism:
            options.update(
                sasl_mechanism=self.mechanism,
                sasl_plain_username=self.username,
                sasl_plain_password=self.password,
            )
        return options

    async def explain(self, exc: BaseException) -> SourceError:
        """Why a client could not start: the broker's own word when it refused the login.

        aiokafka reports a refused login as "unable to bootstrap"; one direct connection tells a
        refused login (or handshake) apart from a broker that is down.
        """
        from aiokafka.conn import create_conn

        options = self.client_options()
        host, _, port = self.bootstrap_servers[0].rpartition(":")
        options.pop("bootstrap_servers")
        try:
            conn = await asyncio.wait_for(create_conn(host, int(port), **options), 15)
        except (KafkaError, OSError, TimeoutError, ssl.SSLError) as probe:
            text = f"{type(probe).__name__}: {probe}"
            if "Sasl" in text or "uthentication" in text:
                return CredentialsError(
                    f"Kafka refused the {self.mechanism} login from Secret {self.sasl_secret}",
                    self.sasl_secret,
                )
            if isinstance(probe, ssl.SSLError) or "SSL" in text or "certificate" in text:
                where = f" (CA from Secret {self.ca_secret})" if self.ca_secret else ""
                return CredentialsError(
                    f"TLS handshake with {self.servers} failed{where}: {text}", self.ca_secret
                )
            return SourceError(f"cannot reach Kafka at {self.servers}: {text}")
        conn.close()
        return SourceError(f"Kafka at {self.servers}: {type(exc).__name__}: {exc}")


async def _stop_quietly(client: Any) -> None:
    """Stop an aiokafka client whose broker may be gone. aiokafka can let a CancelledError of its
    own tasks escape from ``stop()``; that one is swallowed, a cancellation of ours is not."""
    try:
        await asyncio.wait_for(client.stop(), STOP_TIMEOUT)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
    except Exception as exc:
        log.debug("stopping a Kafka client: %s", exc)


def record_id(topic: str, partition: int, offset: int) -> str:
    """A record's ``itemIdentifier``: ``<topic>-<partition>:<offset>``."""
    return f"{topic}-{partition}:{offset}"


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


class _Partition:
    """What the worker was handed from one partition and not yet committed, in offset order."""

    __slots__ = ("buffer", "committed", "done", "outstanding")

    def __init__(self) -> None:
        self.buffer: deque[SourceRecord] = deque()  # fetched, not yet handed out
        self.outstanding: deque[int] = deque()  # offsets handed out, in order
        self.done: set[int] = set()  # handed-out offsets that are finished
        self.committed = -1  # the offset last committed (the next one to read)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.source.flush_commits()  # what is done of them is committed before they move
        for tp in revoked:
            self.source._forget(tp)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.source._assigned(list(assigned))


class KafkaSource(Source):
    kind = "kafka"
    ordered = True
    partitioned = True

    def __init__(
        self,
        access: KafkaAccess,
        topic: str,
        group: str,
        *,
        starting_position: str = "TRIM_HORIZON",
        starting_timestamp: float | None = None,
        max_poll_records: int = 500,
    ) -> None:
        super().__init__(topic)
        self.access = access
        self.group = group
        self.starting_position = starting_position
        self.starting_timestamp = starting_timestamp
        self.max_poll_records = max(1, max_poll_records)
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: dict[TopicPartition, _Partition] = {}
        self._joined = asyncio.Event()
        self._prefix = b""
        self._to_commit: dict[TopicPartition, int] = {}  # the next offset to commit, per partition
        self._committer: asyncio.Task[None] | None = None
        self._heard = 0.0  # monotonic time the cluster last answered (records or metadata)

    @property
    def arn(self) -> str:
        return f"lamina:kafka:{self.access.servers}/{self.name}"

    # ------------------------------------------------------------------ connection

    async def connect(self) -> None:
        self._partitions = {}
        self._joined = asyncio.Event()
        options = self.access.client_options()
        consumer = AIOKafkaConsumer(
            self.name,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # only reached when a starting offset could not be set
            max_partition_fetch_bytes=MAX_FETCH_BYTES,
            fetch_max_bytes=MAX_FETCH_BYTES * 2,
            fetch_max_wait_ms=100,
            session_timeout_ms=30_000,
            heartbeat_interval_ms=3_000,
            max_poll_interval_ms=900_000 + 60_000,  # a batch may run a 15-minute function
            retry_backoff_ms=200,
            request_timeout_ms=30_000,
            **options,
        )
        consumer.subscribe([self.name], listener=_Rebalance(self))
        self._consumer = consumer  # the group may be joined (and the listener called) inside start()
        self._heard = time.monotonic()
        self._prefix = self._event_prefix()
        try:
            await consumer.start()
        except Exception as exc:
            self._consumer = None
            await _stop_quietly(consumer)
            raise await self.access.explain(exc) from exc
        try:
            # Joining the group assigns partitions (possibly none: more workers than partitions).
            await asyncio.wait_for(self._joined.wait(), JOIN_TIMEOUT)
        except TimeoutError:
            await self.close()
            raise SourceError(
                f"did not join consumer group {self.group} of {self.access.servers} "
                f"within {JOIN_TIMEOUT:.0f}s"
            ) from None
        except BaseException:
            await self.close()
            raise

    async def _assigned(self, assigned: list[TopicPartition]) -> None:
        """Set the starting offset of partitions the group has no commit for, and commit it."""
        consumer = self._consumer_or_none()
        for tp in assigned:
            self._partitions.setdefault(tp, _Partition())
        if consumer is not None and assigned:
            fresh = []
            for tp in assigned:
                offset = await consumer.committed(tp)
                if offset is None:
                    fresh.append(tp)
                else:
                    self._partitions[tp].committed = offset
            if fresh:
                starts = await self._starting_offsets(consumer, fresh)
                for tp, offset in starts.items():
                    consumer.seek(tp, offset)
                    self._partitions[tp].committed = offset
                await consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in starts.items()})
        self._joined.set()

    def _consumer_or_none(self) -> AIOKafkaConsumer | None:
        return self._consumer

    async def _starting_offsets(
        self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        if self.starting_position == LATEST:
            return dict(await consumer.end_offsets(tps))
        begin = dict(await consumer.beginning_offsets(tps))
        if self.starting_position == AT_TIMESTAMP and self.starting_timestamp is not None:
            end = dict(await consumer.end_offsets(tps))
            stamp_ms = int(self.starting_timestamp * 1000)
            found = await consumer.offsets_for_times({tp: stamp_ms for tp in tps})
            return {tp: (found[tp].offset if found.get(tp) is not None else end[tp]) for tp in tps}
        return begin

    def _forget(self, tp: TopicPartition) -> None:
        """A partition was revoked: what this worker held of it is the next owner's to redo."""
        self._partitions.pop(tp, None)

    async def close(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.flush_commits(), STOP_TIMEOUT)
        consumer, self._consumer = self._consumer, None
        self._partitions = {}
        self._to_commit = {}
        if consumer is not None:
            await _stop_quietly(consumer)

    def _live(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise SourceError(f"not connected to Kafka topic {self.name}")
        return self._consumer

    # ------------------------------------------------------------------ records

    def _buffer(self, fetched: dict[TopicPartition, list[Any]]) -> None:
        for tp, messages in fetched.items():
            part = self._partitions.get(tp)
            if part is None:  # revoked while the fetch was under way
                continue
            for m in messages:
                # Below the committed offset is done (a position reset can race the seek to the
                # starting offset right after an assignment).
                if m.offset >= part.committed:
                    part.buffer.append(self._record(tp, m, part))

    def _record(self, tp: TopicPartition, m: Any, part: _Partition) -> SourceRecord:
        headers = [{k: list(v or b"")} for k, v in (m.headers or ())]
        entry = {
            "topic": tp.topic,
            "partition": tp.partition,
            "offset": m.offset,
            "timestamp": m.timestamp,
            "timestampType": "LOG_APPEND_TIME" if m.timestamp_type == 1 else "CREATE_TIME",
            "key": _b64(m.key),
            "value": _b64(m.value),
            "headers": headers,
        }
        return SourceRecord(
            id=record_id(tp.topic, tp.partition, m.offset),
            body=m.value or b"",
            arrival_time=(m.timestamp or time.time() * 1000) / 1000.0,
            ordering_key=f"{tp.topic}-{tp.partition}",
            source_fields=entry,
            handle=(part, tp, m.offset),
        )

    def _next_partition(self, key: str | None) -> tuple[TopicPartition, _Partition] | None:
        """The partition to hand out from: ``key``'s, else the one with the oldest buffered record."""
        best: tuple[TopicPartition, _Partition] | None = None
        for tp, part in self._partitions.items():
            if not part.buffer:
                continue
            if key is not None:
                if f"{tp.topic}-{tp.partition}" == key:
                    return tp, part
                continue
            if best is None or part.buffer[0].arrival_time < best[1].buffer[0].arrival_time:
                best = (tp, part)
        return best

    async def fetch(
        self, max_records: int, wait_seconds: float, key: str | None = None
    ) -> list[SourceRecord]:
        consumer = self._live()
        deadline = time.monotonic() + max(0.0, wait_seconds)
        polled = False
        while True:
            chosen = self._next_partition(key)
            if chosen is not None:
                part = chosen[1]
                out: list[SourceRecord] = []
                while part.buffer and len(out) < max_records:
                    rec = part.buffer.popleft()
                    part.outstanding.append(rec.handle[2])
                    out.append(rec)
                return out
            left = deadline - time.monotonic()
            if left <= 0 and polled:
                return []
            try:
                fetched = await consumer.getmany(
                    timeout_ms=int(max(0.0, min(left, 1.0)) * 1000), max_records=self.max_poll_records
                )
            except KafkaError as exc:
                raise SourceError(f"Kafka fetch from {self.name}: {exc}") from exc
            polled = True
            if fetched:
                self._heard = time.monotonic()
            elif time.monotonic() - self._heard > PROBE_SECONDS:
                await self._probe(consumer)
            self._buffer(fetched)

    async def _probe(self, consumer: AIOKafkaConsumer) -> None:
        """Nothing arrived for a while: is the cluster there at all? Raises SourceError if not."""
        try:
            await asyncio.wait_for(consumer.topics(), 10)
        except (KafkaError, OSError, TimeoutError) as exc:
            raise SourceError(
                f"Kafka at {self.access.servers} does not answer: {type(exc).__name__}: {exc}"
            ) from exc
        self._heard = time.monotonic()

    def _part(self, record: SourceRecord) -> _Partition | None:
        """The partition state a record belongs to, unless it was revoked or reconnected since (the
        partition's next owner redoes such records)."""
        part, tp, _ = record.handle
        return part if self._partitions.get(tp) is part else None

    async def ack(self, records: Sequence[SourceRecord]) -> None:
        consumer = self._live()
        touched: dict[TopicPartition, _Partition] = {}
        for rec in records:
            part = self._part(rec)
            if part is not None:  # else: revoked or reconnected since; the next owner redoes it
                part.done.add(rec.handle[2])
                touched[rec.handle[1]] = part
        for tp, part in touched.items():
            last = None
            while part.outstanding and part.outstanding[0] in part.done:
                last = part.outstanding.popleft()
                part.done.discard(last)
            if last is not None and last + 1 > part.committed:
                part.committed = last + 1
                self._to_commit[tp] = last + 1
        if self._to_commit and (self._committer is None or self._committer.done()):
            # Committed in the background, coalescing the acks that come meanwhile: the next batch is
            # fetched without waiting for the broker. A crash before the commit lands only means the
            # records are delivered again (at least once), never that one is skipped.
            self._committer = asyncio.create_task(self._commit(consumer), name=f"kafka-commit-{self.name}")

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        while self._to_commit:
            offsets, self._to_commit = self._to_commit, {}
            try:
                await consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})
            except KafkaError as exc:
                # A rebalance took the partition: its next owner starts from the previous commit.
                log.warning("kafka %s: commit refused (%s); records are delivered again", self.name, exc)
            except Exception as exc:  # the broker went away: the next commit (or owner) catches up
                log.warning("kafka %s: commit failed: %s", self.name, exc)
                return

    async def flush_commits(self) -> None:
        """Wait until every offset acknowledged so far is committed (or refused)."""
        committer = self._committer
        if committer is not None and not committer.done():
            await asyncio.shield(committer)

    async def release(self, records: Sequence[SourceRecord]) -> None:
        """Read them again: seek each partition back to its first released record."""
        consumer = self._consumer
        first: dict[TopicPartition, int] = {}
        for rec in records:
            part = self._part(rec)
            if part is None:
                continue
            tp, offset = rec.handle[1], rec.handle[2]
            first[tp] = min(offset, first.get(tp, offset))
        for tp, offset in first.items():
            part = self._partitions[tp]
            part.buffer.clear()
            part.outstanding = deque(o for o in part.outstanding if o < offset)
            part.done = {o for o in part.done if o < offset}
            if consumer is not None:
                consumer.seek(tp, offset)

    # ------------------------------------------------------------------ event shape

    def entry(self, record: SourceRecord) -> dict[str, Any]:
        return record.source_fields

    def _event_prefix(self) -> bytes:
        import json

        head = {
            "eventSource": EVENT_SOURCE,
            "eventSourceArn": self.arn,
            "bootstrapServers": self.access.servers,
        }
        return json.dumps(head, separators=(",", ":"))[:-1].encode() + b',"records":{'

    def event(self, parts: Sequence[bytes], records: Sequence[SourceRecord]) -> bytes:
        import json

        groups: dict[str, list[bytes]] = {}
        for part, rec in zip(parts, records, strict=True):
            groups.setdefault(rec.ordering_key or "", []).append(part)
        body = b",".join(json.dumps(k).encode() + b":[" + b",".join(v) + b"]" for k, v in groups.items())
        return self._prefix + body + b"}}"

    def item_id(self, identifier: Any) -> str | None:
        """``{"partition": p, "offset": o}`` (``topic`` optional) names a record too."""
        if isinstance(identifier, dict):
            try:
                partition, offset = int(identifier["partition"]), int(identifier["offset"])
            except (KeyError, TypeError, ValueError):
                return None
            return record_id(str(identifier.get("topic", self.name)), partition, offset)
        return super().item_id(identifier)


class KafkaSink(Sink):
    """Appends to a topic with ``acks=all``; returns once the broker has the record."""

    kind = "kafka"

    def __init__(self, access: KafkaAccess, topic: str) -> None:
        super().__init__(topic)
        self.access = access
        self._producer: AIOKafkaProducer | None = None

    @property
    def arn(self) -> str:
        return f"lamina:kafka:{self.access.servers}/{self.name}"

    async def connect(self) -> None:
        producer = AIOKafkaProducer(
            acks="all",
            enable_idempotence=True,
            max_request_size=MAX_FETCH_BYTES,
            request_timeout_ms=30_000,
            **self.access.client_options(),
        )
        try:
            await producer.start()
        except Exception as exc:
            await _stop_quietly(producer)
            raise await self.access.explain(exc) from exc
        self._producer = producer

    async def publish(self, body: bytes, headers: dict[str, str] | None = None) -> None:
        if self._producer is None:
            await self.connect()
        assert self._producer is not None
        record_headers = [(k, v.encode()) for k, v in (headers or {}).items()]
        key = (headers or {}).get("lamina-record-id")
        await self._producer.send_and_wait(
            self.name, body, key=key.encode() if key else None, headers=record_headers
        )

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await _stop_quietly(producer)
