"""The pod's runtime server against hostile or slow clients (issue 9): the invoke secret, error type
names that would split a response, and clients that stall. Each case leaves the warm environment
serving the next call (the same worker process)."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest

from lamina.environments.base import FunctionConfig
from lamina.environments.endpoints import StaticEndpointSource
from lamina.environments.http_pool import HttpEnvironmentPool
from lamina_runtime.protocol import InvocationRequest
from tests.runtime.test_server import _poll, serve  # noqa: F401 - the fixture is reused

CODE = """
import os
def handler(event, context):
    if event.get("name"):
        raise type(event["name"], (Exception,), {})("odd")
    return {"pid": os.getpid()}
"""
SECRET = "s3cr3t-of-this-function"


def ready(served) -> None:
    _poll(lambda: served.request("GET", "/healthz")[0] == 200, "healthz 200")


def pid(served, **headers: str) -> int:
    status, _, out = served.invoke({}, **headers)
    assert status == 200, out
    return out["pid"]


def test_invoke_needs_the_function_secret(serve, write_code) -> None:  # noqa: F811
    served = serve(write_code(CODE), LAMINA_INVOKE_SECRET=SECRET)
    ready(served)
    assert served.request("GET", "/healthz")[0] == 200  # probes need no secret
    for headers in ({}, {"Lamina-Invoke-Secret": "wrong"}, {"Lamina-Invoke-Secret": SECRET[:-1]}):
        status, _, body = served.request("POST", "/invoke", b"{}", headers)
        assert status == 403
        assert "Lamina-Invoke-Secret" in json.loads(body)["message"]
        assert SECRET not in body.decode()
    first = pid(served, **{"Lamina-Invoke-Secret": SECRET})
    assert pid(served, **{"Lamina-Invoke-Secret": SECRET}) == first
    assert SECRET not in served.log.read_text()


def test_the_function_does_not_inherit_the_secret(serve, write_code) -> None:  # noqa: F811
    code = write_code(
        "import os\ndef handler(e, c):\n    return sorted(k for k in os.environ if 'SECRET' in k)\n"
    )
    served = serve(code, LAMINA_INVOKE_SECRET=SECRET)
    ready(served)
    status, _, out = served.invoke({}, **{"Lamina-Invoke-Secret": SECRET})
    assert status == 200 and out == []


@pytest.mark.parametrize("name", ["Bad\r\nX-Injected: 1", "Ошибка\u2603", "Tab\tName", "100%"])
def test_odd_error_type_names_neither_inject_nor_drop_the_connection(serve, write_code, name) -> None:  # noqa: F811
    served = serve(write_code(CODE))
    ready(served)
    before = pid(served)
    status, headers, body = served.request("POST", "/invoke", json.dumps({"name": name}).encode())
    assert status == 200
    assert "X-Injected" not in headers
    assert json.loads(body)["errorType"] == name
    assert headers["Lamina-Function-Error"] == "Unhandled"
    assert all(ord(c) < 128 and c not in "\r\n" for c in headers["Lamina-Error-Type"])
    assert pid(served) == before


async def test_the_gateway_reads_the_odd_name_back(serve, write_code) -> None:  # noqa: F811
    served = serve(write_code(CODE), LAMINA_INVOKE_SECRET=SECRET)
    await asyncio.to_thread(ready, served)
    fn = FunctionConfig(name="served")
    pool = HttpEnvironmentPool(
        StaticEndpointSource({fn.key: [f"127.0.0.1:{served.port}"]}), [fn], secret_for=lambda f: SECRET
    )
    await pool.start()
    try:
        name = "Bad\r\nX-Injected: 1 \u2603"
        request = InvocationRequest(request_id="r1", payload=json.dumps({"name": name}).encode())
        result = await pool.invoke(fn, request)
        assert result.function_error == "Unhandled" and result.error_type == name
        ok = await pool.invoke(fn, InvocationRequest(request_id="r2", payload=b"{}"))
        assert ok.function_error is None
    finally:
        await pool.close()


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """(closed by the server, what it sent) within ``seconds``."""
    sock.settimeout(seconds)
    data = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return True, data
            data += chunk
    except TimeoutError:
        return False, data


def test_slow_and_idle_clients_are_cut_off_without_costing_the_environment(serve, write_code) -> None:  # noqa: F811
    served = serve(write_code(CODE), LAMINA_HTTP_TIMEOUTS="1,1.5,1")
    ready(served)
    before = pid(served)
    silent = _connect(served.port)  # connects, never sends a byte
    trickle = _connect(served.port)  # starts a request, then stalls in its headers
    trickle.sendall(b"POST /invoke HTTP/1.1\r\nContent-Length: 2\r\n")
    started = time.monotonic()
    assert pid(served) == before  # the stalled clients do not hold the environment
    closed, _ = _closed_within(silent, 5)
    assert closed
    closed, data = _closed_within(trickle, 5)
    assert closed and data.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 5
    # An idle keep-alive connection is closed after its idle time, between requests.
    keep = _connect(served.port)
    keep.sendall(b"POST /invoke HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
    closed, data = _closed_within(keep, 0.5)
    assert not closed and b" 200 " in data
    closed, _ = _closed_within(keep, 5)
    assert closed
    assert pid(served) == before
