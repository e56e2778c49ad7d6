"""A minimal HTTP/1.1 request reader and response writer over asyncio streams.

Enough for the pod's endpoints and for the Runtime API that custom runtimes call: Content-Length
bodies, keep-alive, no chunked uploads. The runtime stays stdlib-only, so no aiohttp here. The pod's
server, on every invocation's path, is a protocol (:class:`HttpServerProtocol`) that parses requests
as their bytes arrive; the Runtime API's long polls keep the simpler stream reader
(:func:`serve_connection`). Both parse heads with :func:`parse_head`, under the same limits.

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
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

MAX_HEADER_LINE = 16 * 1024
MAX_HEADERS = 100
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_UNSAFE_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_HEAD_END = re.compile(rb"\n\r?\n")  # the empty line after a head (CRLF or bare LF)
#: Header names already checked (response headers are mostly the same few names on every response).
_TOKENS: set[str] = set()
#: What one ``recv`` of the server reads at most (into a buffer kept per connection).
RECV_BYTES = 256 * 1024
#: Python 3.12's eager tasks: a request's task runs at once, up to its first wait.
EAGER_TASKS = sys.version_info >= (3, 12)


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
    421: "Misdirected Request",
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
    lines = []
    for _ in range(MAX_HEADERS + 1):
        line = await _line(reader)
        if not line:
            break
        lines.append(line.decode("latin-1"))
    else:
        raise BadRequest(400, "too many headers")
    request, length = parse_head(first.decode("latin-1"), lines, max_body)
    request.body = await reader.readexactly(length) if length else b""
    return request


def parse_head(first: str, lines: list[str], max_body: int) -> tuple[Request, int]:
    """The request of a request line and its header lines (Latin-1 text without line ends), and its
    body's length; BadRequest for what is malformed, unsupported or too large."""
    parts = first.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, f"malformed request line: {first[:100].encode('latin-1')!r}")
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest(400, f"malformed header line: {line[:100].encode('latin-1')!r}")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise BadRequest(411, "chunked request bodies are not supported; send Content-Length")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise BadRequest(400, "Content-Length is not a number") from None
    if length < 0:
        raise BadRequest(400, "Content-Length is negative")
    if length > max_body:
        raise BadRequest(413, f"request body of {length} bytes exceeds the limit of {max_body} bytes")
    return Request(parts[0].upper(), parts[1], parts[2], headers), length


class RequestParser:
    """Requests cut out of one connection's bytes as they arrive (pipelined ones in turn), with the
    limits of :func:`read_request`: lines of at most MAX_HEADER_LINE, MAX_HEADERS headers, a body
    of at most ``max_body``. Lines may end in CRLF or a bare LF."""

    __slots__ = ("_data", "_head", "_length", "max_body")

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self._data = bytearray()
        self._head: Request | None = None  # parsed, waiting for its body
        self._length = 0

    def feed(self, data: bytes | memoryview) -> None:
        self._data += data

    def __len__(self) -> int:
        return len(self._data)

    @property
    def started(self) -> bool:
        """Whether part of a next request has arrived."""
        return self._head is not None or bool(self._data)

    def next(self) -> Request | None:
        """The next complete request, None until its bytes are all in; BadRequest when it cannot
        be one (the connection is then answered and closed: what follows is not parsed)."""
        data = self._data
        if self._head is None:
            end = _HEAD_END.search(data)
            if end is None:
                self._check_partial()
                return None
            lines = [line.rstrip("\r") for line in data[: end.start()].decode("latin-1").split("\n")]
            if max(map(len, lines)) > MAX_HEADER_LINE:
                raise BadRequest(400, "header line too long")
            if len(lines) > MAX_HEADERS + 1:
                raise BadRequest(400, "too many headers")
            self._head, self._length = parse_head(lines[0], lines[1:], self.max_body)
            del data[: end.end()]
        length = self._length
        if len(data) < length:
            return None
        request, self._head = self._head, None
        request.body = bytes(data[:length]) if length else b""
        del data[:length]
        return request

    def _check_partial(self) -> None:
        """A head still arriving must fit the limits so far: a client cannot make the server keep
        an endless line or endless headers."""
        data = self._data
        last = data.rfind(b"\n")
        if len(data) - last - 1 > MAX_HEADER_LINE:
            raise BadRequest(400, "header line too long")
        if data.count(b"\n") > MAX_HEADERS + 1:
            raise BadRequest(400, "too many headers")


class UnsafeHeader(ValueError):
    """A response header that cannot be written as it is."""


def check_header(name: str, value: str) -> None:
    if name not in _TOKENS:
        if not _TOKEN.fullmatch(name):
            raise UnsafeHeader(f"response header name {name[:64]!r} is not an HTTP token")
        if len(_TOKENS) < 1024:
            _TOKENS.add(name)
    if value.isascii() and value.isprintable():
        return  # most values (ids, numbers, base64): two C calls instead of a regex and an encode
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


class HttpServerProtocol(asyncio.BufferedProtocol):
    """One connection of a server that answers with ``route``, as :func:`serve_connection` does, for
    the hot path of the pod's server: requests are parsed from the bytes as they arrive, received
    into one buffer kept for the connection, and each is answered by a task of its own. A request
    that arrives whole (the usual case) costs no stream reads line by line, no timeout context and
    no allocation of a receive buffer.

    ``timeouts`` as for :func:`serve_connection`: ``first`` and ``idle`` close a silent connection,
    ``read`` answers 408 to a request that started and did not finish. The deadlines are kept
    lazily: one timer per connection, moved only when it fires early."""

    def __init__(
        self,
        route: Callable[[Request], Awaitable[Response]],
        max_body: int,
        refuse: Callable[[BadRequest], Response],
        timeouts: Timeouts = Timeouts(),
    ) -> None:
        self._route = route
        self._refuse = refuse
        self._timeouts = timeouts
        self._parser = RequestParser(max_body)
        self._buffer = memoryview(bytearray(RECV_BYTES))
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._answering = False
        self._paused = False  # the client does not read its responses fast enough
        self._eof = False
        self._reading = False  # the deadline is the read timeout of a request that started
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None  # the request being answered

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._loop = asyncio.get_running_loop()
        self._wait(self._timeouts.first, reading=False)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._parser.feed(self._buffer[:nbytes])
        if not self._answering and not self._paused:
            self._next()
        elif len(self._parser) > RECV_BYTES and self._transport is not None:
            self._transport.pause_reading()  # pipelined requests pile up: resumed by the next answer

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if not self._answering:
            self._next()

    def eof_received(self) -> bool:
        """The client sent all it will: a request being answered still gets its response."""
        self._eof = True
        return self._answering

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _next(self) -> None:
        """Answer the next request if it is complete; else wait for the rest of it."""
        try:
            request = self._parser.next()
        except BadRequest as exc:
            self._send(self._refuse(exc), keep_alive=False)
            return
        if request is None:
            if self._eof:
                self._close()
            elif self._parser.started and not self._reading:
                self._wait(self._timeouts.read, reading=True)
            return
        self._answering = True
        self._deadline = None
        assert self._loop is not None
        if EAGER_TASKS:  # the route runs now, up to its first wait, not on the loop's next turn
            task = asyncio.Task(self._answer(request), loop=self._loop, eager_start=True)  # type: ignore[call-arg,unused-ignore]
        else:
            task = self._loop.create_task(self._answer(request))
        if not task.done():  # kept while it runs (a request answered at once may have started the next)
            self._task = task

    async def _answer(self, request: Request) -> None:
        try:
            response = await self._route(request)
        except BaseException:
            self._close()
            raise
        finally:
            self._answering = False
            self._task = None
        if not self._send(response, request.keep_alive):
            return
        self._wait(self._timeouts.idle, reading=False)
        assert self._transport is not None
        self._transport.resume_reading()
        if not self._paused:  # else resume_writing goes on
            self._next()  # a pipelined request that came meanwhile

    def _send(self, response: Response, keep_alive: bool) -> bool:
        """Write a response; False when the connection is over (closed now, or already)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        keep_alive = keep_alive and not self._eof
        transport.write(render_response(*response, keep_alive=keep_alive))
        if not keep_alive:
            self._close()
        return keep_alive

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _wait(self, seconds: float | None, *, reading: bool) -> None:
        """Set the connection's deadline; the timer is armed anew only when it would fire late."""
        self._reading = reading
        if seconds is None:
            self._deadline = None
            return
        assert self._loop is not None
        self._deadline = deadline = self._loop.time() + seconds
        if self._timer is not None and self._timer.when() > deadline:
            self._timer.cancel()
            self._timer = None
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._expired)

    def _expired(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self._answering:
            return
        assert self._loop is not None
        if self._loop.time() < deadline:
            self._timer = self._loop.call_at(deadline, self._expired)
        elif self._reading:
            why = f"the request was not received within {self._timeouts.read:g} s"
            self._send(self._refuse(BadRequest(408, why)), keep_alive=False)
        else:
            self._close()
