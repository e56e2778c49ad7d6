"""The small interface every broker adapter implements.

A :class:`Source` hands out records and forgets them only when they are acknowledged; whatever was
fetched but not acknowledged is delivered again (to this worker after :meth:`Source.release` or a
reconnect, or to the next worker after this one dies). A :class:`Sink` appends one message durably
(failure destinations, async-invoke destinations).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: Starting positions a stream consumer understands.
TRIM_HORIZON = "TRIM_HORIZON"
LATEST = "LATEST"
AT_TIMESTAMP = "AT_TIMESTAMP"


class SourceError(Exception):
    """The broker could not be reached or refused an operation; the mapping reconnects and retries."""


def plain_item_id(identifier: Any) -> str | None:
    """An ``itemIdentifier`` that is a number names the record whose id is that number's text."""
    if isinstance(identifier, int) and not isinstance(identifier, bool):
        return str(identifier)
    return None


class CredentialsError(SourceError):
    """The broker refused the credentials (or they are missing). ``secret`` names the Secret they come
    from, so that the status can say which one to fix; the message never carries a secret value."""

    def __init__(self, message: str, secret: str | None = None) -> None:
        super().__init__(message)
        self.secret = secret


@dataclass(slots=True)
class SourceRecord:
    """One record as a source delivers it.

    ``id`` is what the function names in ``batchItemFailures[].itemIdentifier`` and is unique within
    the source. ``arrival_time`` is when the broker accepted the record (epoch seconds) when the broker
    knows it, else when this worker first saw it. ``receive_count`` counts deliveries as the broker
    reports them (1 on the first). ``source_fields`` holds the broker-specific identifiers that are
    copied into the event (entry id, stream sequence, delivery tag...). ``handle`` is private to the
    adapter that produced the record (what it needs to acknowledge it).
    """

    id: str
    body: bytes
    attributes: dict[str, str] = field(default_factory=dict)
    arrival_time: float = field(default_factory=time.time)
    ordering_key: str | None = None
    receive_count: int = 1
    received_time: float = field(default_factory=time.time)  # when this worker first got it
    source_fields: dict[str, Any] = field(default_factory=dict)
    handle: Any = None

    @property
    def age_seconds(self) -> float:
        return max(0.0, time.time() - self.arrival_time)


class Source(abc.ABC):
    """A queue or stream the mapping consumes.

    ``kind`` is ``redis`` / ``nats`` / ``rabbitmq`` / ``kafka`` / ``sqs`` / ``kubernetes``; ``name``
    the stream, subject, topic or queue; ``arn`` an ARN-like label used as ``eventSourceARN``.
    ``ordered`` says whether records come in an order that must be kept (streams, FIFO queues) or not
    (queues); the order is kept per ``SourceRecord.ordering_key``. ``heartbeat_interval`` (seconds or
    None; read again before each beat) asks the mapping to call :meth:`touch` that often for records
    it still holds, so the broker does not hand them to someone else while the function runs or while
    the mapping waits to retry them.

    ``partitioned`` sources (Kafka) hand out batches of one ordering key (one partition): the mapping
    passes the first record's key to later fetches of the same batch. ``redelivers`` sources (SQS)
    retry failed records themselves: the mapping gives them back with :meth:`fail` and the broker
    delivers them again later, counting receives (so a queue's own redrive policy applies).
    """

    kind: str = ""
    ordered: bool = False
    partitioned: bool = False
    redelivers: bool = False
    heartbeat_interval: float | None = None

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def arn(self) -> str:
        return f"lamina:{self.kind}:{self.name}"

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the connection and create what is missing (consumer group, stream, queue)."""

    @abc.abstractmethod
    async def fetch(
        self, max_records: int, wait_seconds: float, key: str | None = None
    ) -> list[SourceRecord]:
        """Up to ``max_records`` records; waits at most ``wait_seconds`` when none are available.

        ``key`` (partitioned sources only): only records of that ordering key.
        """

    def entry(self, record: SourceRecord) -> dict[str, Any]:
        """The record as the function sees it in the event (SQS-shaped unless the source says else)."""
        from lamina.eventsources.events import build_record

        return build_record(record, self.kind, self.arn, ordered=self.ordered)

    def event(self, parts: Sequence[bytes], records: Sequence[SourceRecord]) -> bytes:
        """The event of a batch whose entries are already JSON-encoded (``{"Records": [...]}``)."""
        from lamina.eventsources.events import join_event

        return join_event(parts)

    def item_id(self, identifier: Any) -> str | None:
        """The record id a ``batchItemFailures[].itemIdentifier`` that is not a string names."""
        return plain_item_id(identifier)

    @abc.abstractmethod
    async def ack(self, records: Sequence[SourceRecord]) -> None:
        """Forget these records for good: they were processed (or dead-lettered, or filtered out)."""

    async def release(self, records: Sequence[SourceRecord]) -> None:  # noqa: B027 - optional hook
        """Give records back unacknowledged so that they are delivered again (best effort)."""

    async def touch(self, records: Sequence[SourceRecord]) -> None:  # noqa: B027 - optional hook
        """Tell the broker these records are still being worked on."""

    async def fail(self, records: Sequence[SourceRecord]) -> None:  # noqa: B027 - redelivers only
        """Hand failed records back for the broker to deliver again after its own delay."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection; unacknowledged records stay with the broker."""

    async def __aenter__(self) -> Source:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Sink(abc.ABC):
    """Somewhere to append a message durably (a failure destination)."""

    kind: str = ""

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def arn(self) -> str:
        return f"lamina:{self.kind}:{self.name}"

    @abc.abstractmethod
    async def connect(self) -> None: ...

    @abc.abstractmethod
    async def publish(self, body: bytes, headers: dict[str, str] | None = None) -> None:
        """Append one message; returns only once the broker has accepted it."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Sink:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
