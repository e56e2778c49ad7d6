"""The operator's /metrics, scraped from a real operator process reconciling against a real API server."""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_operator_reconcile import GROUP, VERSION, Cluster, function

from tests.cluster.stack import LaminaStack
from tests.support.local_mode import free_port


class Scraper:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(self.url, timeout=5) as response:
            text = response.read().decode()
        found = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return found

    def value(self, name: str, **labels: str) -> float:
        """The sample's value, 0 when it does not exist (yet); raises while the port is not up."""
        return self.samples().get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def metered(lamina_stack: LaminaStack, k8s_api: client.ApiClient) -> tuple[Cluster, Scraper]:
    """The operator with its metrics on a loopback port (tests/cluster/stack.py), and their scraper."""
    port = free_port()
    lamina_stack.operator("--metrics-port", str(port), "--metrics-address", "127.0.0.1")
    return Cluster(k8s_api, lamina_stack.namespace), Scraper(port)


def blocked(scraper: Scraper) -> float:
    return scraper.value("lamina_operator_blocked_objects", kind="Function", reason="LayerNotFound")


def reachable(scraper: Scraper) -> bool:
    try:
        scraper.samples()
        return True
    except OSError:
        return False


def test_metrics_count_reconciles_and_name_what_blocks(metered, wait_until: Callable[..., Any]) -> None:
    cluster, metrics = metered
    wait_until(lambda: reachable(metrics), message="operator /metrics up")

    cluster.create("functions", function("plain"))
    cluster.create("functions", function("needs-layer", layers=["deps"]))
    cluster.wait_reason(wait_until, "functions", "needs-layer", "LayerNotFound")
    wait_until(
        lambda: blocked(metrics) == 1,
        message="one Function blocked by LayerNotFound",
    )
    wait_until(
        lambda: metrics.value("lamina_operator_reconciles_total", kind="Function", outcome="reconciled") >= 1
    )
    assert metrics.value("lamina_operator_reconciles_total", kind="Function", outcome="blocked") >= 1
    assert metrics.value("lamina_operator_reconcile_seconds_count", kind="Function") >= 2
    assert metrics.value("lamina_operator_api_requests_total", verb="PATCH", code="200") >= 1

    # The layer appears: the Function is reconciled and no longer counted as blocked.
    cluster.core.create_namespaced_config_map(
        cluster.ns, {"metadata": {"name": "deps-v1"}, "data": {"a.py": ""}}
    )
    layer = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Layer", "metadata": {"name": "deps"}}
    cluster.create("layers", {**layer, "spec": {"configMap": {"name": "deps-v1"}}})
    cluster.wait_ready(wait_until, "functions", "needs-layer")
    wait_until(
        lambda: blocked(metrics) == 0,
        message="the Function is no longer counted as blocked",
    )

    # A blocked object that is deleted stops being counted too.
    cluster.create("functions", function("doomed", layers=["missing"]))
    wait_until(lambda: blocked(metrics) == 1)
    cluster.delete("functions", "doomed")
    wait_until(
        lambda: blocked(metrics) == 0,
        message="a deleted Function is no longer counted as blocked",
    )
