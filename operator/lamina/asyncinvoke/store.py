"""The durable queue behind ``X-Amz-Invocation-Type: Event``.

The gateway answers 202 only after :meth:`AsyncEventStore.enqueue` has returned, so an
implementation must have made the event durable by then. The dispatcher takes due events with
:meth:`AsyncEventStore.claim_due`, which *leases* them: an event that is neither completed nor
rescheduled before its lease runs out (the dispatcher crashed, its pod was killed) becomes due
again and is handed out once more. Delivery is therefore at-least-once, as it is in Lambda.

Two implementations: :class:`~lamina.asyncinvoke.sqlite_store.SqliteEventStore` (embedded, local
mode) and :class:`~lamina.asyncinvoke.redis_store.RedisEventStore` (Redis Streams, for the cluster).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(slots=True)
class QueuedEvent:
    """One asynchronous invocation waiting in (or leased from) the store."""

    id: str  # the request id returned to the caller and used in the invocation record
    function: str  # "namespace/name"
    payload: bytes
    enqueued_at: float = field(default_factory=time.time)  # epoch seconds
    attempts: int = 0  # invocations that ended in a function error
    throttles: int = 0  # attempts that were throttled or failed before reaching the function
    next_attempt_at: float | None = None  # epoch seconds; None = enqueued_at (due at once)
    last_error: str | None = None  # JSON: the last failed attempt's response (see records.py)
    # JSON {"destination": "onSuccess"|"onFailure", "endpoint": {...}, "record": {...}} once the
    # function's outcome is final but its record is not yet delivered: only delivery is retried.
    pending_record: str | None = None
    # The caller's trace context (the X-Ray header with its Lineage, traceparent, tracestate) as
    # lamina_runtime.protocol encodes it: the invocation continues the caller's chain, so the
    # recursion guard also stops a function that queues itself in a loop.
    trace: str | None = None

    def __post_init__(self) -> None:
        if self.next_attempt_at is None:
            self.next_attempt_at = self.enqueued_at
        if not self.function or "/" not in self.function:
            raise ValueError(f"function must be 'namespace/name', got {self.function!r}")

    @classmethod
    def new(
        cls,
        function: str,
        payload: bytes,
        *,
        request_id: str | None = None,
        now: float | None = None,
        trace: str | None = None,
    ) -> QueuedEvent:
        return cls(
            id=request_id or str(uuid.uuid4()),
            function=function,
            payload=bytes(payload),
            enqueued_at=time.time() if now is None else now,
            trace=trace,
        )

    @property
    def name(self) -> str:
        """The function's name without its namespace."""
        return self.function.split("/", 1)[1]

    @property
    def namespace(self) -> str:
        return self.function.split("/", 1)[0]

    def last_error_obj(self) -> dict[str, Any] | None:
        if not self.last_error:
            return None
        try:
            obj = json.loads(self.last_error)
        except ValueError:
            return {"errorMessage": self.last_error}
        return obj if isinstance(obj, dict) else {"errorMessage": obj}

    def pending_record_obj(self) -> dict[str, Any] | None:
        return json.loads(self.pending_record) if self.pending_record else None


#: Event invocations one function may have queued at once (the stores' ``max_per_function``; the
#: chart's asyncQueue.maxEventsPerFunction): more are refused with 429 instead of growing the queue.
MAX_QUEUED_PER_FUNCTION = 100_000


@runtime_checkable
class AsyncEventStore(Protocol):
    async def enqueue(self, event: QueuedEvent) -> bool:
        """Store the event durably. Returns False (and changes nothing) when its id is already queued."""
        ...

    async def claim_due(self, limit: int, lease_seconds: float) -> list[QueuedEvent]:
        """Up to ``limit`` events whose next attempt time has come, leased for ``lease_seconds``."""
        ...

    async def touch(self, ids: Iterable[str], lease_seconds: float) -> None:
        """Extend the lease of events still being worked on."""
        ...

    async def complete(self, id: str) -> None:
        """Remove the event for good (its outcome and record, if any, are delivered)."""
        ...

    async def reschedule(
        self,
        id: str,
        next_attempt_at: float,
        attempts: int,
        last_error: str | None,
        *,
        throttles: int | None = None,
        pending_record: str | None = None,
    ) -> None:
        """Release the lease and make the event due again at ``next_attempt_at`` with new counters."""
        ...

    async def pending_count(self) -> int:
        """Events not yet completed (due, delayed and leased)."""
        ...

    async def get(self, id: str) -> QueuedEvent | None:
        """The stored state of one event (diagnostics and tests)."""
        ...

    async def close(self) -> None: ...
