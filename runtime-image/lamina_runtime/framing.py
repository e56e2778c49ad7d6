"""Frames on the host <-> worker control socket.

A frame is struct ``!II`` (header length, body length), a JSON header, then raw body bytes. The body
stays raw so that a 6 MB event or result is never re-encoded inside JSON.
"""

from __future__ import annotations

# The C module: `signal` imports `enum`, which would cost the worker a third of its start-up.
import _signal
import json
import os
import struct

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at cold start
if TYPE_CHECKING:
    from typing import Any

PREFIX = struct.Struct("!II")
MAX_HEADER = 64 * 1024 * 1024  # a header carries the invocation log, which may be long
MAX_BODY = 64 * 1024 * 1024  # well above the 6 MB payload limits; guards against a corrupt stream

#: Sent by the host to a timed-out worker: write what the invocation logged so far as a "log" frame.
#: (Here and not in ``protocol``: the worker must not import dataclasses, a third of its start-up.)
FLUSH_LOG_SIGNAL: int = _signal.SIGUSR1


class FrameError(Exception):
    """The peer sent something that is not a frame (or closed mid-frame)."""


def encode(header: dict[str, Any], body: bytes = b"") -> bytes:
    raw = json.dumps(header, separators=(",", ":")).encode()
    return PREFIX.pack(len(raw), len(body)) + raw + body


def decode_header(raw: bytes) -> dict[str, Any]:
    header = json.loads(raw)
    if not isinstance(header, dict):
        raise FrameError(f"frame header is not a JSON object: {raw[:80]!r}")
    return header


def check_sizes(header_len: int, body_len: int) -> None:
    if header_len > MAX_HEADER or body_len > MAX_BODY:
        raise FrameError(f"frame too large (header {header_len} B, body {body_len} B)")


# Blocking side (the worker): plain os.read/os.write on the fd keeps the socket module out of INIT.


def _read_exact(fd: int, n: int, *, eof_ok: bool = False) -> bytes | None:
    chunks: list[bytes] = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            if eof_ok and not chunks:
                return None
            raise FrameError("control channel closed mid-frame")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame_fd(fd: int) -> tuple[dict[str, Any], bytes] | None:
    """Read one frame; None when the host closed the channel cleanly."""
    prefix = _read_exact(fd, PREFIX.size, eof_ok=True)
    if prefix is None:
        return None
    header_len, body_len = PREFIX.unpack(prefix)
    check_sizes(header_len, body_len)
    raw = _read_exact(fd, header_len) or b""
    body = _read_exact(fd, body_len) or b""
    return decode_header(raw), body


def write_frame_fd(fd: int, header: dict[str, Any], body: bytes = b"") -> None:
    view = memoryview(encode(header, body))
    while view:
        written = os.write(fd, view)
        view = view[written:]


# Asyncio side (the host): `reader` is an asyncio.StreamReader; duck-typed so asyncio is not imported here.


async def read_frame(reader) -> tuple[dict[str, Any], bytes]:  # type: ignore[no-untyped-def]
    """Read one frame; raises asyncio.IncompleteReadError when the worker is gone."""
    header_len, body_len = PREFIX.unpack(await reader.readexactly(PREFIX.size))
    check_sizes(header_len, body_len)
    raw = await reader.readexactly(header_len)
    body = await reader.readexactly(body_len) if body_len else b""
    return decode_header(raw), body
