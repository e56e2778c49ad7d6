"""The runtime's pure pieces: framing, HTTP parsing, import-path order, log line format."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from lamina_runtime import framing, logfmt
from lamina_runtime.http11 import BadRequest, read_request, render_response
from lamina_runtime.paths import layer_import_paths


def test_frame_round_trip_over_socketpair():
    a, b = socket.socketpair()
    try:
        body = os.urandom(3 * 1024 * 1024)
        header = {"type": "invoke", "request_id": "r1", "text": "ünïcode"}
        a.setblocking(True)
        framing.write_frame_fd(a.fileno(), header, b"")  # fits in the socket buffer
        assert framing.read_frame_fd(b.fileno()) == (header, b"")

        async def exchange() -> tuple[dict, bytes]:
            reader, writer = await asyncio.open_connection(sock=b)
            loop = asyncio.get_running_loop()
            send = loop.run_in_executor(None, framing.write_frame_fd, a.fileno(), header, body)
            got = await framing.read_frame(reader)
            await send
            writer.close()
            return got

        assert asyncio.run(exchange()) == (header, body)
    finally:
        a.close()
        b.close()


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


def _parse(raw: bytes, max_body: int = 1000):
    async def run():
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        return [await read_request(reader, max_body), await read_request(reader, max_body)]

    return asyncio.run(run())


def test_http_parses_pipelined_requests():
    raw = (
        b"POST /invoke HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nLamina-Request-Id: abc\r\n\r\nhello"
        b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n"
    )
    first, second = _parse(raw)
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
    ],
)
def test_http_rejects(raw, status):
    with pytest.raises(BadRequest) as err:
        _parse(raw)
    assert err.value.status == status


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
