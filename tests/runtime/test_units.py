"""The runtime's pure pieces: framing, HTTP parsing, import-path order, log line format."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from lamina_runtime import framing, logfmt
from lamina_runtime.http11 import BadRequest, RequestParser, read_request, render_response
from lamina_runtime.paths import layer_import_paths
from lamina_runtime.process import _Channel


def test_frame_round_trip_over_socketpair():
    a, b = socket.socketpair()
    try:
        body = os.urandom(3 * 1024 * 1024)
        header = {"type": "invoke", "request_id": "r1", "text": "ünïcode"}
        a.setblocking(True)
        framing.write_frame_fd(a.fileno(), header, b"")  # fits in the socket buffer
        assert framing.read_frame_fd(b.fileno()) == (header, b"")

        async def exchange() -> tuple[dict, bytes]:
            loop = asyncio.get_running_loop()
            transport, channel = await loop.create_connection(_Channel, sock=b)
            send = loop.run_in_executor(None, framing.write_frame_fd, a.fileno(), header, body)
            got = await channel.next_frame()
            await send
            transport.close()
            return got

        assert asyncio.run(exchange()) == (header, body)
    finally:
        a.close()
        b.close()


def test_frames_however_the_stream_splits_them():
    frames = [({"type": "result", "n": n, "log": "x" * n}, os.urandom(n * 7)) for n in range(5)]
    stream = b"".join(framing.encode(h, body) for h, body in frames)
    for step in (1, 3, 8, 1000, len(stream)):
        buffer, got = framing.FrameBuffer(), []
        for at in range(0, len(stream), step):
            buffer.feed(stream[at : at + step])
            while (frame := buffer.next()) is not None:
                got.append(frame)
        assert got == frames and len(buffer) == 0 and buffer.missing() == framing.PREFIX.size


def test_the_worker_reads_ahead_without_losing_the_next_frame():
    a, b = socket.socketpair()
    try:
        a.sendall(framing.encode({"n": 1}, b"one") + framing.encode({"n": 2}, b"two"))
        buffer = framing.FrameBuffer()
        assert framing.read_frame_fd(b.fileno(), buffer) == ({"n": 1}, b"one")
        assert framing.read_frame_fd(b.fileno(), buffer) == ({"n": 2}, b"two")  # from the buffer
        a.close()
        assert framing.read_frame_fd(b.fileno(), buffer) is None
    finally:
        b.close()


def test_the_host_channel_fails_on_garbage_and_on_close():
    async def run() -> list[str]:
        a, b = socket.socketpair()
        loop = asyncio.get_running_loop()
        transport, channel = await loop.create_connection(_Channel, sock=b)
        waiting = channel.next_frame()
        a.sendall(framing.encode({"n": 1}) + framing.PREFIX.pack(3, 0) + b"{x}")
        first = await waiting
        outcomes = [first[0]["n"]]
        with pytest.raises(framing.FrameError, match="frame header"):
            await channel.next_frame()  # the header of the second frame is not JSON
        a.close()
        transport.close()
        return outcomes

    assert asyncio.run(run()) == [1]


def test_a_closed_channel_is_a_frame_error():
    async def run() -> None:
        a, b = socket.socketpair()
        loop = asyncio.get_running_loop()
        transport, channel = await loop.create_connection(_Channel, sock=b)
        waiting = channel.next_frame()
        a.sendall(framing.encode({"n": 1}, b"body")[:-1])  # mid-frame
        a.close()
        with pytest.raises(framing.FrameError, match="closed"):
            await waiting
        transport.close()

    asyncio.run(run())


def test_read_frame_fd_eof_and_truncation():
    a, b = socket.socketpair()
    a.close()
    assert framing.read_frame_fd(b.fileno()) is None  # clean close between frames
    b.close()
    a, b = socket.socketpair()
    a.sendall(framing.encode({"x": 1}, b"abcdef")[:-2])
    a.close()
    with pytest.raises(framing.FrameError):
        framing.read_frame_fd(b.fileno())
    b.close()


def _stream_parse(raw: bytes, max_body: int = 1000):
    async def run():
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        return [await read_request(reader, max_body), await read_request(reader, max_body)]

    return asyncio.run(run())


def _incremental_parse(raw: bytes, max_body: int = 1000, step: int = 1):
    """RequestParser fed ``step`` bytes at a time, as a connection may receive them."""
    parser, requests = RequestParser(max_body), []
    for at in range(0, len(raw), step):
        parser.feed(raw[at : at + step])
        while (request := parser.next()) is not None:
            requests.append(request)
    return requests


PARSERS = [
    pytest.param(_stream_parse, id="stream"),
    pytest.param(_incremental_parse, id="bytewise"),
    pytest.param(lambda raw, max_body=1000: _incremental_parse(raw, max_body, step=len(raw)), id="whole"),
]


@pytest.mark.parametrize("parse", PARSERS)
def test_http_parses_pipelined_requests(parse):
    raw = (
        b"POST /invoke HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nLamina-Request-Id: abc\r\n\r\nhello"
        b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n"
    )
    first, second = parse(raw)
    assert (first.method, first.path, first.body) == ("POST", "/invoke", b"hello")
    assert first.headers["lamina-request-id"] == "abc" and first.keep_alive
    assert second.path == "/healthz" and not second.keep_alive


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"POST /invoke HTTP/1.1\r\nContent-Length: 5000\r\n\r\n", 413),
        (b"POST /invoke HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
        (b"garbage\r\n\r\n", 400),
        (b"POST /invoke HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
        (b"POST /invoke HTTP/1.1\r\nX-Long: " + b"a" * 17000 + b"\r\n\r\n", 400),
        (b"POST /invoke HTTP/1.1\r\n" + b"X-Many: 1\r\n" * 120 + b"\r\n", 400),
        (b"POST /invoke HTTP/1.1\r\nno colon here\r\n\r\n", 400),
    ],
)
@pytest.mark.parametrize("parse", PARSERS)
def test_http_rejects(raw, status, parse):
    with pytest.raises(BadRequest) as err:
        parse(raw)
    assert err.value.status == status


def test_http_parser_refuses_an_endless_head_before_it_ends():
    parser = RequestParser(1000)
    parser.feed(b"POST /invoke HTTP/1.1\r\nX-Long: " + b"a" * 17000)  # no line end yet
    with pytest.raises(BadRequest, match="header line too long"):
        parser.next()
    parser = RequestParser(1000)
    parser.feed(b"GET / HTTP/1.1\r\n" + b"X: 1\r\n" * 150)
    with pytest.raises(BadRequest, match="too many headers"):
        parser.next()


def test_http_parser_takes_bare_line_feeds():
    (request,) = _incremental_parse(b"POST /invoke HTTP/1.1\nContent-Length: 2\nX-A: b\n\n{}")
    assert (request.path, request.headers["x-a"], request.body) == ("/invoke", "b", b"{}")


def test_render_response():
    out = render_response(200, b"{}", {"Lamina-Function-Error": "Unhandled"}, keep_alive=True)
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Lamina-Function-Error: Unhandled\r\n" in out and b"Content-Length: 2\r\n" in out
    assert out.endswith(b"\r\n\r\n{}")


def test_layer_paths_later_first(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name / "python" / "lib" / "python3.11" / "site-packages").mkdir(parents=True)
    flat = tmp_path / "c"
    flat.mkdir()
    paths = layer_import_paths([str(tmp_path / "a"), str(tmp_path / "b"), str(flat)], (3, 11))
    assert paths == [
        str(flat),
        str(tmp_path / "b" / "python" / "lib" / "python3.11" / "site-packages"),
        str(tmp_path / "b" / "python"),
        str(tmp_path / "a" / "python" / "lib" / "python3.11" / "site-packages"),
        str(tmp_path / "a" / "python"),
    ]


def test_report_line_format():
    line = logfmt.report_line("r", 15.741, 128, 56, 130.494, "timeout")
    assert line == (
        "REPORT RequestId: r\tDuration: 15.74 ms\tBilled Duration: 16 ms\tMemory Size: 128 MB\t"
        "Max Memory Used: 56 MB\tInit Duration: 130.49 ms\tStatus: timeout\n"
    )
    assert "\tBilled Duration: 1 ms\t" in logfmt.report_line("r", 0.2, 128, 1)
    assert "Init Duration" not in logfmt.report_line("r", 3.0, 128, 1)


def test_log_buffer_keeps_the_tail():
    from lamina_runtime.capture import LogBuffer

    log = LogBuffer(keep=100)
    for n in range(1000):
        log.add(f"line {n}\n")
    text = log.take()
    assert text.startswith("[log truncated]\n") and text.endswith("line 999\n")
    assert len(text) <= 100 + len("[log truncated]\n")
    log.add("short\n")
    assert log.take() == "short\n"  # take() starts a fresh phase


async def _http_server(route, timeouts=None):
    from lamina_runtime.http11 import HttpServerProtocol, Timeouts

    def refuse(exc: BadRequest):
        return exc.status, str(exc).encode(), {}

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: HttpServerProtocol(route, 1000, refuse, timeouts or Timeouts()), "127.0.0.1", 0
    )
    return server, server.sockets[0].getsockname()[1]


async def _read_until_closed(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), 5)


async def test_http_server_answers_pipelined_and_split_requests_in_order():
    seen = []

    async def route(request):
        seen.append(request.body)
        await asyncio.sleep(0.01)  # the next request arrives while this one is answered
        return 200, b"got " + request.body, {"X-N": str(len(seen))}

    server, port = await _http_server(route)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    one = b"POST /%s HTTP/1.1\r\nContent-Length: 1\r\n\r\n%s"
    writer.write(one % (b"a", b"1") + one % (b"b", b"2"))
    for piece in (b"POST /c HTTP/1.1\r\nContent-", b"Length: 1\r\nConnection: close\r\n\r\n", b"3"):
        await writer.drain()
        await asyncio.sleep(0.005)
        writer.write(piece)
    data = await _read_until_closed(reader)
    writer.close()
    server.close()
    assert seen == [b"1", b"2", b"3"]
    assert data.count(b"HTTP/1.1 200 OK") == 3
    assert data.index(b"got 1") < data.index(b"got 2") < data.index(b"got 3")
    assert data.rstrip().endswith(b"got 3") and b"Connection: close" in data


async def test_http_server_answers_a_client_that_half_closed():
    async def route(request):
        await asyncio.sleep(0.05)
        return 200, b"late", {}

    server, port = await _http_server(route)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\n\r\n")
    writer.write_eof()
    data = await _read_until_closed(reader)
    writer.close()
    server.close()
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"late")


async def test_http_server_refuses_a_bad_request_and_closes():
    async def route(request):
        raise AssertionError("never routed")

    server, port = await _http_server(route)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST / HTTP/1.1\r\nContent-Length: 5000\r\n\r\n")
    data = await _read_until_closed(reader)
    writer.close()
    server.close()
    assert data.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in data


def _fed(channel: _Channel, data: bytes) -> None:
    """Hand bytes to the channel as the event loop does when the socket is readable."""
    buffer = channel.get_buffer(len(data))
    buffer[: len(data)] = data
    channel.buffer_updated(len(data))


def test_a_reply_resumes_its_waiting_task_in_the_turn_that_read_it():
    """The task awaiting the worker's reply runs on when the reply's bytes are read, not on the
    loop's next turn: the pod's server answers in the turn that read the worker's frame."""

    async def run() -> list[object]:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        transport, channel = await loop.create_connection(_Channel, sock=b)
        seen: list[object] = []

        async def waiter() -> None:
            header, body = await channel.next_frame()
            seen.append((header["n"], body))

        task = loop.create_task(waiter())
        await asyncio.sleep(0)  # the task now waits for the frame
        arrived = loop.create_future()

        def reply_arrives() -> None:  # a loop callback, as the socket's read is
            _fed(channel, framing.encode({"n": 1}, b"one"))
            seen.append(("done at once", task.done()))
            arrived.set_result(None)

        loop.call_soon(reply_arrives)
        await arrived
        await task
        transport.close()
        a.close()
        return seen

    assert asyncio.run(run()) == [(1, b"one"), ("done at once", True)]


def test_a_reply_read_while_a_task_runs_resumes_its_waiter_on_the_next_turn():
    """Never one task's step inside another's: a reply that a running task reads (never the case in
    the server, where the loop reads the socket) wakes its waiter as a plain future would."""

    async def run() -> tuple[bool, bool, tuple]:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        transport, channel = await loop.create_connection(_Channel, sock=b)
        task = loop.create_task(_await(channel))
        await asyncio.sleep(0)
        _fed(channel, framing.encode({"n": 2}, b"two"))  # from this task
        right_after = task.done()
        got = await task
        transport.close()
        a.close()
        return right_after, task.done(), got

    async def _await(channel: _Channel) -> tuple:
        return await channel.next_frame()

    right_after, done, got = asyncio.run(run())
    assert (right_after, done) == (False, True)
    assert got == ({"n": 2}, b"two")


def test_a_reply_whose_waiter_was_cancelled_is_kept_for_the_next_one():
    """A caller that went away (its task cancelled) or a timeout: the frame that arrives after it is
    not lost, it is the next ``next_frame``'s (the partial log after a timeout is read so)."""

    async def run() -> tuple[bool, tuple]:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        transport, channel = await loop.create_connection(_Channel, sock=b)
        task = loop.create_task(_await(channel))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.sleep(0)
        cancelled = task.cancelled()
        _fed(channel, framing.encode({"n": 3}, b"three"))
        got = await channel.next_frame()
        transport.close()
        a.close()
        return cancelled, got

    async def _await(channel: _Channel) -> tuple:
        return await channel.next_frame()

    assert asyncio.run(run()) == (True, ({"n": 3}, b"three"))
