"""Frames on the host <-> worker control socket.

A frame is struct ``!II`` (header length, body length), a JSON header, then raw body bytes. The body
stays raw so that a 6 MB event or result is never re-encoded inside JSON. Both ends cut frames out of
what they read with :class:`FrameBuffer` (the host's asyncio side is process._Channel).
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
#: Set in a pre-spawned worker's environment (a generic pool pod's): before anything else it waits for
#: a "handover" frame carrying the function's environment and directory (process.Prespawned).
PRESPAWNED_ENV = "LAMINA_PRESPAWNED"


class FrameError(Exception):
    """The peer sent something that is not a frame (or closed mid-frame)."""


#: One JSON encoder for every frame: ``json.dumps`` with its own separators builds a new encoder per call.
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


def encode(header: dict[str, Any], body: bytes = b"") -> bytes:
    raw = _ENCODE(header).encode()
    return PREFIX.pack(len(raw), len(body)) + raw + body


def decode_header(raw: bytes) -> dict[str, Any]:
    header = json.loads(raw)
    if not isinstance(header, dict):
        raise FrameError(f"frame header is not a JSON object: {raw[:80]!r}")
    return header


def check_sizes(header_len: int, body_len: int) -> None:
    if header_len > MAX_HEADER or body_len > MAX_BODY:
        raise FrameError(f"frame too large (header {header_len} B, body {body_len} B)")


class FrameBuffer:
    """Frames cut out of bytes as they arrive, however the stream splits them: both ends read the
    socket in large chunks (one ``recv`` for a whole invocation, not one per part of a frame)."""

    __slots__ = ("_buf", "_end")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._end = 0  # length of the frame at the head of the buffer once its prefix is in, else 0

    def feed(self, data: bytes | memoryview) -> None:
        self._buf += data

    def __len__(self) -> int:
        return len(self._buf)

    def missing(self) -> int:
        """Bytes still to come before the frame at the head is complete (at least its prefix)."""
        return max((self._end or PREFIX.size) - len(self._buf), 0)

    def next(self) -> tuple[dict[str, Any], bytes] | None:
        """The next complete frame, or None until more bytes came; FrameError (or ValueError for a
        header that is not JSON) when the stream is not frames."""
        buf = self._buf
        if not self._end:
            if len(buf) < PREFIX.size:
                return None
            header_len, body_len = PREFIX.unpack_from(buf)
            check_sizes(header_len, body_len)
            self._end = PREFIX.size + header_len + body_len
        end = self._end
        if len(buf) < end:
            return None
        header_len = PREFIX.unpack_from(buf)[0]
        with memoryview(buf) as view:
            raw = bytes(view[PREFIX.size : PREFIX.size + header_len])
            body = bytes(view[PREFIX.size + header_len : end])
        del buf[:end]
        self._end = 0
        return decode_header(raw), body


# Blocking side (the worker): plain os.read/os.write on the fd keeps the socket module out of INIT.


def read_frame_fd(fd: int, buffer: FrameBuffer | None = None) -> tuple[dict[str, Any], bytes] | None:
    """Read one frame; None when the host closed the channel cleanly (between frames). With a
    ``buffer`` kept across calls, the socket is read ahead (64 KiB at a time: usually one ``read``
    per frame); without one, exactly the frame's bytes are read."""
    own = buffer is None
    if buffer is None:
        buffer = FrameBuffer()
    while True:
        frame = buffer.next()
        if frame is not None:
            return frame
        missing = buffer.missing()
        chunk = os.read(fd, min(missing if own else max(missing, 1 << 16), 1 << 20))
        if not chunk:
            if not len(buffer):
                return None
            raise FrameError("control channel closed mid-frame")
        buffer.feed(chunk)


def write_frame_fd(fd: int, header: dict[str, Any], body: bytes = b"") -> None:
    view = memoryview(encode(header, body))
    while view:
        written = os.write(fd, view)
        view = view[written:]
