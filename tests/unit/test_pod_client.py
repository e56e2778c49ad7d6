"""The gateway's HTTP client for runtime servers, against real servers on loopback (stdlib asyncio and
uvloop, as `lamina gateway` runs)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from lamina.environments.pod_client import Broken, PodClient, Refused
from lamina_runtime.http11 import Request, serve_connection
from tests.support.local_mode import free_port


class Server:
    """A keep-alive HTTP/1.1 server built on the runtime's own http11 module."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[Request] = []
        self.delay = 0.0
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{self.port}"

    async def _route(self, request: Request) -> tuple[int, bytes, dict[str, str]]:
        self.requests.append(request)
        await asyncio.sleep(self.delay)
        return 200, request.body[::-1], {"Lamina-Echo": request.headers.get("x-echo", "")}

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        await serve_connection(
            reader, writer, self._route, 1 << 20, lambda e: (e.status, str(e).encode(), {})
        )

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Callable[..., Awaitable[None]]], None]:
    """Run a case on the stdlib loop and on uvloop (whose transports are no asyncio.Transport)."""
    runner = uvloop.run if request.param == "uvloop" else asyncio.run
    return lambda case: runner(case())


def with_server(case: Callable[[Server], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    async def wrapped() -> None:
        server = Server()
        await server.start()
        try:
            await case(server)
        finally:
            await server.stop()

    return wrapped


async def _requests_reuse_one_keep_alive_connection(server: Server) -> None:
    client = PodClient()
    endpoint = f"127.0.0.1:{server.port}"
    try:
        for i in range(5):
            reply = await client.request(endpoint, "POST", "/invoke", {"X-Echo": str(i)}, b"abc", 5)
            assert (reply.status, reply.body, reply.headers["lamina-echo"]) == (200, b"cba", str(i))
        big = bytes(range(256)) * 4096  # 1 MiB both ways: the reply arrives in many reads
        reply = await client.request(endpoint, "POST", "/invoke", {}, big, 5)
        assert reply.body == big[::-1]
        assert server.connections == 1
        assert [r.path for r in server.requests] == ["/invoke"] * 6
    finally:
        client.close()


async def _nothing_listening_is_refused_and_the_request_never_sent() -> None:
    client = PodClient()
    with pytest.raises(Refused):
        await client.request(f"127.0.0.1:{free_port()}", "GET", "/healthz", {}, b"", 1)


async def _a_server_that_closes_gets_a_new_connection_next_time(server: Server) -> None:
    client = PodClient()
    endpoint = f"127.0.0.1:{server.port}"
    try:
        for _ in range(3):  # the server answers "Connection: close" and closes
            assert (
                await client.request(endpoint, "GET", "/healthz", {"Connection": "close"}, b"", 5)
            ).status == 200
        assert server.connections == 3
    finally:
        client.close()


async def _no_reply_in_time_is_broken_and_the_connection_not_reused(server: Server) -> None:
    client = PodClient()
    endpoint = f"127.0.0.1:{server.port}"
    server.delay = 0.5
    try:
        with pytest.raises(Broken, match=r"no reply within 0\.1 s"):
            await client.request(endpoint, "POST", "/invoke", {}, b"x", 0.1)
        server.delay = 0
        assert (await client.request(endpoint, "POST", "/invoke", {}, b"xy", 5)).body == b"yx"
        assert server.connections == 2
    finally:
        client.close()


async def _a_connection_dropped_mid_request_is_broken() -> None:
    """The pod went away after the request went out: the caller is told, not left waiting."""
    got_request = asyncio.Event()

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        got_request.set()
        writer.close()

    raw = await asyncio.start_server(drop, "127.0.0.1", 0)
    client = PodClient()
    try:
        endpoint = f"127.0.0.1:{raw.sockets[0].getsockname()[1]}"
        with pytest.raises(Broken, match="connection lost"):
            await client.request(endpoint, "POST", "/invoke", {}, b"x", 10)
        assert got_request.is_set()
    finally:
        client.close()
        raw.close()
        await raw.wait_closed()


def test_requests_reuse_one_keep_alive_connection(run) -> None:
    run(with_server(_requests_reuse_one_keep_alive_connection))


def test_nothing_listening_is_refused_and_the_request_never_sent(run) -> None:
    run(_nothing_listening_is_refused_and_the_request_never_sent)


def test_a_server_that_closes_gets_a_new_connection_next_time(run) -> None:
    run(with_server(_a_server_that_closes_gets_a_new_connection_next_time))


def test_no_reply_in_time_is_broken_and_the_connection_not_reused(run) -> None:
    run(with_server(_no_reply_in_time_is_broken_and_the_connection_not_reused))


def test_a_connection_dropped_mid_request_is_broken(run) -> None:
    run(_a_connection_dropped_mid_request_is_broken)


async def _a_caller_that_goes_away_waits_for_the_reply_and_keeps_the_connection(server: Server) -> None:
    """The request is out and the environment runs it: a cancelled caller returns only once the reply
    came (so the environment is free when the pool hands it on), and the connection is reused; a
    second cancellation gives up on the reply and the connection."""
    client = PodClient()
    endpoint = f"127.0.0.1:{server.port}"
    loop = asyncio.get_running_loop()
    try:
        server.delay = 0.3
        call = asyncio.ensure_future(client.request(endpoint, "POST", "/invoke", {}, b"ab", 5))
        await asyncio.sleep(0.05)
        cancelled_at = loop.time()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert loop.time() - cancelled_at >= 0.2  # it waited for the reply
        server.delay = 0
        assert (await client.request(endpoint, "POST", "/invoke", {}, b"cd", 5)).body == b"dc"
        assert server.connections == 1

        server.delay = 0.3
        call = asyncio.ensure_future(client.request(endpoint, "POST", "/invoke", {}, b"ef", 5))
        await asyncio.sleep(0.05)
        call.cancel()
        await asyncio.sleep(0.01)
        call.cancel()  # gives up: the connection's state is unknown, it is not reused
        with pytest.raises(asyncio.CancelledError):
            await call
        server.delay = 0
        assert (await client.request(endpoint, "POST", "/invoke", {}, b"gh", 5)).body == b"hg"
        assert server.connections == 2
    finally:
        client.close()


def test_a_caller_that_goes_away_waits_for_the_reply_and_keeps_the_connection(run) -> None:
    run(with_server(_a_caller_that_goes_away_waits_for_the_reply_and_keeps_the_connection))


async def _bytes_with_no_request_out_retire_the_connection() -> None:
    """A server that sends a reply nobody asked for (after the one asked for): the connection no
    longer pairs replies with requests, so the next request goes out on a new one and gets its own
    reply, never the stray one."""
    connections = 0

    async def twice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            body = b"n%d" % connections
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray")
            await writer.drain()

    raw = await asyncio.start_server(twice, "127.0.0.1", 0)
    client = PodClient()
    try:
        endpoint = f"127.0.0.1:{raw.sockets[0].getsockname()[1]}"
        assert (await client.request(endpoint, "GET", "/", {}, b"", 5)).body == b"n1"
        await asyncio.sleep(0.2)  # the stray reply arrives while the connection is idle
        assert (await client.request(endpoint, "GET", "/", {}, b"", 5)).body == b"n2"
        assert connections == 2
    finally:
        client.close()
        raw.close()
        await raw.wait_closed()


def test_bytes_with_no_request_out_retire_the_connection(run) -> None:
    run(_bytes_with_no_request_out_retire_the_connection)


def test_a_call_resumes_in_the_turn_that_read_its_reply(run, monkeypatch) -> None:
    """The caller of ``request`` runs on inside the read of the reply's last bytes (no turn of the
    loop in between), on both loops: the gateway answers in the turn that read the pod's answer."""
    from lamina.environments import pod_client

    seen: list[bool] = []
    caller: list[asyncio.Task[object]] = []
    received = pod_client._Connection.data_received

    def data_received(self: pod_client._Connection, data: bytes) -> None:
        received(self, data)
        if caller and not self.busy:  # the reply is complete
            seen.append(caller[0].done())

    monkeypatch.setattr(pod_client._Connection, "data_received", data_received)

    async def case(server: Server) -> None:
        client = PodClient()

        async def call() -> object:
            reply = await client.request(f"127.0.0.1:{server.port}", "POST", "/invoke", {}, b"abc", 5)
            return reply.body

        caller.append(asyncio.get_running_loop().create_task(call()))
        assert await caller[0] == b"cba"
        client.close()

    run(with_server(case))
    assert seen == [True]
