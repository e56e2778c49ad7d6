"""The operator's Prometheus metrics: what it reconciles, how long that takes, what is stuck and why.

A platform team's first questions about an operator are "is it keeping up?" and "what is blocked?":
reconcile counts and durations per kind answer the first, and a gauge of blocked objects by reason
(``LayerNotFound``, ``SecretNotFound``...) the second, without reading every object's status. API
calls are counted by verb and status code, so a throttling or refusing API server shows too.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Hashable, Iterator

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client import Counter as PromCounter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

RECONCILE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class BlockedObjects(Collector):
    """Objects whose last reconcile stopped at a blocking reason, counted by kind and reason."""

    def __init__(self) -> None:
        self._reasons: dict[Hashable, tuple[str, str]] = {}
        self._lock = threading.Lock()

    def block(self, key: Hashable, kind: str, reason: str) -> None:
        with self._lock:
            self._reasons[key] = (kind, reason)

    def clear(self, key: Hashable) -> None:
        with self._lock:
            self._reasons.pop(key, None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            counts = Counter(self._reasons.values())
        family = GaugeMetricFamily(
            "lamina_operator_blocked_objects",
            "Objects whose reconcile is blocked, by kind and reason (their status says which).",
            labels=["kind", "reason"],
        )
        for (kind, reason), n in sorted(counts.items()):
            family.add_metric([kind, reason], n)
        yield family


class OperatorMetrics:
    """One registry per operator (tests run several in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reconciles = PromCounter(
            "lamina_operator_reconciles",
            "Reconciles by kind and outcome (reconciled, blocked, error).",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.reconcile_seconds = Histogram(
            "lamina_operator_reconcile_seconds",
            "Time of one reconcile, API calls included.",
            ["kind"],
            buckets=RECONCILE_BUCKETS,
            registry=self.registry,
        )
        self.api_requests = PromCounter(
            "lamina_operator_api_requests",
            "Requests to the Kubernetes API by verb and HTTP status (0: no answer).",
            ["verb", "code"],
            registry=self.registry,
        )
        self.blocked = BlockedObjects()
        self.registry.register(self.blocked)

    def count_api_request(self, verb: str, code: int) -> None:
        self.api_requests.labels(verb, str(code)).inc()

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Expose ``/metrics`` from a daemon thread (the reconciles run in threads too)."""
        start_http_server(port, addr=addr, registry=self.registry)
