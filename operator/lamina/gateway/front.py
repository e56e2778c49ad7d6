"""The gateway's front door: the Invoke API's hot route on a lean HTTP/1.1 protocol, every other
request on aiohttp's.

A warm invocation through the gateway is the product's hot path, and aiohttp's server spent about half
of the gateway's CPU on it: a request object and its stream reader, the router, the middleware chain, a
response object and its header multidict, all per call. :class:`FrontDoor` is the protocol of each
connection the gateway accepts. It reads the request's head as its bytes arrive and answers
``POST /2015-03-31/functions/{name}/invocations`` itself, with the same code as aiohttp's route
(:func:`lamina.gateway.invoke_api.invoke`), the same authentication and authorization
(:meth:`GatewayAuth.admit`) and the same drain (:class:`Drain`: a stopping gateway refuses it, cuts it
at the end of the grace). Anything else, or an Invoke request it does not take as it is (a chunked or
oversized body, ``Expect``, an encoded ``/`` in the name, a head it does not parse or that passes
aiohttp's size limits, HTTP/1.0), hands the connection, with the bytes received so far, to aiohttp's
own protocol for the rest of its life: its answers, errors and limits are aiohttp's as before.

The connection is registered with aiohttp's ``Server`` as aiohttp's protocol is, so the runner's
shutdown (close idle connections, let a call in flight finish within the shutdown timeout) treats it
alike. A client that hangs up cancels its call when the server cancels handlers
(``handler_cancellation``), as aiohttp does; the pod client then still waits for the environment's
reply before handing the environment on (lamina.environments.pod_client).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote

from aiohttp import web
from multidict import CIMultiDict

from lamina.gateway.auth import GatewayAuth
from lamina.gateway.drain import CUT, REFUSED, Drain
from lamina.gateway.errors import SYNC_PAYLOAD_LIMIT, ServiceError
from lamina.gateway.invoke_api import Answer, error_answer, invoke, new_request_id, too_large
from lamina.gateway.service import InvocationService
from lamina.invocation.errors import LambdaServiceError
from lamina_runtime.http11 import UnsafeHeader, check_header

PREFIX = "/2015-03-31/functions/"
SUFFIX = "/invocations"
#: aiohttp's keep-alive timeout: an idle connection is closed after it.
KEEPALIVE_S = 75.0
#: A head longer than this, or with a line longer than MAX_LINE, is aiohttp's to serve or refuse
#: (aiohttp refuses a line past 8190 bytes with 400), however many reads it arrived in.
MAX_HEAD = 32 * 1024
MAX_LINE = 8190
#: While a call runs, received bytes past this pause reading (pipelined requests pile up).
MAX_PENDING = SYNC_PAYLOAD_LIMIT + MAX_HEAD
#: A control character other than HTAB (a CR or LF in a line is one): aiohttp refuses such heads.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: Header names already found to be tokens (callers send the same few names on every request).
_NAMES: set[str] = set()
EAGER_TASKS = sys.version_info >= (3, 12)


@dataclass(frozen=True, slots=True)
class Front:
    """What the front door answers the Invoke API with: the app's service, auth and drain."""

    service: InvocationService
    auth: GatewayAuth | None = None
    drain: Drain | None = None

    async def answer(self, head: Head, body: bytes, request_id: str) -> Answer:
        """The Invoke API's answer, authenticated first when auth is on (as the middleware does)."""
        if self.auth is not None:
            try:
                await self.auth.admit(
                    self.service.registry, "POST", head.raw_path, head.headers, body, "invoke", head.name
                )
            except LambdaServiceError as exc:
                return error_answer(exc, str(uuid.uuid4()))

        async def read(limit: int, invocation_type: str) -> bytes:
            if len(body) > limit:
                raise too_large(len(body), limit, invocation_type)
            return body

        return await invoke(self.service, head.name, head.qualifier, head.headers, read, request_id)


FRONT_KEY = web.AppKey("front", Front)


@dataclass(slots=True)
class Head:
    """An Invoke request's head, as the front door takes it."""

    raw_path: str
    name: str
    qualifier: str | None
    headers: CIMultiDict[str]
    length: int
    keep_alive: bool


def parse_head(text: str) -> Head | None:
    """The head of an Invoke request the front door answers itself; None for any other request, or
    one it leaves to aiohttp (to serve, or to refuse with aiohttp's own error)."""
    lines = text.split("\r\n")
    for line in lines:
        # isprintable() is false for every control character (and for a few harmless ones, which
        # the exact check then lets through): one C call per line instead of a regex over the head.
        if (not line.isprintable() and _CONTROL.search(line)) or len(line) > MAX_LINE:
            return None
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[0] != "POST" or parts[2] != "HTTP/1.1" or not parts[1].startswith(PREFIX):
        return None
    target = parts[1]
    path, _, query = target.partition("?")
    if not path.endswith(SUFFIX):
        return None
    name = path[len(PREFIX) : -len(SUFFIX)]
    if "%" in name:
        try:
            name = unquote(name, errors="strict")
        except UnicodeDecodeError:
            return None
    if not name or "/" in name:
        return None
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if key not in _NAMES:
            if not sep or not _TOKEN.fullmatch(key):
                return None  # also a folded line: it starts with a space
            if len(_NAMES) < 1024:
                _NAMES.add(key)
        headers.add(key, value.strip(" \t"))
    if "Transfer-Encoding" in headers or "Expect" in headers or "Upgrade" in headers:
        return None
    lengths = headers.getall("Content-Length", [])
    if len(lengths) > 1 or (lengths and not (lengths[0].isdigit() and lengths[0].isascii())):
        return None
    length = int(lengths[0]) if lengths else 0
    if length > SYNC_PAYLOAD_LIMIT:
        return None  # aiohttp's route answers it with Lambda's size error
    qualifier = None
    if query:
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key == "Qualifier":
                qualifier = value
                break
    # A list header: "close" in any of its fields (aiohttp reads every one).
    keep_alive = not any("close" in value.lower() for value in headers.getall("Connection", ()))
    return Head(target, name, qualifier, headers, length, keep_alive)


_dates: list[Any] = [0, ""]


def http_date() -> str:
    """The Date header's value, formatted once a second."""
    now = int(time.time())
    if _dates[0] != now:
        _dates[:] = [now, formatdate(now, usegmt=True)]
    return str(_dates[1])


_REASONS = {s.value: s.phrase for s in HTTPStatus}


def render(answer: Answer, keep_alive: bool) -> bytes:
    """A response's bytes; a header that could split it makes it a 500 (as aiohttp refuses to send one)."""
    status, headers, body = answer
    try:
        for key, value in headers.items():
            check_header(key, value)
    except UnsafeHeader as exc:
        status, headers, body = error_answer(ServiceError(str(exc)), headers.get("x-amzn-RequestId", ""))
    head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
    for key, value in headers.items():
        head += f"{key}: {value}\r\n"
    if status != 204:
        head += f"Content-Length: {len(body)}\r\n"
    head += f"Date: {http_date()}\r\nServer: lamina\r\n"
    if not keep_alive:
        head += "Connection: close\r\n"
    return (head + "\r\n").encode("latin-1") + body


class FrontDoor(asyncio.Protocol):
    """One accepted connection: Invoke requests answered here, one at a time; the connection handed to
    aiohttp's protocol at the first request that is not one."""

    def __init__(self, server: web.Server, front: Front) -> None:
        self._server = server
        self._front = front
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._head: Head | None = None  # parsed, waiting for its body
        self._busy = False  # a call is being answered
        self._task: asyncio.Task[None] | None = None
        #: Read by aiohttp's Server when the connection is lost (it tracks handlers by this).
        self._task_handler: asyncio.Task[None] | None = None
        self._closing = False  # close once the call in flight is answered
        self._paused = False  # the client does not read its answers fast enough
        self._last = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._server.connection_made(self, transport)  # type: ignore[arg-type]
        self._timer = self._loop.call_at(self._last + KEEPALIVE_S, self._check_idle)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._busy and not self._paused:
            self._next()
        elif len(self._buf) > MAX_PENDING and self._transport is not None:
            self._transport.pause_reading()  # resumed when the call is answered

    def eof_received(self) -> bool:
        """The client hung up (HTTP clients do not half-close): the transport closes, as aiohttp's
        does, and :meth:`connection_lost` cancels a call in flight, so a caller that gave up while its
        call waited for an environment frees its concurrency slot at once."""
        self._closing = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._server.connection_lost(self, exc)  # type: ignore[arg-type]
        if self._task is not None and self._server.handler_cancellation:
            self._task.cancel()  # the caller hung up, as aiohttp cancels its handler

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if not self._busy and self._buf:
            self._next()

    # what aiohttp's Server calls on its connections

    def close(self) -> None:
        """Take no more requests; close now if idle, else once the call in flight is answered."""
        self._closing = True
        if not self._busy and self._transport is not None:
            self._transport.close()

    async def shutdown(self, timeout: float | None = 15.0) -> None:  # noqa: ASYNC109 - aiohttp calls it so
        """The runner is stopping: the call in flight gets ``timeout`` seconds, then is cancelled."""
        self._closing = True
        task = self._task
        if task is not None and not task.done():
            await asyncio.wait([task], timeout=timeout)
            if not task.done():
                task.cancel()
                await asyncio.wait([task])
        if self._transport is not None:
            self._transport.close()

    # requests

    def _next(self) -> None:
        """Answer the next request if it is complete and an Invoke; hand the connection over if it
        is not one."""
        buf = self._buf
        if self._transport is None or self._busy:
            return  # the caller is gone (a request it pipelined is not run), or a call is answered first
        if self._head is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD or b"\n\n" in buf:
                    self._hand_off()  # aiohttp refuses it (or takes bare LF line ends)
                return
            head = parse_head(buf[:end].decode("latin-1")) if end <= MAX_HEAD else None
            if head is None:
                self._hand_off()
                return
            del buf[: end + 4]
            self._head = head
        head = self._head
        if len(buf) < head.length:
            return
        body = bytes(buf[: head.length])
        del buf[: head.length]
        self._head = None
        if self._closing:
            return
        self._busy = True
        if EAGER_TASKS:  # runs now up to its first wait, not on the loop's next turn
            task = asyncio.Task(self._answer(head, body), loop=self._loop, eager_start=True)  # type: ignore[call-arg,unused-ignore]
        else:
            task = self._loop.create_task(self._answer(head, body))
        if not task.done():
            self._task = task

    async def _answer(self, head: Head, body: bytes) -> None:
        front = self._front
        drain = front.drain
        request_id = new_request_id()
        keep_alive = head.keep_alive
        task = None
        if drain is not None and drain.draining:
            answer, keep_alive = error_answer(ServiceError(REFUSED), request_id), False
        else:
            if drain is not None:
                task = asyncio.current_task()
                assert task is not None
                drain.enter(task)
            try:
                answer = await front.answer(head, body, request_id)
            except asyncio.CancelledError:
                if task is None or drain is None or not drain.was_cut(task):
                    self._abort()  # the caller hung up, or the server is shutting down
                    raise
                task.uncancel()
                answer, keep_alive = error_answer(ServiceError(CUT), request_id), False
            except BaseException:
                self._abort()
                raise
            finally:
                if task is not None and drain is not None:
                    drain.leave(task)
        self._busy = False
        self._task = None
        self._last = self._loop.time()
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        keep_alive = keep_alive and not self._closing
        transport.write(render(answer, keep_alive))
        if not keep_alive:
            transport.close()
            return
        transport.resume_reading()
        if self._buf and not self._paused:
            self._loop.call_soon(self._next)  # a pipelined request that came meanwhile

    def _abort(self) -> None:
        self._busy = False
        self._task = None
        if self._transport is not None:
            self._transport.close()

    def _hand_off(self) -> None:
        """From now on aiohttp's protocol serves this connection, from the request that begins the
        bytes received so far."""
        transport = self._transport
        if transport is None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None
        self._server.connection_lost(self, None)  # type: ignore[arg-type]
        handler = self._server()
        transport.set_protocol(handler)
        # Reading paused here (MAX_PENDING) is not aiohttp's to resume on every version it may run:
        # it gets the transport reading, and pauses it itself when its own buffers fill.
        transport.resume_reading()
        handler.connection_made(transport)
        if self._paused:
            handler.pause_writing()
        data, self._buf = bytes(self._buf), bytearray()
        if data:
            handler.data_received(data)

    def _check_idle(self) -> None:
        """Close a connection idle for the keep-alive timeout; the timer is moved only when it fires.
        A call being answered, or a request whose body is still arriving, is not idle (aiohttp reads
        a body to its end, however slowly it comes)."""
        self._timer = None
        if self._transport is None:
            return
        active = self._busy or self._head is not None
        due = self._loop.time() + KEEPALIVE_S if active else self._last + KEEPALIVE_S
        if self._loop.time() >= due:
            self._transport.close()
        else:
            self._timer = self._loop.call_at(due, self._check_idle)


class FrontSite(web.TCPSite):
    """aiohttp's TCP site, accepting connections with :class:`FrontDoor` when the app has a
    :class:`Front` (``build_app`` gives it one), else with aiohttp's protocol as before."""

    async def start(self) -> None:
        await web.BaseSite.start(self)
        runner = self._runner
        server = runner.server
        assert server is not None
        front = runner.app.get(FRONT_KEY) if isinstance(runner, web.AppRunner) else None
        factory: Any = server if front is None else (lambda: FrontDoor(server, front))
        self._server = await asyncio.get_running_loop().create_server(
            factory,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
