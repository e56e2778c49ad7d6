"""Hostile or broken input against `lamina local` (issue 9, item 6): each case gets Lambda's error shape
(or a clean 4xx/502 on the HTTP trigger), and the environment that served the call before is still
the one that serves the next call (same process: nothing was lost to the bad input)."""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.support.local_mode import LocalServer

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    state = tmp_path_factory.mktemp("hardening")
    served = LocalServer([HERE / "hardening"], state).start()
    yield served
    served.stop()


@pytest.fixture(scope="module")
def client(server: LocalServer):
    return server.lambda_client()


def witness_pid(client) -> int:
    return json.loads(client.invoke(FunctionName="witness", Payload=b"{}")["Payload"].read())["pid"]


@pytest.fixture
def warm(client) -> Iterator[None]:
    """The witness's environment before the test must serve the call after it."""
    before = witness_pid(client)
    yield
    assert witness_pid(client) == before


def raw(server: LocalServer, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        conn.close()


def error_code(info: pytest.ExceptionInfo[ClientError]) -> str:
    return info.value.response["Error"]["Code"]


@pytest.mark.parametrize("depth", [990, 5000, 200_000])
def test_deeply_nested_json_is_invalid_request_content(client, warm, depth: int) -> None:
    with pytest.raises(ClientError) as info:
        client.invoke(FunctionName="witness", Payload=b"[" * depth + b"]" * depth)
    assert error_code(info) == "InvalidRequestContentException"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "nested too deeply" in info.value.response["Error"]["Message"]


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b'{"x": NaN}', b"[1, Infinity]"])
def test_nan_and_infinity_are_not_json(client, warm, literal: bytes) -> None:
    with pytest.raises(ClientError) as info:
        client.invoke(FunctionName="witness", Payload=literal)
    assert error_code(info) == "InvalidRequestContentException"
    assert "Could not parse request body into json" in info.value.response["Error"]["Message"]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    "context",
    [
        "not base64 at all!",
        _b64(b"not json"),
        _b64(b"[1, 2]"),  # JSON, but not an object
        _b64(b'{"custom": NaN}'),
        _b64(json.dumps({"custom": {"pad": "x" * 3000}}).encode()),  # over 3,583 bytes of base64
        _b64(b"[" * 1300 + b"]" * 1300),  # within 3,583 bytes, nested deep enough to crash a decoder
    ],
    ids=["not-base64", "not-json", "not-object", "nan", "too-large", "deep"],
)
def test_a_bad_client_context_is_refused(client, warm, context: str) -> None:
    with pytest.raises(ClientError) as info:
        client.invoke(FunctionName="witness", Payload=b"{}", ClientContext=context)
    assert error_code(info) == "InvalidRequestContentException"
    assert (
        "Client context must be a valid Base64-encoded JSON object" in info.value.response["Error"]["Message"]
    )


def test_a_client_context_at_the_limit_is_passed_on(client, warm) -> None:
    pad = "x" * 2600
    encoded = _b64(json.dumps({"custom": {"pad": pad}}).encode())
    assert len(encoded) <= 3583
    result = json.loads(
        client.invoke(FunctionName="witness", Payload=b"{}", ClientContext=encoded)["Payload"].read()
    )
    assert result["custom"] == {"pad": pad}


@pytest.mark.parametrize(
    "query",
    [
        "MaxItems=abc",
        "MaxItems=%C2%B2",
        "MaxItems=" + "9" * 5000,
        "MaxItems=0",
        "Marker=abc",
        "Marker=%C2%B2",
    ],
    ids=["letters", "superscript-two", "5000-digits", "zero", "marker-letters", "marker-superscript"],
)
def test_marker_and_max_items_must_be_numbers(server, warm, query: str) -> None:
    status, headers, body = raw(server, "GET", f"/2015-03-31/functions/?{query}")
    assert status == 400
    assert dict(headers)["x-amzn-ErrorType"] == "InvalidParameterValueException"
    assert json.loads(body)["Type"] == "User"


@pytest.mark.parametrize(
    "name",
    [
        "arn:aws:s3:us-east-1:123456789012:function:witness",
        "arn:aws:iam::123456789012:function:witness",
        "arn:aws:lambda:us-east-1:123456789012:layer:witness",
        "wit ness",
        "witness\u00e9",
    ],
)
def test_names_that_are_not_lambda_function_names_are_a_validation_error(client, warm, name: str) -> None:
    with pytest.raises(ClientError) as info:
        client.invoke(FunctionName=name, Payload=b"{}")
    assert error_code(info) == "ValidationException"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "at 'functionName' failed to satisfy constraint" in info.value.response["Error"]["Message"]


def test_a_lambda_arn_still_works(client, warm) -> None:
    arn = "arn:aws:lambda:us-east-1:123456789012:function:witness"
    assert client.invoke(FunctionName=arn, Payload=b"{}")["StatusCode"] == 200


# ------------------------------------------------------------------------------------ HTTP trigger


def responder_pid(server: LocalServer) -> int:
    return json.loads(raw(server, "GET", "/url/responder/pid")[2])["pid"]


@pytest.fixture
def warm_responder(server: LocalServer) -> Iterator[None]:
    before = responder_pid(server)
    yield
    assert responder_pid(server) == before


def test_a_text_body_that_is_not_utf8_arrives_as_base64(server, warm_responder) -> None:
    body = b"caf\xe9 \xff\xfe"
    status, _, out = raw(server, "POST", "/url/responder/echo", body, {"Content-Type": "text/plain"})
    assert status == 200
    event = json.loads(out)
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == body


def test_raw_path_is_kept_as_sent(server, warm_responder) -> None:
    status, _, out = raw(server, "GET", "/url/responder/echo/a%20b/c%2Fd/%E2%82%AC?x=%2F")
    assert status == 200
    event = json.loads(out)
    assert event["rawPath"] == "/echo/a%20b/c%2Fd/%E2%82%AC"
    assert event["rawQueryString"] == "x=%2F"
    status, _, out = raw(server, "GET", "/url/responder/echo/plain/path")
    assert json.loads(out)["rawPath"] == "/echo/plain/path"


def respond_with(server: LocalServer, response: object) -> tuple[int, list[tuple[str, str]], bytes]:
    return raw(
        server, "POST", "/url/responder/", json.dumps(response).encode(), {"Content-Type": "application/json"}
    )


def test_framing_and_hop_by_hop_headers_of_a_function_are_dropped(server, warm_responder) -> None:
    """A function's Transfer-Encoding/Content-Length used to desynchronise keep-alive connections
    (response smuggling): two requests on one connection must both come back whole."""
    response = {
        "statusCode": 201,
        "headers": {
            "Transfer-Encoding": "chunked",
            "Content-Length": "999",
            "Connection": "close",
            "Keep-Alive": "timeout=1",
            "Upgrade": "h2c",
            "Trailer": "X-Late",
            "X-Kept": "yes",
        },
        "body": "0\r\n\r\nHTTP/1.1 200 OK\r\nX-Smuggled: 1\r\n\r\n",
    }
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        for _ in range(2):
            conn.request("POST", "/url/responder/", json.dumps(response).encode())
            answer = conn.getresponse()
            body = answer.read()
            names = {k.lower() for k, _ in answer.getheaders()}
            assert answer.status == 201
            assert answer.getheader("X-Kept") == "yes"
            assert "transfer-encoding" not in names and "upgrade" not in names and "trailer" not in names
            assert answer.getheader("Content-Length") == str(len(body))
            assert body == response["body"].encode()
            assert "x-smuggled" not in names
    finally:
        conn.close()


@pytest.mark.parametrize(
    "response",
    [
        {"statusCode": 200, "headers": {"X-A": "v\r\nX-Injected: 1"}},
        {"statusCode": 200, "headers": {"X-A\r\nX-Injected": "1"}},
        {"statusCode": 200, "headers": {"X A": "1"}},
        {"statusCode": 200, "headers": {"X-A": "caf\u00e9 \u2603"}},
        {"statusCode": 200, "cookies": ["a=1\r\nX-Injected: 1"]},
        {"statusCode": 700},
        {"statusCode": 99},
        {"statusCode": "abc"},
        {"statusCode": True},
        {"statusCode": 200, "headers": ["not", "a", "map"]},
        {"statusCode": 200, "isBase64Encoded": True, "body": "not base64 !!"},
        {"statusCode": 200, "isBase64Encoded": True, "body": 12},
    ],
    ids=[
        "crlf-in-value",
        "crlf-in-name",
        "space-in-name",
        "not-latin-1",
        "crlf-in-cookie",
        "status-700",
        "status-99",
        "status-text",
        "status-bool",
        "headers-list",
        "bad-base64",
        "base64-number",
    ],
)
def test_a_response_that_cannot_be_sent_is_a_502(server, warm_responder, response: dict) -> None:
    status, headers, body = respond_with(server, response)
    assert status == 502
    assert json.loads(body) == {"message": "Internal Server Error"}
    assert "x-injected" not in {k.lower() for k, _ in headers}


def test_odd_exception_type_names_come_back_in_lambdas_shape(client, warm) -> None:
    for name in ("Bad\r\nX-Injected: 1", "Ошибка\u2603", "Tab\tName"):
        result = client.invoke(FunctionName="oddly-failing", Payload=json.dumps({"name": name}).encode())
        assert result["FunctionError"] == "Unhandled"
        assert json.loads(result["Payload"].read())["errorType"] == name
        assert "X-Injected" not in result["ResponseMetadata"]["HTTPHeaders"]
    assert client.invoke(FunctionName="oddly-failing", Payload=b"{}")["StatusCode"] == 200
