"""spec.http.payloadFormat: REST / HTTP API 1.0, HTTP API 2.0 and ALB events through `lamina local`, and
Powertools for AWS Lambda's APIGatewayRestResolver, APIGatewayHttpResolver and ALBResolver apps (the
package from PyPI, installed into a Layer) answering through each of them unchanged."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.local_mode import LocalServer

MANIFESTS = Path(__file__).parent / "http_formats"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    # The first start pip-installs Powertools into the layer: give it time.
    server = LocalServer([MANIFESTS], tmp_path_factory.mktemp("state")).start(timeout=240)
    yield server
    server.stop()


def call(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        return urllib.request.urlopen(req, timeout=60)
    except urllib.error.HTTPError as exc:
        return exc


@pytest.mark.parametrize("function", ["rest-app", "http-app", "alb-app", "alb-multi-app"])
def test_powertools_resolver_routes_and_reads_the_request(server: LocalServer, function: str) -> None:
    response = call(f"{server.url}/url/{function}/items/7?color=red", headers={"X-Agent": "pytest"})
    assert response.status == 200, response.read()
    assert response.headers["Content-Type"].startswith("application/json")
    body = json.loads(response.read())
    assert body["id"] == "7"
    assert body["color"] == "red"
    assert body["agent"] == "pytest"


@pytest.mark.parametrize("function", ["rest-app", "http-app", "alb-app", "alb-multi-app"])
def test_powertools_response_with_status_body_and_headers(server: LocalServer, function: str) -> None:
    response = call(
        f"{server.url}/url/{function}/items",
        "POST",
        b'{"name": "pen"}',
        {"Content-Type": "application/json"},
    )
    assert response.status == 201
    assert json.loads(response.read()) == {"created": {"name": "pen"}}
    tags = response.headers.get_all("X-Tag")
    if function in ("rest-app", "alb-multi-app"):  # formats with multi-value response headers
        assert tags == ["a", "b"]
    elif function == "alb-app":  # single-value ALB: one value per header (Powertools keeps the last)
        assert tags == ["b"]
    else:  # payload 2.0: repeated values comma-joined
        assert tags and ",".join(t.replace(" ", "") for t in tags) == "a,b"


@pytest.mark.parametrize("function", ["rest-app", "http-app", "alb-app"])
def test_powertools_unknown_route_is_its_404(server: LocalServer, function: str) -> None:
    assert call(f"{server.url}/url/{function}/nothing-here").status == 404


def test_payload_1_0_event_has_multi_value_maps(server: LocalServer) -> None:
    response = call(
        f"{server.url}/url/shapes/a/b?x=1&x=2&y=3",
        "PUT",
        b"hello",
        {"Content-Type": "text/plain", "X-Twice": "one"},
    )
    assert response.status == 200
    assert response.headers["X-One"] == "1"
    assert response.headers.get_all("Set-Cookie") == ["a=1", "b=2"]
    event = json.loads(response.read())
    assert event["version"] == "1.0"
    assert event["httpMethod"] == "PUT"
    assert event["path"] == "/a/b"
    assert event["pathParameters"] == {"proxy": "a/b"}
    assert event["queryStringParameters"] == {"x": "2", "y": "3"}
    assert event["multiValueQueryStringParameters"] == {"x": ["1", "2"], "y": ["3"]}
    assert event["multiValueHeaders"]["X-Twice"] == ["one"]
    assert event["body"] == "hello"
    assert event["isBase64Encoded"] is False


def test_payload_1_0_result_without_status_code_is_api_gateways_502(server: LocalServer) -> None:
    response = call(f"{server.url}/url/shapes/bare")
    assert response.status == 502
    assert json.loads(response.read()) == {"message": "Internal server error"}
