"""A minimal HTTP/1.1 request reader and response writer over asyncio streams.

Enough for the pod's two endpoints and for the Runtime API that custom runtimes call: Content-Length
bodies, keep-alive, no chunked uploads. The runtime stays stdlib-only, so no aiohttp here.

A response header that would split the response (CR, LF or NUL in a name or value, a name that is not
an HTTP token, a value outside Latin-1) is never written: the response becomes a 500 instead, so no
value a function controls can inject a header or drop the connection. Senders of arbitrary text
(error type names) encode it with :func:`lamina_runtime.protocol.header_value` first.

``Timeouts`` bound how long a client may take: to send the next request on an idle keep-alive
connection (``idle``), and to send one request's head and body once it started (``read``). A slow or
silent client then costs a socket for a bounded time, never the environment.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

MAX_HEADER_LINE = 16 * 1024
MAX_HEADERS = 100
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_UNSAFE_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds a client gets; None waits forever (the Runtime API's bootstrap may idle for as long
    as an invocation lasts)."""

    first: float | None = None  # to send the first request after connecting
    idle: float | None = None  # to start the next request on a keep-alive connection
    read: float | None = None  # to finish a request's head and body once its first line came


REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    408: "Request Timeout",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class Request:
    method: str
    path: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return connection == "keep-alive"
        return connection != "close"


async def _line(reader: asyncio.StreamReader) -> bytes:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise BadRequest(400, "header line too long") from None
    if len(line) > MAX_HEADER_LINE:
        raise BadRequest(400, "header line too long")
    return line.rstrip(b"\r\n")


async def read_request(
    reader: asyncio.StreamReader,
    max_body: int,
    idle: float | None = None,
    read: float | None = None,
) -> Request | None:
    """Next request on a connection; None when the client closed it between requests, or stayed
    silent for ``idle`` seconds. The rest of the request must arrive within ``read`` seconds (else
    BadRequest 408)."""
    try:
        async with asyncio.timeout(idle):
            first = await _line(reader)
    except (asyncio.IncompleteReadError, TimeoutError):
        return None
    try:
        async with asyncio.timeout(read):
            return await _rest(reader, first, max_body)
    except TimeoutError:
        raise BadRequest(408, f"the request was not received within {read:g} s") from None


async def _rest(reader: asyncio.StreamReader, first: bytes, max_body: int) -> Request:
    parts = first.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, f"malformed request line: {first[:100]!r}")
    request = Request(method=parts[0].upper(), path=parts[1], version=parts[2])
    for _ in range(MAX_HEADERS + 1):
        line = await _line(reader)
        if not line:
            break
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise BadRequest(400, f"malformed header line: {line[:100]!r}")
        request.headers[name.strip().lower()] = value.strip()
    else:
        raise BadRequest(400, "too many headers")
    if "chunked" in request.headers.get("transfer-encoding", "").lower():
        raise BadRequest(411, "chunked request bodies are not supported; send Content-Length")
    try:
        length = int(request.headers.get("content-length", "0"))
    except ValueError:
        raise BadRequest(400, "Content-Length is not a number") from None
    if length < 0:
        raise BadRequest(400, "Content-Length is negative")
    if length > max_body:
        raise BadRequest(413, f"request body of {length} bytes exceeds the limit of {max_body} bytes")
    request.body = await reader.readexactly(length) if length else b""
    return request


class UnsafeHeader(ValueError):
    """A response header that cannot be written as it is."""


def check_header(name: str, value: str) -> None:
    if not _TOKEN.fullmatch(name):
        raise UnsafeHeader(f"response header name {name[:64]!r} is not an HTTP token")
    if _UNSAFE_VALUE.search(value):
        raise UnsafeHeader(f"response header {name} has a control character (CR, LF, NUL...)")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise UnsafeHeader(f"response header {name} is not Latin-1; encode it first") from None


def render_response(status: int, body: bytes, headers: dict[str, str], keep_alive: bool) -> bytes:
    """The response's bytes; a header that could split it turns the whole response into a 500."""
    try:
        for name, value in headers.items():
            check_header(name, value)
    except UnsafeHeader as exc:
        status, headers = 500, {"Content-Type": "application/json"}
        body = json.dumps({"message": f"refused to send an unsafe response header: {exc}"}).encode()
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


Response = tuple[int, bytes, dict[str, str]]


async def serve_connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    route: Callable[[Request], Awaitable[Response]],
    max_body: int,
    refuse: Callable[[BadRequest], Response],
    timeouts: Timeouts = Timeouts(),
) -> None:
    """Answer the requests of one keep-alive connection with ``route``; a malformed, oversized or too
    slow one gets ``refuse``'s answer and the connection is closed (its body may be unread)."""
    idle = timeouts.first
    try:
        while True:
            try:
                request = await read_request(reader, max_body, idle, timeouts.read)
            except BadRequest as exc:
                writer.write(render_response(*refuse(exc), keep_alive=False))
                await writer.drain()
                return
            if request is None:
                return
            status, body, headers = await route(request)
            writer.write(render_response(status, body, headers, request.keep_alive))
            await writer.drain()
            if not request.keep_alive:
                return
            idle = timeouts.idle
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        writer.close()
