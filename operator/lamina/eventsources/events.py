"""The JSON a function receives from an event source, and the record written to a failure destination.

The event is modelled on Lambda's SQS event (``{"Records": [...]}`` with ``messageId``, ``body``,
``attributes``, ``messageAttributes``, ``md5OfBody``, ``eventSource``, ``eventSourceARN``) so that
handlers and their partial-batch responses look the same as on AWS; each record also carries the
source's own identifiers under a key named after the source (``redis``, ``nats``, ``rabbitmq``).
docs/event-shapes.md shows one of each.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from lamina.eventsources.base import SourceRecord

#: Largest synchronous payload Lambda accepts (6 MB); batches are cut so that the event stays below it.
PAYLOAD_LIMIT = 6 * 1024 * 1024
_ENVELOPE = len(b'{"Records":[]}')


def body_text(body: bytes | str) -> tuple[str, bool]:
    """The body as the event carries it: text, or base64 when it is not UTF-8 (second item True)."""
    if isinstance(body, str):
        return body, False
    try:
        return body.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), True


def _ms(epoch_seconds: float) -> str:
    return str(int(epoch_seconds * 1000))


def build_record(record: SourceRecord, kind: str, arn: str, *, ordered: bool = False) -> dict[str, Any]:
    """One entry of ``Records``."""
    text, is_b64 = body_text(record.body)
    raw = record.body if isinstance(record.body, bytes) else record.body.encode()
    attributes = {
        "ApproximateReceiveCount": str(max(1, record.receive_count)),
        "SentTimestamp": _ms(record.arrival_time),
        "ApproximateFirstReceiveTimestamp": _ms(record.received_time),
    }
    if ordered:
        attributes["SequenceNumber"] = record.id
        if record.ordering_key:
            attributes["MessageGroupId"] = record.ordering_key
    entry: dict[str, Any] = {
        "messageId": record.id,
        "body": text,
        "attributes": attributes,
        "messageAttributes": {
            k: {"stringValue": v, "dataType": "String"} for k, v in sorted(record.attributes.items())
        },
        "md5OfBody": hashlib.md5(raw, usedforsecurity=False).hexdigest(),
        "eventSource": f"lamina:{kind}",
        "eventSourceARN": arn,
        kind: dict(record.source_fields),
    }
    if is_b64:
        entry["bodyEncoding"] = "base64"
    return entry


def encode_event(entries: Sequence[dict[str, Any]]) -> bytes:
    return json.dumps({"Records": list(entries)}, separators=(",", ":"), default=str).encode()


def encode_entry(entry: dict[str, Any]) -> bytes:
    """One record as JSON; :func:`join_event` puts encoded records together without encoding again."""
    return json.dumps(entry, separators=(",", ":"), default=str).encode()


def join_event(parts: Sequence[bytes]) -> bytes:
    """The event made of records already encoded with :func:`encode_entry`."""
    return b'{"Records":[' + b",".join(parts) + b"]}"


def entry_size(entry: dict[str, Any]) -> int:
    return len(encode_entry(entry)) + 1


def split_by_size(
    sizes: Sequence[int], limit: int = PAYLOAD_LIMIT, envelope: int = _ENVELOPE
) -> list[tuple[int, int]]:
    """Cut a batch (given each entry's encoded size) into [start, end) runs whose event fits ``limit``.

    ``envelope`` is what the event adds around the entries. A single entry larger than the limit gets
    a run of its own (the mapping sends it to the failure destination without invoking).
    """
    runs: list[tuple[int, int]] = []
    start, total = 0, envelope
    for i, size in enumerate(sizes):
        if i > start and total + size > limit:
            runs.append((start, i))
            start, total = i, envelope
        total += size
    if start < len(sizes):
        runs.append((start, len(sizes)))
    return runs


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _payload_json(payload: bytes | None) -> Any:
    if payload is None:
        return None
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return payload.decode("utf-8", "replace")


def failure_record(
    *,
    entry: dict[str, Any],
    condition: str,
    esm: str,
    function_name: str,
    invoke_count: int,
    function_error: str | None,
    response_payload: bytes | None,
    error_message: str | None = None,
    status_code: int | None = 200,
    record_id: str | None = None,
    arrival_time: float | None = None,
) -> dict[str, Any]:
    """What the failure destination receives for one record that could not be processed.

    Shaped like Lambda's on-failure invocation record; unlike Lambda's stream records it carries the
    record itself (``record``), so the destination holds everything needed to replay it.
    """
    response = _payload_json(response_payload)
    if response is None and error_message:
        response = {"errorMessage": error_message}
    return {
        "version": "1.0",
        "timestamp": iso_now(),
        "requestContext": {
            "requestId": str(uuid.uuid4()),
            "functionArn": f"lamina:function:{function_name}",
            "functionName": function_name,
            "condition": condition,
            "approximateInvokeCount": invoke_count,
            "esm": esm,
        },
        "responseContext": {
            "statusCode": status_code,
            "executedVersion": "$LATEST",
            "functionError": function_error,
        },
        "responsePayload": response,
        "record": entry,
        "recordInfo": {
            "eventSourceARN": entry.get("eventSourceARN"),
            "messageId": record_id if record_id is not None else entry.get("messageId"),
            "approximateArrivalTimestamp": (
                arrival_time
                if arrival_time is not None
                else int(entry.get("attributes", {}).get("SentTimestamp", "0")) / 1000
            ),
            "deadLetteredAt": time.time(),
        },
    }
