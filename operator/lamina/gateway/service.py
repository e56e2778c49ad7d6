"""The invocation path shared by the HTTP front door, the async dispatcher and event sources."""

from __future__ import annotations

import time
import uuid
from typing import Protocol

from lamina.asyncinvoke.errors import QueueFull
from lamina.environments.base import EnvironmentFailed, EnvironmentPool, FunctionConfig, NoEnvironment
from lamina.gateway import tracing
from lamina.gateway.concurrency import ConcurrencyLimiter
from lamina.gateway.errors import AsyncQueueFull, ServiceError
from lamina.gateway.metrics import GatewayMetrics
from lamina.gateway.otel import Tracer, tracer_from_env
from lamina.gateway.registry import FunctionRegistry
from lamina.invocation.errors import ACCOUNT_LIMIT, FunctionNotFound, ResourceNotReady, ThrottledError
from lamina.resources.pod_state import Failure
from lamina_runtime.protocol import InvocationRequest, InvocationResult


class AsyncQueue(Protocol):
    """Where Event invocations go; durable before `enqueue` returns."""

    async def enqueue(
        self, fn: FunctionConfig | str, request_id: str, payload: bytes, trace: str | None = None
    ) -> None:
        """``fn``: a config, or a "namespace/name[:qualifier]" key (resolved when the event runs);
        ``trace``: the caller's trace context (:meth:`TraceContext.encode`), kept with the event."""


class Router(Protocol):
    """Where a function is served when the gateway has several replicas (lamina.cluster.peers)."""

    async def forward(self, fn: FunctionConfig, request: InvocationRequest) -> InvocationResult | None:
        """The result from the replica that serves ``fn``; None when that is this one."""


class InvocationService:
    """Throttle, route to an environment, account. One instance per gateway process."""

    def __init__(
        self,
        registry: FunctionRegistry,
        pool: EnvironmentPool,
        limiter: ConcurrencyLimiter | None = None,
        metrics: GatewayMetrics | None = None,
        async_queue: AsyncQueue | None = None,
        log_invocations: bool = False,
        tracer: Tracer | None = None,
        router: Router | None = None,
    ) -> None:
        self.registry = registry
        #: With several gateway replicas: sends a function's calls to the one replica that serves it.
        self.router = router
        self.pool = pool
        self.limiter = limiter or ConcurrencyLimiter()
        self.metrics = metrics or GatewayMetrics()
        self.async_queue = async_queue
        self.log_invocations = log_invocations
        #: Spans of invocations when OTEL_* asks for them (lamina.gateway.otel), else nothing.
        self.tracer: Tracer = tracer if tracer is not None else tracer_from_env()
        self.limiter.set_functions(registry.all())
        limiter = self.limiter  # read at each scrape
        self.metrics.replicas.set_function(lambda: limiter.replicas)
        self.metrics.unreserved_share.set_function(lambda: limiter.unreserved_limit)

    def replace_functions(self, functions: list[FunctionConfig]) -> None:
        self.registry.replace(functions)
        self.limiter.set_functions(functions)

    def environment_configs(self) -> list[FunctionConfig]:
        """What the pool must know: every $LATEST and every published version."""
        return self.registry.environments()

    async def invoke(self, fn: FunctionConfig, request: InvocationRequest) -> InvocationResult:
        """Run synchronously; raises ThrottledError above the function's cap, ResourceNotReady when
        the function's environments cannot start, ServiceError when none came up in time. The
        concurrency slot is given back on every way out, a cancelled caller's included. An
        invocation without a trace context (event sources, async events, schedules) starts a chain
        of its own. With several replicas, a function another replica serves is invoked there."""
        if self.router is not None:
            forwarded = await self.router.forward(fn, request)
            if forwarded is not None:
                return forwarded
        return await self.invoke_here(fn, request)

    async def invoke_here(self, fn: FunctionConfig, request: InvocationRequest) -> InvocationResult:
        """:meth:`invoke` on this replica's environments (the replica that serves ``fn``)."""
        if request.trace_id is None:
            request.trace_id = tracing.incoming({}, fn.key).trace_id
        with self.tracer.invocation(fn, request) as span:
            span.result = await self._invoke(fn, request)
            return span.result

    async def _invoke(self, fn: FunctionConfig, request: InvocationRequest) -> InvocationResult:
        m = self.metrics
        try:
            self.limiter.try_acquire(fn)
        except ThrottledError as exc:
            m.throttles.labels(fn.name, exc.reason).inc()
            raise
        fm = m.function(fn.name)
        vm = m.version(fn.namespace, fn.name, fn.version)
        concurrent = fm.concurrent
        concurrent.inc()
        started = time.perf_counter()
        request.version = fn.version
        try:
            result = await self.pool.invoke(fn, request)
        except BaseException as exc:
            # The platform failed to run this version (no environment came up, INIT crashed a pod):
            # for a rollout that is as bad as a function error.
            vm.invocations.inc()
            vm.errors.inc()
            if isinstance(exc, EnvironmentFailed) and exc.reason == Failure.UNSCHEDULABLE:
                # No room for another environment (the nodes are full), and none free: a throttle,
                # as Lambda's when it has no capacity to give; the caller may retry. Never a 5xx.
                m.throttles.labels(fn.name, ACCOUNT_LIMIT).inc()
                raise ThrottledError(ACCOUNT_LIMIT) from None
            if isinstance(exc, EnvironmentFailed):
                raise ResourceNotReady(str(exc), Reason=exc.reason) from None
            if isinstance(exc, NoEnvironment):
                raise ServiceError(str(exc)) from None
            raise
        finally:
            concurrent.dec()
            self.limiter.release(fn)
        fm.invocations.inc()
        vm.invocations.inc()
        fm.duration.observe(result.duration_ms / 1000)
        if result.function_error:
            vm.errors.inc()
            m.errors.labels(fn.name, result.error_type or result.function_error).inc()
        if result.init_duration_ms is not None:
            fm.cold_starts.inc()
            fm.init_duration.observe(result.init_duration_ms / 1000)
        fm.environments.set(self.pool.environments(fn))
        if self.log_invocations:
            self._print_line(fn, request, result, time.perf_counter() - started)
        return result

    def lookup(self, key: str) -> FunctionConfig | None:
        """A function by "namespace/name[:qualifier]" (the async dispatcher's config lookup: retries,
        destinations and reserved concurrency are the function's, whatever the qualifier)."""
        return self.registry.get(key.partition(":")[0])

    async def invoke_key(
        self, key: str, payload: bytes, request_id: str | None = None, trace: str | None = None
    ) -> InvocationResult:
        """The :class:`~lamina.invocation.invoker.Invoker` of event sources and the async dispatcher:
        by "namespace/name[:qualifier]" key, so a mapping, a schedule or a destination may target an
        alias or a version. ``trace``: an async event's trace context, continued by the invocation."""
        function_key, _, qualifier = key.partition(":")
        try:
            target = self.registry.route_key(function_key, qualifier or None)
        except FunctionNotFound:
            raise FunctionNotFound(f"Function not found: {key}") from None
        context = tracing.TraceContext.decode(trace) if trace else None
        request = InvocationRequest(
            request_id=request_id or str(uuid.uuid4()),
            payload=payload,
            invoked_function_arn=target.invoked_arn,
            trace_id=context.trace_id if context else None,
            traceparent=context.traceparent if context else None,
            tracestate=context.tracestate if context else None,
        )
        return await self.invoke(target.config, request)

    async def enqueue(
        self,
        fn: FunctionConfig,
        payload: bytes,
        qualifier: str | None = None,
        trace: tracing.TraceContext | None = None,
    ) -> str:
        """Queue an Event invocation; an alias is resolved when the event runs, as on Lambda. The
        caller's ``trace`` goes with the event: the invocation continues the caller's chain."""
        if self.async_queue is None:
            raise RuntimeError("this gateway has no async queue configured")
        request_id = str(uuid.uuid4())
        key = fn.key if not qualifier or qualifier == "$LATEST" else f"{fn.key}:{qualifier}"
        try:
            if trace is None:
                await self.async_queue.enqueue(key, request_id, payload)
            else:
                await self.async_queue.enqueue(key, request_id, payload, trace.encode())
        except QueueFull as exc:
            raise AsyncQueueFull(str(exc)) from None
        self.metrics.async_received.labels(fn.name).inc()
        return request_id

    @staticmethod
    def _print_line(fn: FunctionConfig, req: InvocationRequest, res: InvocationResult, took: float) -> None:
        status = f"error {res.error_type}" if res.function_error else "ok"
        cold = f" cold start {res.init_duration_ms:.1f} ms" if res.init_duration_ms is not None else ""
        print(
            f"invoke {fn.name} {req.request_id} {status} {res.duration_ms:.1f} ms{cold} "
            f"(total {took * 1000:.1f} ms)",
            flush=True,
        )
