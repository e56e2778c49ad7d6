"""The HTTP trigger (API Gateway payload 2.0) and /metrics, over plain HTTP."""

from __future__ import annotations

import json
import urllib.request


def request(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    return urllib.request.urlopen(req, timeout=30)


def test_http_request_becomes_a_payload_2_event(local_server) -> None:
    response = request(
        f"{local_server.url}/url/web/items/7?color=red&color=blue&size=L",
        "POST",
        b'{"a": 1}',
        {"Content-Type": "application/json", "Cookie": "session=abc; theme=dark", "X-Custom": "yes"},
    )
    assert response.status == 201
    assert response.headers["X-Seen-Path"] == "/items/7"
    assert response.headers.get_all("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
    event = json.loads(response.read())
    assert event["version"] == "2.0"
    assert event["routeKey"] == "$default"
    assert event["rawPath"] == "/items/7"
    assert event["rawQueryString"] == "color=red&color=blue&size=L"
    assert event["queryStringParameters"] == {"color": "red,blue", "size": "L"}
    assert event["cookies"] == ["session=abc", "theme=dark"]
    assert event["headers"]["x-custom"] == "yes"
    assert event["requestContext"]["http"]["method"] == "POST"
    assert event["body"] == '{"a": 1}'
    assert event["isBase64Encoded"] is False


def test_binary_body_is_base64_encoded(local_server) -> None:
    response = request(
        f"{local_server.url}/url/web/upload",
        "PUT",
        b"\x00\x01\xff",
        {"Content-Type": "application/octet-stream"},
    )
    event = json.loads(response.read())
    assert event["isBase64Encoded"] is True
    assert event["body"] == "AAH/"


def test_bare_value_becomes_a_json_200(local_server) -> None:
    response = request(f"{local_server.url}/url/web/bare")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert json.loads(response.read()) == {"just": "a dict"}


def test_metrics_count_invocations_errors_and_cold_starts(local_server, lambda_client) -> None:
    lambda_client.invoke(FunctionName="failing", Payload=b"{}")
    text = request(f"{local_server.url}/metrics").read().decode()
    assert 'lamina_invocations_total{function="failing"}' in text
    assert 'lamina_errors_total{error_type="PaymentDeclined",function="failing"}' in text
    assert 'lamina_cold_starts_total{function="failing"}' in text
    assert "lamina_duration_seconds_bucket" in text
    assert "lamina_concurrent_executions" in text
