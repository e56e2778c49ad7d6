"""How the operator learns each version's invocations and errors: it reads the gateways' Prometheus
metrics (``lamina_version_invocations_total`` / ``lamina_version_errors_total``, labelled by namespace,
function and version), the same numbers anyone's Prometheus scrapes.

Chosen over the gateway writing a status: several gateway replicas would race on one object, a write
per invocation batch would load the API server, and the gateway would need write access to Functions.
Scraping needs only that the operator reaches each replica (``LAMINA_GATEWAY_METRICS_URLS``).
Each source's counters are made monotonic here (a restarted gateway starts from zero), then added up.
"""

from __future__ import annotations

import logging
import threading
import urllib.request
from collections.abc import Iterable

from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger(__name__)

Key = tuple[str, str, str]  # (namespace, function, version)
INVOCATIONS, ERRORS = "lamina_version_invocations", "lamina_version_errors"


def parse(text: str) -> dict[Key, tuple[float, float]]:
    """(invocations, errors) per version from one gateway's /metrics text."""
    out: dict[Key, list[float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in (INVOCATIONS, ERRORS):
            continue
        index = 0 if family.name == INVOCATIONS else 1
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            labels = sample.labels
            key = (labels.get("namespace", ""), labels.get("function", ""), labels.get("version", ""))
            out.setdefault(key, [0.0, 0.0])[index] = sample.value
    return {k: (v[0], v[1]) for k, v in out.items()}


class GatewayCounts:
    """Monotonic per-version totals over all gateway replicas (thread-safe; reconciles share it)."""

    def __init__(self, urls: Iterable[str], timeout: float = 2.0) -> None:
        self.urls = tuple(urls)
        self.timeout = timeout
        self._last: dict[tuple[str, Key], tuple[float, float]] = {}
        self._total: dict[Key, list[float]] = {}
        self._lock = threading.Lock()

    def scrape(self) -> dict[Key, tuple[float, float]]:
        """Read every source now; a source that does not answer adds nothing this time."""
        for url in self.urls:
            try:
                with urllib.request.urlopen(url, timeout=self.timeout) as response:
                    text = response.read().decode()
            except OSError as exc:
                log.warning("cannot read gateway metrics at %s: %s", url, exc)
                continue
            self._add(url, parse(text))
        with self._lock:
            return {k: (v[0], v[1]) for k, v in self._total.items()}

    def _add(self, source: str, counts: dict[Key, tuple[float, float]]) -> None:
        with self._lock:
            for key, (invocations, errors) in counts.items():
                before = self._last.get((source, key), (0.0, 0.0))
                if invocations < before[0] or errors < before[1]:
                    before = (0.0, 0.0)  # that gateway restarted: its counters start again at zero
                total = self._total.setdefault(key, [0.0, 0.0])
                total[0] += invocations - before[0]
                total[1] += errors - before[1]
                self._last[(source, key)] = (invocations, errors)
