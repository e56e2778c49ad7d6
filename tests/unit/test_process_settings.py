"""One typed settings object per process, read once; one default address of the gateway."""

from __future__ import annotations

import pytest

from lamina.cluster.settings import GatewaySettings, WorkerSettings
from lamina.reconcilers.settings import OperatorSettings
from lamina.resources import Settings
from lamina.resources.settings import DEFAULT_GATEWAY_PORT, DEFAULT_GATEWAY_URL


def test_the_gateway_and_its_callers_agree_on_one_default_address() -> None:
    assert GatewaySettings.from_args([]).port == DEFAULT_GATEWAY_PORT == 8080
    assert DEFAULT_GATEWAY_URL.endswith(f":{DEFAULT_GATEWAY_PORT}")
    assert WorkerSettings.from_environ({}).gateway_url == Settings().gateway_url == DEFAULT_GATEWAY_URL
    assert OperatorSettings.read([], {}).builders.gateway_url == DEFAULT_GATEWAY_URL


def test_gateway_flags() -> None:
    s = GatewaySettings.from_args(
        [
            "--port",
            "9100",
            "--namespace",
            "team",
            "--redis-url",
            "redis://r:6379/0",
            "--cold-start-timeout",
            "5",
        ]
    )
    assert (s.port, s.namespace, s.default_namespace, s.redis_url, s.cold_start_timeout, s.host) == (
        9100, ("team",), "team", "redis://r:6379/0", 5.0, "0.0.0.0",
    )  # fmt: skip
    with pytest.raises(SystemExit):
        GatewaySettings.from_args(["--port", "eighty"])


def test_the_worker_reads_its_pods_environment_once() -> None:
    s = WorkerSettings.from_environ(
        {
            "LAMINA_ESM": "{}",
            "LAMINA_GATEWAY_URL": "http://gw:8080",
            "LAMINA_SECRET_ABC": "redis://s",
            "LAMINA_STATUS_INTERVAL": "0",
            "KUBECONFIG": "/k",
            "UNRELATED": "x",
        }
    )
    assert (s.mapping, s.gateway_url, s.secrets, s.status_interval, s.kubeconfig) == (
        "{}", "http://gw:8080", {"LAMINA_SECRET_ABC": "redis://s"}, 0.0, "/k",
    )  # fmt: skip


def test_the_operator_reads_flags_and_the_charts_environment() -> None:
    s = OperatorSettings.read(
        ["-n", "a", "-n", "b", "--kubeconfig", "/k", "--metrics-port", "8082"],
        {
            "LAMINA_OPERATOR_WORKERS": "4",
            "LAMINA_RESYNC_SECONDS": "0",
            "LAMINA_RUNTIME_IMAGE": "img:{runtime}",
        },
    )
    assert (s.namespaces, s.kubeconfig, s.metrics_port, s.workers, s.resync_seconds) == (
        ("a", "b"), "/k", 8082, 4, 0.0,
    )  # fmt: skip
    assert s.builders.image_for("python3.12") == "img:python3.12"


def test_the_default_runtime_image_is_one_per_runtime() -> None:
    builders = OperatorSettings.read([], {}).builders
    assert builders.image_for("python3.11").endswith("-python3.11")
    assert builders.image_for("python3.12").endswith("-python3.12")
    assert builders.image_for("provided.al2023").endswith("-python3.12")
