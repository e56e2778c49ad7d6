"""Prometheus metrics per function, modelled on Lambda's CloudWatch metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


class FunctionMetrics:
    """The labelled children of one function, looked up once: `.labels()` is costly on a hot path."""

    def __init__(self, m: GatewayMetrics, name: str) -> None:
        self.invocations = m.invocations.labels(name)
        self.duration = m.duration.labels(name)
        self.concurrent = m.concurrent.labels(name)
        self.environments = m.environments.labels(name)
        self.cold_starts = m.cold_starts.labels(name)
        self.init_duration = m.init_duration.labels(name)


class VersionMetrics:
    """Invocations and errors of one version ("$LATEST" or a number): what a rollout is judged by."""

    def __init__(self, m: GatewayMetrics, namespace: str, name: str, version: str) -> None:
        self.invocations = m.version_invocations.labels(namespace, name, version)
        self.errors = m.version_errors.labels(namespace, name, version)


class GatewayMetrics:
    """One registry per gateway, so tests and several gateways in a process don't collide."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.invocations = Counter(
            "lamina_invocations", "Handler runs, including function errors", ["function"], registry=r
        )
        self.errors = Counter(
            "lamina_errors",
            "Invocations that ended in a function error",
            ["function", "error_type"],
            registry=r,
        )
        self.throttles = Counter(
            "lamina_throttles",
            "Invocations refused with TooManyRequestsException",
            ["function", "reason"],
            registry=r,
        )
        self.duration = Histogram(
            "lamina_duration_seconds", "Time in the handler", ["function"], buckets=_BUCKETS, registry=r
        )
        self.concurrent = Gauge(
            "lamina_concurrent_executions", "Invocations in flight", ["function"], registry=r
        )
        self.environments = Gauge(
            "lamina_environments", "Execution environments that exist", ["function"], registry=r
        )
        self.cold_starts = Counter(
            "lamina_cold_starts", "Invocations that ran INIT first", ["function"], registry=r
        )
        self.init_duration = Histogram(
            "lamina_init_duration_seconds",
            "INIT time of cold starts",
            ["function"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.async_received = Counter(
            "lamina_async_events_received", "Event invocations queued", ["function"], registry=r
        )
        self.async_dropped = Counter(
            "lamina_async_events_dropped",
            "Event invocations that ended without success (sent to onFailure)",
            ["function", "condition"],
            registry=r,
        )
        self.async_age = Histogram(
            "lamina_async_event_age_seconds",
            "Queue time before an attempt",
            ["function"],
            buckets=(*_BUCKETS, 3600, 21600),
            registry=r,
        )
        # Lambda's ExecutedVersion dimension. Errors count function errors (INIT failures included) and
        # invocations the platform could not run; the operator reads both to judge a rollout.
        self.version_invocations = Counter(
            "lamina_version_invocations",
            "Invocations by the version that ran them",
            ["namespace", "function", "version"],
            registry=r,
        )
        self.version_errors = Counter(
            "lamina_version_errors",
            "Invocations of a version that ended in a function error or could not run",
            ["namespace", "function", "version"],
            registry=r,
        )
        # With several gateway replicas: how many serve functions, and this one's part of the
        # unreserved concurrency (the replicas' parts add up to the pool).
        self.replicas = Gauge(
            "lamina_gateway_replicas", "Gateway replicas that serve functions, as this one counts", registry=r
        )
        self.unreserved_share = Gauge(
            "lamina_unreserved_concurrency",
            "Concurrent invocations of unreserved functions this replica may run",
            registry=r,
        )
        self._per_function: dict[str, FunctionMetrics] = {}
        self._per_version: dict[tuple[str, str, str], VersionMetrics] = {}

    def function(self, name: str) -> FunctionMetrics:
        found = self._per_function.get(name)
        if found is None:
            found = self._per_function[name] = FunctionMetrics(self, name)
        return found

    def version(self, namespace: str, name: str, version: str) -> VersionMetrics:
        key = (namespace, name, version)
        found = self._per_version.get(key)
        if found is None:
            found = self._per_version[key] = VersionMetrics(self, namespace, name, version)
        return found
