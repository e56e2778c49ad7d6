"""A small HTTP/1.1 client for the gateway's calls to runtime servers (`lamina_runtime serve`).

The hot path of every cluster invocation is one request to one pod. A general client (aiohttp's) pays
for what this path never needs: URL objects, cookie jars, redirects, chunked and compressed bodies,
per-request timers and stream readers. Here a keep-alive connection per environment is an
``asyncio.Protocol``: the request goes out as one buffer, the reply (always ``Content-Length``-framed
by the runtime server) is parsed in ``data_received``, and one timer handle bounds the call. The
awaiting call resumes in the turn of the loop that read the reply (a ``PromptFuture``), so the
gateway answers its caller without another turn of the loop.

Connections are kept per endpoint and reused; an environment serves one request at a time, so a pod
usually holds one connection from this gateway (two while its probe and an invocation overlap).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass

from lamina_runtime.prompt import PromptFuture

#: Longest status line + headers accepted from a runtime server.
MAX_HEAD = 64 * 1024


class Refused(Exception):
    """The connection could not be made: the request never reached the environment."""


class Broken(Exception):
    """The connection failed or timed out after the request was (perhaps) sent."""


@dataclass(slots=True)
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


def render_request(method: str, path: str, host: str, headers: dict[str, str], body: bytes) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
    for name, value in headers.items():
        head += f"{name}: {value}\r\n"
    return (head + "\r\n").encode("latin-1") + body


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    __slots__ = ("_buf", "_head", "_idle", "_length", "_reply", "_timer", "closed", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._reply: PromptFuture[Reply] | None = None
        self._idle: asyncio.Future[None] | None = None  # for one whose caller went away (settled())
        self._timer: asyncio.TimerHandle | None = None
        self._buf = bytearray()
        self._length = -1  # body length once the head is parsed
        self._head: tuple[int, dict[str, str], bool] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._finish(Broken(f"connection lost: {exc or 'closed by the server'}"))

    def data_received(self, data: bytes) -> None:
        if self._reply is None:
            # Bytes with no request out (a server's 408 before it hangs up, or a reply nobody asked
            # for): the stream no longer pairs replies with requests, so it is never used again.
            self.close()
            return
        buf = self._buf
        buf += data
        if self._head is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self._fail(Broken("reply head too long"))
                return
            try:
                self._head = _parse_head(bytes(buf[:end]))
            except ValueError as exc:
                self._fail(Broken(f"malformed reply: {exc}"))
                return
            del buf[: end + 4]
            self._length = int(self._head[1].get("content-length", "0"))
        if len(buf) < self._length:
            return
        status, headers, keep = self._head
        body = bytes(buf[: self._length])
        del buf[: self._length]
        self._head = None
        if not keep:
            self.close()
        self._finish(Reply(status, headers, body))

    def _fail(self, error: Exception) -> None:
        self.close()
        self._finish(error)

    def _finish(self, outcome: Reply | Exception) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        reply, self._reply = self._reply, None
        idle, self._idle = self._idle, None
        if idle is not None and not idle.done():
            idle.set_result(None)
        if reply is None or reply.done():
            return
        if isinstance(outcome, Exception):
            reply.settle(error=outcome)
        else:
            reply.settle(outcome)

    def _timed_out(self, seconds: float) -> None:
        self._timer = None
        self._fail(Broken(f"no reply within {seconds:g} s"))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    @property
    def busy(self) -> bool:
        return self._reply is not None

    def settled(self) -> asyncio.Future[None]:
        """Done once the request in flight was answered (or the connection failed), even when the
        future :meth:`send` returned was cancelled by a caller that went away."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._reply is None:
            future.set_result(None)
        else:
            self._idle = future
        return future

    def send(self, data: bytes, timeout: float) -> asyncio.Future[Reply]:
        assert self.transport is not None and self._reply is None
        loop = asyncio.get_running_loop()
        reply: PromptFuture[Reply] = PromptFuture(loop=loop)
        self._reply = reply
        self._timer = loop.call_later(timeout, self._timed_out, timeout)
        self.transport.write(data)
        return reply


def _parse_head(head: bytes) -> tuple[int, dict[str, str], bool]:
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    if not version.startswith("HTTP/1."):
        raise ValueError(f"status line {lines[0][:80]!r}")
    status = int(rest[:3])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", ""):
        raise ValueError("chunked replies are not expected from a runtime server")
    connection = headers.get("connection", "").lower()
    keep = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    return status, headers, keep


class PodClient:
    """Keep-alive connections to runtime servers, by ``host:port``."""

    def __init__(self, connect_timeout: float = 5.0) -> None:
        self.connect_timeout = connect_timeout
        self._idle: dict[str, list[_Connection]] = defaultdict(list)
        #: Set by :meth:`abandon`: a cancelled call no longer waits for its reply.
        self.abandoned = False

    def abandon(self) -> None:
        """From now on a cancelled call gives up on its reply at once instead of waiting for it: the
        gateway is stopping and answers what still runs with ``ServiceException``
        (:mod:`lamina.gateway.drain`); no environment will be handed on again, so what waiting
        protects (an environment never sent a second call while it runs the first) no longer matters."""
        self.abandoned = True

    async def request(
        self,
        endpoint: str,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        within: float,
    ) -> Reply:
        """One request on an idle connection to ``endpoint`` (a new one if none), answered ``within``
        seconds: raises `Refused` when no connection could be made, `Broken` when it failed (or
        timed out) after the request went out."""
        conn = self._take(endpoint)
        if conn is None:
            conn = await self._connect(endpoint, min(self.connect_timeout, within))
        data = render_request(method, path, endpoint, headers, body)
        reply = conn.send(data, within)
        try:
            result = await reply  # not shielded: a shield costs a future and a turn of the loop per call
        except asyncio.CancelledError:
            # The caller went away, but the request is out and the server is running it: wait for
            # its reply, so that when this returns the environment is really free (a new request
            # sent to it now would find it busy). Only a second cancellation gives up on it.
            if self.abandoned:  # the gateway is stopping: it gives up on the reply (abandon())
                conn.close()
                raise
            try:
                await conn.settled()
            except asyncio.CancelledError:
                conn.close()
                raise
            self._keep(endpoint, conn)
            raise
        except BaseException:
            conn.close()  # failed mid-request: the connection's state is unknown
            raise
        self._keep(endpoint, conn)
        return result

    def _keep(self, endpoint: str, conn: _Connection) -> None:
        if not conn.closed and not conn.busy:
            self._idle[endpoint].append(conn)

    def _take(self, endpoint: str) -> _Connection | None:
        idle = self._idle.get(endpoint)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def _connect(self, endpoint: str, within: float) -> _Connection:
        host, _, port = endpoint.rpartition(":")
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(_Connection, host, int(port)), within)
        except (OSError, TimeoutError) as exc:
            raise Refused(f"cannot connect to {endpoint}: {exc}") from exc
        return conn

    def forget(self, endpoint: str) -> None:
        """Close the idle connections to an environment that is gone."""
        for conn in self._idle.pop(endpoint, []):
            conn.close()

    def close(self) -> None:
        for endpoint in list(self._idle):
            self.forget(endpoint)
