"""The pod's wire protocol: every field of a request and a result survives encode -> decode."""

from __future__ import annotations

import dataclasses

from multidict import CIMultiDict

from lamina_runtime.protocol import (
    LOG_TAIL_BYTES,
    InvocationRequest,
    InvocationResult,
    decode_request,
    decode_result,
    encode_request,
    encode_result,
)


def wire(headers: dict[str, str]) -> dict[str, str]:
    """Headers as an HTTP parser hands them on (the pod server's and the pool's lower-case the names)."""
    return {name.lower(): value for name, value in headers.items()}


def test_a_request_round_trips_with_every_field() -> None:
    request = InvocationRequest(
        request_id="7f0c",
        payload=b'{"a": 1}',
        client_context="eyJjdXN0b20iOiB7fX0=",
        invoked_function_arn="arn:aws:lambda:local:000000000000:function:fn:live",
        version="3",
        trace_id="Root=1-6749f000-0123456789abcdef01234567;Parent=0123456789abcdef;Sampled=0;Lineage=1a2b3c4d:1",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        tracestate="vendor=value",
    )
    assert decode_request(wire(encode_request(request)), request.payload, lambda: "unused") == request
    # Only a field the type has may travel: a new field fails here until it has a header.
    assert {f.name for f in dataclasses.fields(InvocationRequest)} == {
        "request_id", "payload", "client_context", "invoked_function_arn", "version",
        "trace_id", "traceparent", "tracestate",
    }  # fmt: skip


def test_a_bare_request_gets_defaults_and_a_new_id() -> None:
    decoded = decode_request({}, b"{}", lambda: "fresh")
    assert decoded == InvocationRequest(request_id="fresh", payload=b"{}")
    minimal = InvocationRequest(request_id="r", payload=b"")
    assert decode_request(wire(encode_request(minimal)), b"", lambda: "unused") == minimal


def test_a_case_insensitive_mapping_is_read_as_well() -> None:
    """aiohttp keeps names as sent, in a case-insensitive mapping."""
    request = InvocationRequest(request_id="r", payload=b"", invoked_function_arn="arn:x")
    assert decode_request(CIMultiDict(encode_request(request)), b"", lambda: "unused") == request
    result = InvocationResult(request_id="r", payload=b"{}", function_error="Unhandled", error_type="E")
    assert decode_result("r", CIMultiDict(encode_result(result)), b"{}") == result


def test_a_result_round_trips_with_every_field() -> None:
    result = InvocationResult(
        request_id="7f0c",
        payload=b'{"errorMessage": "boom"}',
        function_error="Unhandled",
        error_type="Sandbox.Timedout",
        log="START RequestId: 7f0c\nhello ünïcode\nEND RequestId: 7f0c\n",
        duration_ms=12.25,
        init_duration_ms=45.5,
        max_memory_mb=64,
    )
    assert decode_result("7f0c", wire(encode_result(result)), result.payload) == result
    assert {f.name for f in dataclasses.fields(InvocationResult)} - {"extra"} == {
        "request_id", "payload", "function_error", "error_type", "log", "duration_ms",
        "init_duration_ms", "max_memory_mb",
    }  # fmt: skip


def test_a_warm_success_leaves_the_optional_headers_out() -> None:
    result = InvocationResult(request_id="r", payload=b"{}", duration_ms=1.0, max_memory_mb=30)
    headers = encode_result(result)
    assert not {"Lamina-Function-Error", "Lamina-Error-Type", "Lamina-Init-Duration-Ms"} & set(headers)
    assert decode_result("r", wire(headers), b"{}") == result


def test_the_log_travels_as_its_last_4_kb() -> None:
    log = "x" * 10_000 + "the end\n"
    result = InvocationResult(request_id="r", payload=b"{}", log=log)
    decoded = decode_result("r", wire(encode_result(result)), b"{}")
    assert decoded.log == log.encode()[-LOG_TAIL_BYTES:].decode()
    assert decoded.log.endswith("the end\n") and len(decoded.log) == LOG_TAIL_BYTES
