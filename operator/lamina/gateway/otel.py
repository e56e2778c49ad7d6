"""Optional OpenTelemetry spans of the gateway, switched on by the standard ``OTEL_*`` variables.

With ``OTEL_TRACES_EXPORTER`` (``otlp`` or ``console``) or an ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``
set, each invocation is a SERVER span of the gateway, child of the caller's ``traceparent``; the
function then receives the gateway span's context, so OpenTelemetry users see one trace from the caller
through the gateway into the function. ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``
keeps it off. OpenTelemetry (``pip install 'lamina[otel]'``) is imported only when it is on; the
runtime never imports it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from lamina.environments.base import FunctionConfig
from lamina_runtime.environment import installation_region
from lamina_runtime.protocol import InvocationRequest, InvocationResult


class Tracer(Protocol):
    def invocation(
        self, fn: FunctionConfig, request: InvocationRequest
    ) -> contextlib.AbstractContextManager[Any]:
        """A span around one invocation; sets ``request.traceparent`` to the span's context. What it
        yields takes the invocation's result (``.result``)."""

    def shutdown(self) -> None: ...


def enabled(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER")
    if exporter is not None:
        return exporter.strip().lower() not in ("", "none")
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


class NoTracer:
    """Tracing off: nothing is imported, nothing is recorded (and no generator-based context manager
    is made per invocation)."""

    def invocation(self, fn: FunctionConfig, request: InvocationRequest) -> _NoSpan:
        return _NoSpan()

    def shutdown(self) -> None:
        pass


class OtelTracer:
    """Spans through the OpenTelemetry SDK, exported as the OTEL_* variables say."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError as exc:
            raise RuntimeError(
                "OTEL_* variables ask for traces, but OpenTelemetry is not installed: "
                "pip install 'lamina[otel]' (or unset OTEL_TRACES_EXPORTER / OTEL_EXPORTER_OTLP_ENDPOINT)"
            ) from exc
        exporters = [e.strip().lower() for e in (env.get("OTEL_TRACES_EXPORTER") or "otlp").split(",")]
        resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or "lamina-gateway"})
        self.provider = TracerProvider(resource=resource)
        for name in exporters:
            self.provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
        self.tracer = self.provider.get_tracer("lamina.gateway")
        self.propagator = TraceContextTextMapPropagator()

    @contextlib.contextmanager
    def invocation(self, fn: FunctionConfig, request: InvocationRequest) -> Iterator[Any]:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        carrier = {}
        if request.traceparent:
            carrier["traceparent"] = request.traceparent
            if request.tracestate:
                carrier["tracestate"] = request.tracestate
        parent = self.propagator.extract(carrier)
        attributes = {
            "faas.invoked_name": fn.name,
            "faas.invoked_provider": "aws",
            "faas.invoked_region": installation_region(),
            "faas.invocation_id": request.request_id,
            "aws.lambda.invoked_arn": request.invoked_function_arn or fn.arn,
            "lamina.namespace": fn.namespace,
        }
        with self.tracer.start_as_current_span(
            f"{fn.name} invoke", context=parent, kind=SpanKind.SERVER, attributes=attributes
        ) as span:
            out: dict[str, str] = {}
            self.propagator.inject(out, context=_context_of(span))
            request.traceparent = out.get("traceparent", request.traceparent)
            request.tracestate = out.get("tracestate", request.tracestate)
            holder = _Outcome()
            yield holder
            if holder.result is not None:
                span.set_attribute("faas.coldstart", holder.result.init_duration_ms is not None)
                if holder.result.function_error:
                    span.set_status(Status(StatusCode.ERROR, holder.result.error_type or "function error"))

    def shutdown(self) -> None:
        self.provider.shutdown()


class _Outcome:
    result: InvocationResult | None = None


class _NoSpan(_Outcome):
    """What NoTracer's ``with`` yields: only the outcome."""

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _context_of(span: Any) -> Any:
    from opentelemetry import trace

    return trace.set_span_in_context(span)


def _exporter(name: str) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()  # endpoint, headers, timeout from OTEL_EXPORTER_OTLP_* (http/protobuf)
    raise RuntimeError(f"OTEL_TRACES_EXPORTER={name!r}: lamina's gateway exports 'otlp' or 'console'")


def tracer_from_env(env: Mapping[str, str] | None = None) -> NoTracer | OtelTracer:
    return OtelTracer(env) if enabled(env) else NoTracer()
