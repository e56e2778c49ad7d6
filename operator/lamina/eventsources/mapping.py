"""The EventSourceMapping poller: fetch, filter, batch, invoke, acknowledge, retry, dead-letter.

One :class:`MappingWorker` drives one mapping over any :class:`~lamina.eventsources.base.Source`.
It holds at most one batch at a time; records leave the broker (are acknowledged) only when

* the function processed them (the invocation succeeded, or it succeeded and did not name them in
  ``batchItemFailures``), or
* they matched none of the ``filterCriteria`` patterns (dropped, as Lambda does), or
* they were written to the ``onFailure`` destination after exhausting ``maximumRetryAttempts`` or
  ``maximumRecordAgeSeconds``.

Without an ``onFailure`` destination nothing is dropped: records that exhaust the limits stay in the
batch and are retried at the slowest backoff, the mapping stops advancing past them and reports
``PROBLEM: ...no onFailure destination``. (Lambda discards them; lamina promises that an accepted
record either succeeds or lands in the failure destination.)

Ordered sources (Redis Streams, NATS JetStream, Kafka partitions, SQS FIFO groups) are processed in
order per ordering key: after a partial failure a key's records are retried from its first failed
record on. Unordered sources (RabbitMQ, SQS standard) retry only the failed records. Sources that
redeliver by themselves (SQS) get failed records back instead of a retry in memory, so the queue
counts receives and applies its own redrive policy. A record too large for any invocation goes to
the failure destination without invoking (``RecordTooLarge``). Throttles and invoker errors
(function not found, gateway down) are retried with backoff and do not count as attempts;
splitting a batch in halves (``bisectBatchOnFunctionError``) does not count either.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lamina.eventsources.base import CredentialsError, Sink, Source, SourceRecord, plain_item_id
from lamina.eventsources.config import MappingConfig
from lamina.eventsources.events import (
    encode_entry,
    failure_record,
    split_by_size,
)
from lamina.eventsources.filtering import RecordFilter
from lamina.eventsources.status import (
    FUNCTION_FAILED,
    NO_DESTINATION,
    NOT_FOUND,
    OK,
    THROTTLED,
    TOO_LARGE_KEPT,
    MappingStatus,
)
from lamina.eventsources.timing import Timing
from lamina.invocation.errors import FunctionNotFound, ThrottledError
from lamina.invocation.invoker import Invoker

log = logging.getLogger("lamina.eventsources")

StatusCallback = Callable[[MappingStatus], Any]

RETRY_EXHAUSTED = "RetryAttemptsExhausted"
AGE_EXCEEDED = "MaximumRecordAgeExceeded"
TOO_LARGE = "RecordTooLarge"


@dataclass(slots=True, eq=False)
class _Held:
    """A record the worker holds, with its event entry and how often it was tried."""

    record: SourceRecord
    entry: dict[str, Any]
    encoded: bytes  # the entry as JSON, encoded once
    invokes: int = 0
    retries: int = 0  # retries consumed (bisect splits and throttles do not count)
    last_error: str | None = None
    last_payload: bytes | None = None


class _Interrupted(Exception):
    """The mapping was disabled or stopped while holding a batch."""


class MappingWorker:
    """Consumes one source on behalf of one mapping until stopped.

    ``source`` and ``dlq`` are adapters that are not yet connected; the worker connects them, and
    reconnects them with backoff whenever the broker goes away. ``on_status`` (sync or async) is called
    with the :class:`MappingStatus` after every state change and every batch.
    """

    def __init__(
        self,
        config: MappingConfig,
        source: Source,
        invoker: Invoker,
        *,
        dlq: Sink | None = None,
        on_status: StatusCallback | None = None,
        timing: Timing | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.invoker = invoker
        self.dlq = dlq
        self.on_status = on_status
        self.timing = timing or Timing()
        self.filter = RecordFilter(config.filter_patterns)
        self.status = MappingStatus()
        self._enabled = config.enabled
        self._stopping = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._source_open = False
        self._dlq_open = False
        self._broker_failures = 0
        self._throttle_streak = 0
        self._invoker_streak = 0
        self._held: list[_Held] = []  # fetched and not yet acknowledged

    # ----------------------------------------------------------------------------- lifecycle

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"esm-{self.config.name}")
        return self._task

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop fetching; let an invocation in flight finish for ``grace_seconds``, then abandon it.

        Records that were not acknowledged stay with the broker and are delivered again.
        """
        self._stopping = True
        self._wake.set()
        task = self._task
        if task is None or task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), grace_seconds)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        except asyncio.CancelledError:
            task.cancel()
            raise

    def set_enabled(self, enabled: bool) -> None:
        """``False`` stops fetching (the position stays with the broker); ``True`` resumes."""
        if enabled != self._enabled:
            self._enabled = enabled
            self._wake.set()

    @property
    def enabled(self) -> bool:
        return self._enabled

    def _interrupted(self) -> bool:
        return self._stopping or not self._enabled

    async def _report(self, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self.status, key, value)
        if self.on_status is not None:
            try:
                result = self.on_status(self.status)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # a status sink must not stop the mapping
                log.exception("esm %s: status callback failed", self.config.name)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, waking early when disabled or stopped."""
        if self._interrupted():
            return
        self._wake.clear()
        if self._interrupted():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    # ----------------------------------------------------------------------------- main loop

    async def run(self) -> None:
        heartbeat = asyncio.create_task(self._heartbeat()) if self.source.heartbeat_interval else None
        try:
            while not self._stopping:
                if not self._enabled:
                    await self._close_adapters()
                    if self.status.state != "Disabled":
                        await self._report(state="Disabled", state_transition_reason="User action")
                    self._wake.clear()
                    if not self._enabled and not self._stopping:
                        await self._wake.wait()
                    continue
                try:
                    if not self._source_open:
                        await self._report(state="Enabling")
                        await self.source.connect()
                        self._source_open = True
                        self._broker_failures = 0
                        await self._report(state="Enabled", last_error=None)
                    batch = await self._collect()
                    if batch:
                        await self._process(batch)
                except _Interrupted:
                    continue
                except Exception as exc:  # any broker failure: reconnect with backoff
                    await self._broker_trouble(exc)
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
            held, self._held = self._held, []
            if held and self._source_open:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.source.release([h.record for h in held]))
            await asyncio.shield(self._close_adapters())
            if self.status.state != "Disabled" or self._stopping:
                await self._report(state="Disabled", state_transition_reason="Worker stopped")

    async def _broker_trouble(self, exc: BaseException) -> None:
        log.warning("esm %s: %s source trouble: %s", self.config.name, self.source.kind, exc)
        self._held = []  # the broker delivers whatever was not acknowledged again
        with contextlib.suppress(Exception):
            await self.source.close()
        self._source_open = False
        self._broker_failures += 1
        if isinstance(exc, CredentialsError):  # names the Secret, never a value
            result = f"PROBLEM: {self.source.kind} credentials: {exc}"
        else:
            result = f"PROBLEM: {self.source.kind} source unavailable"
        await self._report(
            broker_errors=self.status.broker_errors + 1,
            last_processing_result=result,
            last_error=f"{type(exc).__name__}: {exc}",
        )
        await self._sleep(self.timing.broker.delay(self._broker_failures - 1))

    async def _close_adapters(self) -> None:
        if self._source_open:
            self._source_open = False
            with contextlib.suppress(Exception):
                await self.source.close()
        if self._dlq_open and self.dlq is not None:
            self._dlq_open = False
            with contextlib.suppress(Exception):
                await self.dlq.close()

    # ----------------------------------------------------------------------------- batching

    def _entry(self, record: SourceRecord) -> dict[str, Any]:
        return self.source.entry(record)

    async def _collect(self) -> list[_Held]:
        """Fetch until the batch is full, the batching window closes, or (window 0) one fetch returns."""
        cfg = self.config
        window = float(cfg.maximum_batching_window_seconds)
        batch: list[_Held] = []
        first_at: float | None = None
        key: str | None = None  # partitioned sources: the batch's one ordering key
        while len(batch) < cfg.batch_size:
            if self._interrupted():
                break
            if first_at is None:
                wait = self.timing.poll_wait
            else:
                wait = window - (time.monotonic() - first_at)
                if wait <= 0:
                    break
            if self.source.partitioned:
                records = await self.source.fetch(cfg.batch_size - len(batch), wait, key=key)
            else:
                records = await self.source.fetch(cfg.batch_size - len(batch), wait)
            if not records:
                if first_at is None:
                    break
                continue
            if first_at is None:
                first_at = time.monotonic()
                key = records[0].ordering_key
            kept: list[tuple[SourceRecord, dict[str, Any]]] = []
            dropped: list[tuple[SourceRecord, dict[str, Any]]] = []
            for rec in records:
                entry = self._entry(rec)
                (kept if self.filter.accepts(entry) else dropped).append((rec, entry))
            self.status.records_received += len(records)
            if dropped:
                await self.source.ack([rec for rec, _ in dropped])
                await self._report(records_filtered=self.status.records_filtered + len(dropped))
            batch.extend(_Held(rec, entry, encode_entry(entry)) for rec, entry in kept)
            self._held = batch
            if window <= 0:
                break
        if batch and self._interrupted():
            await self._give_back(batch)
            return []
        return batch

    async def _give_back(self, held: Sequence[_Held]) -> None:
        records = [h.record for h in held]
        self._held = []
        if records:
            await self.source.release(records)

    # ----------------------------------------------------------------------------- processing

    async def _process(self, batch: list[_Held]) -> None:
        self._held = list(batch)
        envelope = len(self.source.event([], [])) + 64  # + group keys of sources that group records
        runs = split_by_size([len(h.encoded) + 1 for h in batch], self.timing.payload_limit, envelope)
        chunks: deque[list[_Held]] = deque(batch[a:b] for a, b in runs)
        try:
            while chunks:
                if self._interrupted():
                    raise _Interrupted
                await self._step(chunks)
        except _Interrupted:
            # Disabled or stopping: hand back what is left, unacknowledged, for later.
            await self._give_back(self._held)
            raise

    async def _step(self, chunks: deque[list[_Held]]) -> None:
        """Work on the first chunk once: dead-letter what is too old, invoke, settle the outcome."""
        chunk = chunks[0]
        if len(chunk) == 1 and self._too_large(chunk[0]):
            await self._oversized(chunks, chunk[0])
            return
        expired = self._expired(chunk)
        if expired:
            await self._dead_letter(expired, AGE_EXCEEDED)
            gone = set(expired)
            chunk = [h for h in chunk if h not in gone]
            if not chunk:
                chunks.popleft()
                return
            chunks[0] = chunk
        outcome = await self._invoke(chunk)
        if outcome is None:  # throttled or the invoker failed: same chunk again, not counted
            return
        failed, whole, function_error = outcome
        failed_set = set(failed)
        done = [h for h in chunk if h not in failed_set]
        if done:
            await self._ack_success(done)
        if not failed:
            chunks.popleft()
            await self._report(last_processing_result=OK, last_error=None)
            return
        if whole and function_error and self.config.bisect_batch_on_function_error and len(chunk) > 1:
            half = len(chunk) // 2
            chunks.popleft()
            chunks.appendleft(chunk[half:])
            chunks.appendleft(chunk[:half])
            await self._report(bisections=self.status.bisections + 1)
            return
        await self._retry_or_give_up(chunks, failed)

    async def _heartbeat(self) -> None:
        """Tell the broker, now and then, that the records this worker holds are still in work.

        Runs for the worker's whole life: records are held while a batching window fills, while the
        function runs and while a retry waits.
        """
        last = time.monotonic()
        while True:
            # The interval may change once the source knows its broker (SQS: the queue's
            # visibility timeout), so it is read again on every tick.
            interval = float(self.source.heartbeat_interval or 10.0)
            await asyncio.sleep(min(interval, 1.0))
            if time.monotonic() - last < interval:
                continue
            last = time.monotonic()
            held = [h.record for h in self._held]
            if held and self._source_open:
                try:
                    await self.source.touch(held)
                except Exception as exc:  # the main loop notices a dead broker itself
                    log.debug("esm %s: heartbeat failed: %s", self.config.name, exc)

    def _expired(self, chunk: Sequence[_Held]) -> list[_Held]:
        limit = self.config.maximum_record_age_seconds
        if limit is None or limit < 0 or self.dlq is None:
            # Without a destination an old record is still processed: nothing is thrown away.
            return []
        return [h for h in chunk if h.record.age_seconds > limit]

    async def _invoke(self, chunk: list[_Held]) -> tuple[list[_Held], bool, str | None] | None:
        """Invoke once. None: not attempted (throttle, invoker failure); else (failed, whole, error)."""
        payload = self.source.event([h.encoded for h in chunk], [h.record for h in chunk])
        try:
            result = await self.invoker(self.config.function_name, payload)
        except ThrottledError as exc:
            self.status.throttles += 1
            attempt = self._throttle_streak
            self._throttle_streak += 1
            await self._report(last_processing_result=THROTTLED, last_error=str(exc))
            await self._sleep(self.timing.throttle.delay(attempt))
            return None
        except FunctionNotFound as exc:
            await self._invoker_trouble(NOT_FOUND, exc)
            return None
        except Exception as exc:  # gateway/pool trouble: not the function's fault
            await self._invoker_trouble(f"PROBLEM: Invocation failed: {type(exc).__name__}", exc)
            return None
        self._throttle_streak = 0
        self._invoker_streak = 0
        self.status.invocations += 1
        newest = max(h.record.arrival_time for h in chunk)
        self.status.iterator_age_ms = int(max(0.0, time.time() - newest) * 1000)
        for h in chunk:
            h.invokes += 1
        if result.function_error is not None:
            self.status.function_errors += 1
            for h in chunk:
                h.last_error, h.last_payload = result.function_error, result.payload
            return list(chunk), True, result.function_error
        if not self.config.report_batch_item_failures:
            return [], False, None
        failed_ids = self._batch_item_failures(result.payload, chunk, self.source.item_id)
        if failed_ids is None:  # an invalid response fails the whole batch, as on Lambda
            for h in chunk:
                h.last_error, h.last_payload = None, result.payload
            self.status.partial_failures += 1
            return list(chunk), True, None
        if not failed_ids:
            return [], False, None
        self.status.partial_failures += 1
        if self.source.ordered:
            # Order is kept per key: a key's records from its first failed one on are retried.
            stopped: set[str | None] = set()
            failed = []
            for h in chunk:
                if h.record.ordering_key in stopped or h.record.id in failed_ids:
                    stopped.add(h.record.ordering_key)
                    failed.append(h)
        else:
            failed = [h for h in chunk if h.record.id in failed_ids]
        for h in failed:
            h.last_error, h.last_payload = None, result.payload
        return failed, False, None

    async def _invoker_trouble(self, result: str, exc: BaseException) -> None:
        attempt = self._invoker_streak
        self._invoker_streak += 1
        log.warning("esm %s: invoking %s failed: %s", self.config.name, self.config.function_name, exc)
        await self._report(last_processing_result=result, last_error=f"{type(exc).__name__}: {exc}")
        await self._sleep(self.timing.throttle.delay(attempt))

    @staticmethod
    def _batch_item_failures(
        payload: bytes, chunk: Sequence[_Held], item_id: Callable[[Any], str | None] | None = None
    ) -> set[str] | None:
        """Ids named in ``batchItemFailures``; empty set for success, None for an invalid response."""
        text = payload.strip() if payload else b""
        if not text:
            return set()
        try:
            doc = json.loads(text)
        except ValueError:
            return None
        if doc is None:
            return set()
        if not isinstance(doc, dict):
            return None
        items = doc.get("batchItemFailures")
        if items is None:
            return set()
        if not isinstance(items, list):
            return None
        known = {h.record.id for h in chunk}
        ids: set[str] = set()
        for item in items:
            if not isinstance(item, dict):
                return None
            ident = item.get("itemIdentifier")
            if not isinstance(ident, str):  # a number, or a source's own form (Kafka's partition/offset)
                ident = (item_id or plain_item_id)(ident)
            if not isinstance(ident, str) or not ident or ident not in known:
                return None
            ids.add(ident)
        return ids

    async def _ack_success(self, done: Sequence[_Held]) -> None:
        await self.source.ack([h.record for h in done])
        done_set = set(done)
        self._held = [h for h in self._held if h not in done_set]
        self.status.records_succeeded += len(done)

    async def _retry_or_give_up(self, chunks: deque[list[_Held]], failed: list[_Held]) -> None:
        if self.source.redelivers:
            await self._redeliver(chunks, failed)
            return
        limit = self.config.maximum_retry_attempts
        exhausted = [h for h in failed if limit is not None and limit >= 0 and h.retries >= limit]
        if exhausted and self.dlq is not None:
            await self._dead_letter(exhausted, RETRY_EXHAUSTED)
            gone = set(exhausted)
            failed = [h for h in failed if h not in gone]
        if not failed:
            chunks.popleft()
            await self._report(last_processing_result=FUNCTION_FAILED)
            return
        chunks[0] = failed
        if exhausted:  # no destination: keep them and try again at the slowest pace
            self.status.records_kept_without_destination = len(exhausted)
            await self._report(last_processing_result=NO_DESTINATION)
            delay = self.timing.function_error.maximum
        else:
            await self._report(last_processing_result=FUNCTION_FAILED)
            delay = self.timing.function_error.delay(max(h.retries for h in failed))
        for h in failed:
            h.retries += 1
        self.status.retries += 1
        await self._sleep(delay)

    async def _redeliver(self, chunks: deque[list[_Held]], failed: list[_Held]) -> None:
        """Give failed records back to a broker that retries them itself (SQS).

        The broker counts receives, so a queue's own redrive policy (``maxReceiveCount``) applies;
        records that already had ``maximumRetryAttempts`` retries go to the onFailure destination
        instead, when there is one. Without it nothing is dropped: the broker keeps them.
        """
        limit = self.config.maximum_retry_attempts
        exhausted: list[_Held] = []
        if limit is not None and limit >= 0 and self.dlq is not None:
            exhausted = [h for h in failed if h.record.receive_count - 1 >= limit]
        if exhausted:
            await self._dead_letter(exhausted, RETRY_EXHAUSTED)
        gone = set(exhausted)
        rest = [h for h in failed if h not in gone]
        chunks.popleft()
        if rest:
            await self.source.fail([h.record for h in rest])
            rest_set = set(rest)
            self._held = [h for h in self._held if h not in rest_set]
            self.status.retries += 1
        await self._report(last_processing_result=FUNCTION_FAILED)

    def _too_large(self, held: _Held) -> bool:
        return len(self.source.event([held.encoded], [held.record])) > self.timing.payload_limit

    async def _oversized(self, chunks: deque[list[_Held]], held: _Held) -> None:
        """A record that no invocation can carry goes to the failure destination, never to the
        function; without a destination it is kept (and the mapping says why it is stuck)."""
        size = len(self.source.event([held.encoded], [held.record]))
        held.last_error = None  # not a function error: the function never saw it
        held.last_payload = json.dumps(
            {
                "errorType": "RequestTooLargeException",
                "errorMessage": f"Record {held.record.id} makes an event of {size} bytes, larger than the "
                f"function's payload limit of {self.timing.payload_limit} bytes; it was not invoked",
            }
        ).encode()
        if self.dlq is not None:
            await self._dead_letter([held], TOO_LARGE)
            chunks.popleft()
            return
        self.status.records_kept_without_destination = 1
        await self._report(last_processing_result=TOO_LARGE_KEPT, last_error=held.last_payload.decode())
        await self._sleep(self.timing.function_error.maximum)

    # ----------------------------------------------------------------------------- failure destination

    async def _dead_letter(self, held: Sequence[_Held], condition: str) -> None:
        """Write each record to the onFailure destination, then acknowledge it. Retries until written."""
        assert self.dlq is not None
        attempt = 0
        pending = list(held)
        while pending:
            h = pending[0]
            doc = failure_record(
                entry=h.entry,
                condition=condition,
                esm=self.config.name,
                function_name=self.config.function_name,
                invoke_count=h.invokes,
                function_error=h.last_error,
                response_payload=h.last_payload,
                error_message=None if h.invokes else "Record is older than maximumRecordAgeSeconds",
                status_code=200 if h.invokes else None,
                record_id=h.record.id,
                arrival_time=h.record.arrival_time,
            )
            headers = {
                "lamina-esm": self.config.name,
                "lamina-function": self.config.function_name,
                "lamina-condition": condition,
                "lamina-record-id": h.record.id,
                "lamina-source": self.source.arn,
            }
            try:
                if not self._dlq_open:
                    await self.dlq.connect()
                    self._dlq_open = True
                await self.dlq.publish(json.dumps(doc, separators=(",", ":"), default=str).encode(), headers)
            except Exception as exc:  # keep the record until the destination takes it
                log.warning("esm %s: onFailure destination %s: %s", self.config.name, self.dlq.arn, exc)
                with contextlib.suppress(Exception):
                    await self.dlq.close()
                self._dlq_open = False
                await self._report(
                    last_processing_result="PROBLEM: onFailure destination unavailable",
                    last_error=f"{type(exc).__name__}: {exc}",
                )
                if self._interrupted():
                    raise _Interrupted from exc
                await self._sleep(self.timing.broker.delay(attempt))
                attempt += 1
                continue
            await self.source.ack([h.record])
            self._held = [x for x in self._held if x is not h]
            self.status.records_dead_lettered += 1
            pending.pop(0)
        await self._report()
