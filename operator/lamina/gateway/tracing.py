"""Trace context through the gateway, and Lambda's recursion guard that rides on it.

Every invocation gets an X-Ray trace header, as on Lambda: the caller's ``X-Amzn-Trace-Id`` (its Root
and Sampled kept, a new Parent), or a new one. The function sees it as ``_X_AMZN_TRACE_ID``, and
botocore copies that variable into the ``X-Amzn-Trace-Id`` of every call the function makes, so a
call from a function to lamina carries the chain along without the function doing anything.

The header's ``Lineage`` field counts the invocations of the chain so far. A call that would make the
chain longer than :data:`MAX_DEPTH` is refused with Lambda's ``RecursiveInvocationException``: that
stops a function calling itself (or two functions calling each other) in a loop, as Lambda's recursive
loop detection does after 16 invocations.

A W3C ``traceparent`` / ``tracestate`` from the caller reaches the function too (``context.w3c()``,
``TRACEPARENT`` / ``TRACESTATE``), pointing at the gateway's span when the gateway traces
(:mod:`lamina.gateway.otel`).
"""

from __future__ import annotations

import os
import re
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from lamina.invocation.errors import LambdaServiceError

#: Lambda stops a recursive loop after 16 invocations.
MAX_DEPTH = 16
TRACE_HEADER = "X-Amzn-Trace-Id"
TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


class RecursiveInvocation(LambdaServiceError):
    status = 400
    code = "RecursiveInvocationException"
    error_type = "User"

    def __init__(self) -> None:
        super().__init__(
            "Lambda has detected your function being invoked in a recursive loop with other AWS "
            "resources and stopped your function's invocation."
        )


@dataclass(frozen=True, slots=True)
class TraceContext:
    """What one invocation passes on: its X-Ray header (``trace_id``) and W3C context."""

    trace_id: str
    depth: int
    traceparent: str | None = None
    tracestate: str | None = None

    def encode(self) -> str:
        """As an async event keeps it (JSON)."""
        import json

        fields = {"traceId": self.trace_id, "traceparent": self.traceparent, "tracestate": self.tracestate}
        return json.dumps({k: v for k, v in fields.items() if v})

    @classmethod
    def decode(cls, text: str) -> TraceContext:
        import json

        data = json.loads(text)
        trace_id = str(data["traceId"])
        depth = lineage_depth(parse_xray(trace_id).get("Lineage"))
        return cls(trace_id, depth, data.get("traceparent"), data.get("tracestate"))


def parse_xray(header: str | None) -> dict[str, str]:
    """``Root=...;Parent=...;Sampled=1;Lineage=...`` as a dict (unknown keys kept, in order)."""
    fields: dict[str, str] = {}
    for part in (header or "").split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key:
            fields[key] = value
    return fields


def lineage_depth(lineage: str | None) -> int:
    """Invocations so far in the chain a ``Lineage`` value names (``<hash>:<count>``); 0 without one."""
    if not lineage:
        return 0
    count = lineage.rpartition(":")[2]
    return int(count) if count.isdigit() else 0


def new_root() -> str:
    return f"1-{int(time.time()):08x}-{os.urandom(12).hex()}"


_HASHES: dict[str, str] = {}


def _hash(function_key: str) -> str:
    """The function's part of ``Lineage`` (CRC-32 of its key), computed once per function."""
    found = _HASHES.get(function_key)
    if found is None:
        if len(_HASHES) >= 4096:
            _HASHES.clear()
        found = _HASHES[function_key] = f"{zlib.crc32(function_key.encode()):08x}"
    return found


def incoming(headers: Mapping[str, str], function_key: str) -> TraceContext:
    """The trace context of an invocation of ``function_key`` from the caller's headers; raises
    :class:`RecursiveInvocation` when the chain already holds :data:`MAX_DEPTH` invocations."""
    fields = parse_xray(headers.get(TRACE_HEADER))
    depth = lineage_depth(fields.get("Lineage")) + 1
    if depth > MAX_DEPTH:
        raise RecursiveInvocation()
    random = os.urandom(20).hex()  # one call: a new Parent (16 digits), and a new Root's 24 when needed
    root = fields.get("Root") or f"1-{int(time.time()):08x}-{random[16:]}"
    sampled = fields.get("Sampled") or "0"
    trace_id = f"Root={root};Parent={random[:16]};Sampled={sampled};Lineage={_hash(function_key)}:{depth}"
    parent = headers.get("traceparent")
    if parent is not None and not TRACEPARENT.match(parent.strip().lower()):
        parent = None  # malformed: W3C says start a new trace rather than pass it on
    state = headers.get("tracestate") if parent else None
    return TraceContext(trace_id, depth, parent.strip().lower() if parent else None, state)
