"""The gateway's front door (lamina.gateway.front): the Invoke API answered on the lean protocol, and
every other request, or an Invoke request it does not take as it is, answered by aiohttp on the same
connection, as before. In process, with `lamina gateway`'s own serving (start_http: FrontSite, the
drain, handler cancellation), a real runtime server as the environment, and raw HTTP/1.1 on a socket
so that the bytes on the wire (pipelining, a head split across segments, chunked bodies) are the
test's. boto3 through this path is tested by the Invoke API's integration and cluster tests."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from kubernetes import client

from lamina.auth.authenticator import Authenticator
from lamina.auth.identity import Identity
from lamina.auth.keys import AccessKey, KeyTable
from lamina.auth.kube import SubjectAccessReviews
from lamina.cluster.gateway import start_http
from lamina.environments.base import FunctionConfig
from lamina.environments.endpoints import StaticEndpointSource
from lamina.environments.http_pool import HttpEnvironmentPool
from lamina.gateway import front
from lamina.gateway.auth import GatewayAuth
from lamina.gateway.drain import Drain
from lamina.gateway.registry import FunctionRegistry
from lamina.gateway.service import InvocationService
from tests.support.local_mode import free_port
from tests.unit.test_http_pool import start_server

CODE = """import time
def handler(event, context):
    time.sleep(event.get("seconds", 0))
    print("said", event.get("say"))
    return {"echo": event, "request_id": context.aws_request_id, "arn": context.invoked_function_arn}
"""
INVOKE = "/2015-03-31/functions/echo/invocations"


@contextlib.asynccontextmanager
async def gateway(
    tmp_path: Path, auth: GatewayAuth | None = None
) -> AsyncIterator[tuple[int, InvocationService, FunctionConfig]]:
    (tmp_path / "index.py").write_text(CODE)
    endpoint, proc = await start_server(tmp_path, "echo")
    fn = FunctionConfig(name="echo", timeout_seconds=30)
    pool = HttpEnvironmentPool(StaticEndpointSource({fn.key: [endpoint]}), [fn], cold_start_timeout=30)
    service = InvocationService(FunctionRegistry([fn]), pool)
    await pool.start()
    port = free_port()
    runner = await start_http(service, "127.0.0.1", port, auth=auth, drain=Drain())
    try:
        yield port, service, fn
    finally:
        await runner.cleanup()
        await pool.close()
        proc.kill()
        await proc.wait()


def post(path: str, body: bytes, *extra: str) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: gw", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response: status, headers (lower-case names), body (Content-Length framed)."""
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)).decode("latin-1")
    lines = head.split("\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers, body


async def test_invocations_and_other_routes_share_a_keep_alive_connection(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (port, _, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post(INVOKE, b'{"say": "one"}', "X-Amz-Log-Type: Tail"))
        status, headers, body = await response(reader)
        assert status == 200
        assert headers["server"] == "lamina"  # the front door answered it
        assert headers["x-amz-executed-version"] == "$LATEST"
        assert headers["content-type"] == "application/json"
        assert "date" in headers
        doc = json.loads(body)
        assert doc["echo"] == {"say": "one"} and doc["request_id"] == headers["x-amzn-requestid"]
        assert doc["arn"].endswith(":function:echo")
        tail = base64.b64decode(headers["x-amz-log-result"]).decode()
        assert "said one" in tail and f"REPORT RequestId: {doc['request_id']}" in tail
        # Another route on the same connection: aiohttp takes the connection over and answers it.
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        status, headers, body = await response(reader)
        assert (status, json.loads(body)) == (200, {"status": "ok"})
        assert "aiohttp" in headers["server"]
        # ...and from then on the Invoke API too, with the same answer.
        writer.write(post(INVOKE, b'{"say": "two"}'))
        status, headers, body = await response(reader)
        assert status == 200 and json.loads(body)["echo"] == {"say": "two"}
        assert "aiohttp" in headers["server"]
        writer.close()


async def test_pipelined_requests_and_a_head_in_pieces_are_answered_in_order(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (port, _, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        slow = b'{"n": 1, "seconds": 0.2}'
        writer.write(post(INVOKE, slow) + post(INVOKE, b'{"n": 2}') + post(INVOKE, b'{"n": 3}'))
        answers = [await response(reader) for _ in range(3)]
        assert [json.loads(r[2])["echo"]["n"] for r in answers] == [1, 2, 3]  # one at a time, in order
        assert len({r[1]["x-amzn-requestid"] for r in answers}) == 3
        for byte in post(INVOKE, b'{"n": 4}'):  # one segment per byte
            writer.write(bytes([byte]))
            await writer.drain()
        status, headers, body = await response(reader)
        assert (status, json.loads(body)["echo"], headers["server"]) == (200, {"n": 4}, "lamina")
        writer.close()


async def test_connection_close_is_honoured(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (port, _, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post(INVOKE, b"{}", "Connection: close"))
        status, headers, _ = await response(reader)
        assert status == 200 and headers["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), 10) == b""  # the server closed it
        writer.close()


async def test_what_the_front_door_does_not_take_is_aiohttps_as_before(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (port, _, _):
        # A chunked body: aiohttp reads it, the Invoke API answers.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        chunked = b'{"say": "chunked"}'
        writer.write(
            f"POST {INVOKE} HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            + f"{len(chunked):x}\r\n".encode()
            + chunked
            + b"\r\n0\r\n\r\n"
        )
        status, headers, body = await response(reader)
        assert status == 200 and json.loads(body)["echo"] == {"say": "chunked"}
        assert "aiohttp" in headers["server"]
        writer.close()
        # A malformed header line: aiohttp's 400, as before.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"POST {INVOKE} HTTP/1.1\r\nHost: gw\r\nBad Header : x\r\nContent-Length: 2\r\n\r\n{{}}".encode()
        )
        status, _, _ = await response(reader)
        assert status == 400
        writer.close()
        # An unknown function by an encoded ARN: the front door decodes the name, Lambda's 404.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        arn = "arn%3Aaws%3Alambda%3Aus-east-1%3A000000000000%3Afunction%3Amissing"
        writer.write(post(f"/2015-03-31/functions/{arn}/invocations", b"{}"))
        status, headers, body = await response(reader)
        assert status == 404 and headers["x-amzn-errortype"] == "ResourceNotFoundException"
        assert headers["server"] == "lamina" and "function:missing" in json.loads(body)["Message"]
        # Its qualifier from the query: Lambda's 404 names it.
        writer.write(post(f"{INVOKE}?Qualifier=nope", b"{}"))
        status, _, body = await response(reader)
        assert status == 404 and "function:echo:nope" in json.loads(body)["Message"]
        writer.close()


async def test_a_caller_that_hangs_up_frees_its_slot_once_the_environment_answers(tmp_path: Path) -> None:
    async with gateway(tmp_path) as (port, service, fn):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post(INVOKE, b'{"seconds": 0.5}'))
        await writer.drain()
        for _ in range(200):
            if service.limiter.in_flight(fn):
                break
            await asyncio.sleep(0.01)
        assert service.limiter.in_flight(fn) == 1
        writer.close()  # hangs up while the function runs
        for _ in range(300):
            if not service.limiter.in_flight(fn):
                break
            await asyncio.sleep(0.01)
        assert service.limiter.in_flight(fn) == 0
        # The one environment is free again (the gateway waited for its reply): the next call runs.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post(INVOKE, b'{"say": "after"}'))
        status, _, body = await response(reader)
        assert status == 200 and json.loads(body)["echo"] == {"say": "after"}
        writer.close()


async def test_a_head_past_aiohttps_limits_is_aiohttps_to_refuse(tmp_path: Path) -> None:
    """aiohttp refuses a header line longer than 8190 bytes (400). The front door parsed any head that
    arrived in one read (asyncio reads up to 256 KiB at once), so it served heads aiohttp refuses: a
    head past a line's limit or MAX_HEAD goes to aiohttp, whatever the reads it came in."""
    async with gateway(tmp_path) as (port, _, _):
        long_line = ["X-Pad: " + "a" * 9000]
        long_head = [f"X-Pad-{i}: " + "b" * 8000 for i in range(6)]  # 48 KiB of lines within the limit
        for extra, refused in ((long_line, True), (long_head, False)):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(post(INVOKE, b'{"say": "big head"}', *extra))
            status, headers, _ = await response(reader)
            assert "aiohttp" in headers["server"], headers
            assert status == (400 if refused else 200)
            writer.close()


async def test_connection_close_in_a_second_connection_header_is_honoured(tmp_path: Path) -> None:
    """Connection is a list header: "close" in any of its fields closes the connection, as aiohttp does."""
    async with gateway(tmp_path) as (port, _, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post(INVOKE, b"{}", "Connection: keep-alive", "Connection: close"))
        status, headers, _ = await response(reader)
        assert status == 200 and headers["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()


async def test_a_body_still_arriving_is_not_closed_as_an_idle_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keep-alive timeout closes a connection idle between requests. A request whose body is still
    arriving (a 6 MB payload on a slow link) is not idle: aiohttp reads it to its end; the front door
    closed it at the timeout and the call was lost."""
    monkeypatch.setattr(front, "KEEPALIVE_S", 0.2)
    async with gateway(tmp_path) as (port, _, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = post(INVOKE, b'{"say": "slowly"}')
        writer.write(request[:-5])
        await writer.drain()
        await asyncio.sleep(1.0)  # five keep-alive timeouts with the body half sent
        writer.write(request[-5:])
        status, headers, body = await response(reader)
        assert (status, headers["server"], json.loads(body)["echo"]) == (200, "lamina", {"say": "slowly"})
        writer.close()


async def test_a_connection_handed_to_aiohttp_while_reading_is_paused_is_read_to_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Back-pressure both ways: a caller that does not read its answers while it sends more than
    MAX_PENDING has the front door pause reading. When the next request is not one the front door
    takes, the connection goes to aiohttp, which resumes reading only what it paused itself: the
    front door must hand it over reading, or a request whose rest was still to come hangs."""
    monkeypatch.setattr(front, "MAX_PENDING", 64 * 1024)
    doors: list[front.FrontDoor] = []
    pause_writing = front.FrontDoor.pause_writing

    def observed(self: front.FrontDoor) -> None:
        pause_writing(self)
        doors.append(self)

    monkeypatch.setattr(front.FrontDoor, "pause_writing", observed)
    async with gateway(tmp_path) as (port, _, _):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the caller reads nothing yet
        sock.connect(("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        big = json.dumps({"say": "a" * 5_500_000}).encode()  # answered with as much: writing pauses
        last = json.dumps({"say": "last", "pad": "b" * 200_000}).encode()
        head = f"POST {INVOKE} HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunked = f"{head}{len(last):x}\r\n".encode() + last + b"\r\n0\r\n\r\n"  # aiohttp's to read
        healthz = b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"
        writer.write(post(INVOKE, big) + healthz + chunked[:70_000])
        await writer.drain()
        for _ in range(3000):
            if doors:
                break
            await asyncio.sleep(0.01)
        [door] = doors  # the big answer is written and waits for the caller to read it
        writer.write(chunked[70_000:71_000])  # more past MAX_PENDING while writing waits: reading pauses
        await writer.drain()
        for _ in range(3000):
            if door._transport is not None and not door._transport.is_reading():
                break
            await asyncio.sleep(0.01)
        status, headers, body = await response(reader)  # writing resumes: GET goes to aiohttp
        assert (status, headers["server"], json.loads(body)["echo"]["say"]) == (
            200,
            "lamina",
            "a" * 5_500_000,
        )
        status, headers, body = await response(reader)
        assert (status, json.loads(body)) == (200, {"status": "ok"}) and "aiohttp" in headers["server"]
        writer.write(chunked[71_000:])
        status, _, body = await response(reader)
        assert status == 200 and json.loads(body)["echo"]["say"] == "last"
        writer.close()


async def test_an_authorization_the_platform_cannot_decide_is_lambdas_service_exception(
    tmp_path: Path,
) -> None:
    """With auth on, each call's SubjectAccessReview goes to the API server. When that cannot be
    reached, the caller gets Lambda's ServiceException (500, x-amzn-ErrorType, JSON), on the front
    door's path and aiohttp's alike: the front door dropped the connection without an answer, and
    aiohttp answered its own text/plain 500."""
    unreachable = client.Configuration()
    unreachable.host = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    keys = KeyTable([AccessKey("AKIDTEST", "secret", Identity(user="alice"))])
    reviews = SubjectAccessReviews(client.ApiClient(unreachable))
    auth = GatewayAuth(Authenticator(keys.lookup, "us-east-1"), reviews)
    async with gateway(tmp_path, auth) as (port, _, _):
        url = f"http://127.0.0.1:{port}{INVOKE}"
        for extra in ({"Content-Length": "2"}, {"Transfer-Encoding": "chunked"}):  # front door, aiohttp
            request = AWSRequest("POST", url, data=b"{}", headers={"Content-Type": "application/json"})
            SigV4Auth(Credentials("AKIDTEST", "secret"), "lambda", "us-east-1").add_auth(request)
            head = [f"{name}: {value}" for name, value in request.headers.items()]
            body = b"2\r\n{}\r\n0\r\n\r\n" if "Transfer-Encoding" in extra else b"{}"
            wire = "\r\n".join([f"POST {INVOKE} HTTP/1.1", f"Host: 127.0.0.1:{port}", *head])
            wire += "".join(f"\r\n{name}: {value}" for name, value in extra.items())
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(wire.encode() + b"\r\n\r\n" + body)
            status, headers, answer = await response(reader)
            assert (status, headers["x-amzn-errortype"]) == (500, "ServiceException"), (extra, answer)
            doc = json.loads(answer)
            assert doc["Type"] == "Service" and "authoriz" in doc["message"], doc
            assert headers.get("x-amzn-requestid")
            writer.close()
