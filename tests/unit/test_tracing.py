"""Trace context through the gateway: the X-Ray header a function gets, Lambda's recursion guard on
its Lineage count, W3C traceparent passed on, and the OTEL_* switch of the gateway's spans."""

from __future__ import annotations

import pytest

from lamina.gateway import otel, tracing


def fields(header: str) -> dict[str, str]:
    return tracing.parse_xray(header)


def test_a_call_without_context_starts_a_chain() -> None:
    ctx = tracing.incoming({}, "default/hello")
    f = fields(ctx.trace_id)
    assert f["Root"].startswith("1-") and len(f["Root"]) == 35
    assert f["Sampled"] == "0" and len(f["Parent"]) == 16
    assert f["Lineage"].endswith(":1") and ctx.depth == 1
    assert ctx.traceparent is None


def test_the_callers_root_and_sampling_are_kept_and_the_depth_grows() -> None:
    header = "Root=1-6749f000-0123456789abcdef01234567;Parent=53995c3f42cd8ad8;Sampled=1;Lineage=abcd0123:7"
    ctx = tracing.incoming({"X-Amzn-Trace-Id": header}, "default/hello")
    f = fields(ctx.trace_id)
    assert f["Root"] == "1-6749f000-0123456789abcdef01234567" and f["Sampled"] == "1"
    assert f["Parent"] != "53995c3f42cd8ad8"
    assert ctx.depth == 8 and f["Lineage"].endswith(":8")


def test_the_seventeenth_invocation_of_a_chain_is_refused() -> None:
    assert tracing.incoming({"X-Amzn-Trace-Id": "Lineage=abcd0123:15"}, "f").depth == 16
    with pytest.raises(tracing.RecursiveInvocation) as info:
        tracing.incoming({"X-Amzn-Trace-Id": "Root=1-a-b;Lineage=abcd0123:16"}, "f")
    assert info.value.status == 400 and info.value.code == "RecursiveInvocationException"


def test_w3c_context_is_passed_on_only_when_well_formed() -> None:
    good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    ctx = tracing.incoming({"traceparent": good, "tracestate": "a=b"}, "f")
    assert (ctx.traceparent, ctx.tracestate) == (good, "a=b")
    bad = tracing.incoming({"traceparent": "not-a-traceparent", "tracestate": "a=b"}, "f")
    assert bad.traceparent is None and bad.tracestate is None


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_gateway_spans_follow_the_standard_variables(env: dict[str, str], on: bool) -> None:
    assert otel.enabled(env) is on
    tracer = otel.tracer_from_env(env)
    assert isinstance(tracer, otel.OtelTracer if on else otel.NoTracer)
    tracer.shutdown()


def test_an_unknown_exporter_is_refused_by_name() -> None:
    with pytest.raises(RuntimeError, match="OTEL_TRACES_EXPORTER='zipkin'"):
        otel.OtelTracer({"OTEL_TRACES_EXPORTER": "zipkin"})
