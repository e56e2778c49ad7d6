"""The HTTP trigger's event shapes and response mapping per payload format (pure functions)."""

from __future__ import annotations

import json

import pytest

from lamina.api import FunctionSpec, ManifestError, parse_object
from lamina.gateway.http_formats import HttpRequest, build_event, map_response


def req(**kw) -> HttpRequest:
    base = dict(
        method="GET",
        path="/p",
        raw_query="a=1&a=2&b=x%20y",
        headers=[("Host", "h"), ("X-M", "1"), ("x-m", "2"), ("Cookie", "c=1; d=2")],
    )
    base.update(kw)
    return HttpRequest(**base)


def test_v2_joins_repeated_values_and_splits_cookies() -> None:
    event = build_event("2.0", req(), "fn", "rid")
    assert event["headers"]["x-m"] == "1,2"
    assert "cookie" not in event["headers"]
    assert event["cookies"] == ["c=1", "d=2"]
    assert event["queryStringParameters"] == {"a": "1,2", "b": "x y"}


def test_v1_keeps_last_and_all_values() -> None:
    event = build_event("1.0", req(), "fn", "rid")
    assert event["headers"]["X-M"] == "1" and event["headers"]["x-m"] == "2"
    assert event["multiValueHeaders"]["Cookie"] == ["c=1; d=2"]
    assert event["queryStringParameters"] == {"a": "2", "b": "x y"}
    assert event["multiValueQueryStringParameters"] == {"a": ["1", "2"], "b": ["x y"]}
    assert event["requestContext"]["requestId"] == "rid"
    assert event["body"] is None


def test_v1_without_query_has_nulls() -> None:
    event = build_event("1.0", req(raw_query=""), "fn", "rid")
    assert event["queryStringParameters"] is None
    assert event["multiValueQueryStringParameters"] is None


def test_alb_single_and_multi_value() -> None:
    single = build_event("alb", req(), "fn", "rid", multi_value=False)
    assert single["headers"]["x-m"] == "2"
    assert single["queryStringParameters"] == {"a": "2", "b": "x%20y"}  # ALB does not decode
    assert "multiValueHeaders" not in single
    multi = build_event("alb", req(), "fn", "rid", multi_value=True)
    assert multi["multiValueHeaders"]["x-m"] == ["1", "2"]
    assert multi["multiValueQueryStringParameters"] == {"a": ["1", "2"], "b": ["x%20y"]}
    assert "headers" not in multi
    assert multi["requestContext"]["elb"]["targetGroupArn"].endswith(":targetgroup/fn/lamina")
    assert multi["body"] == "" and multi["isBase64Encoded"] is False


def test_binary_body_is_base64_in_every_format() -> None:
    r = req(method="POST", body=b"\x00\xff", headers=[("Content-Type", "application/octet-stream")])
    for fmt in ("2.0", "1.0", "alb"):
        event = build_event(fmt, r, "fn", "rid")
        assert event["isBase64Encoded"] is True
        assert event["body"] == "AP8="


def payload(obj) -> bytes:
    return json.dumps(obj).encode()


def test_v2_infers_a_json_200_from_any_value() -> None:
    response = map_response("2.0", payload("hi"))
    assert (response.status, response.body) == (200, b'"hi"')


@pytest.mark.parametrize("fmt", ["1.0", "alb"])
def test_v1_and_alb_refuse_a_value_that_is_not_a_response(fmt: str) -> None:
    assert map_response(fmt, payload({"hello": 1})).status == 502
    assert map_response(fmt, b"not json").status == 502
    assert map_response(fmt, payload({"statusCode": 200, "body": {"a": 1}})).status == 502


def test_v1_merges_headers_and_multi_value_headers() -> None:
    response = map_response(
        "1.0",
        payload(
            {
                "statusCode": 201,
                "headers": {"X-A": "single", "X-B": "b"},
                "multiValueHeaders": {"X-A": ["m1", "m2"]},
                "body": "ok",
            }
        ),
    )
    assert response.status == 201
    assert ("X-A", "m1") in response.headers and ("X-A", "m2") in response.headers
    assert ("X-A", "single") not in response.headers
    assert ("X-B", "b") in response.headers
    assert response.body == b"ok"


def test_alb_uses_the_header_map_its_setting_names() -> None:
    result = payload(
        {"statusCode": 200, "headers": {"X-S": "s"}, "multiValueHeaders": {"X-M": ["1", "2"]}, "body": ""}
    )
    single = map_response("alb", result, multi_value=False)
    assert ("X-S", "s") in single.headers and not any(k == "X-M" for k, _ in single.headers)
    multi = map_response("alb", result, multi_value=True)
    assert [v for k, v in multi.headers if k == "X-M"] == ["1", "2"]
    assert not any(k == "X-S" for k, _ in multi.headers)


def test_base64_body_is_decoded() -> None:
    response = map_response("alb", payload({"statusCode": 200, "body": "AP8=", "isBase64Encoded": True}))
    assert response.body == b"\x00\xff"


def test_multi_value_headers_only_with_alb() -> None:
    spec = {"handler": "index.handler", "code": {"inline": "x"}}
    assert FunctionSpec.model_validate({**spec, "http": {"payloadFormat": "alb", "multiValueHeaders": True}})
    doc = {
        "apiVersion": "lamina.dev/v1alpha1",
        "kind": "Function",
        "metadata": {"name": "f"},
        "spec": {**spec, "http": {"payloadFormat": "1.0", "multiValueHeaders": True}},
    }
    with pytest.raises(
        ManifestError, match=r"spec\.http\.multiValueHeaders: only goes with payloadFormat alb"
    ):
        parse_object(doc)
