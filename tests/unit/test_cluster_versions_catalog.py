"""The cluster gateway's view of versions: built from the status the operator writes."""

from __future__ import annotations

from lamina.api import parse_object
from lamina.cluster.gateway import with_versions
from lamina.environments.base import function_config
from lamina.gateway.registry import FunctionRegistry


def test_versions_and_alias_routing_come_from_the_status() -> None:
    fn = parse_object(
        {
            "apiVersion": "lamina.dev/v1alpha1",
            "kind": "Function",
            "metadata": {"name": "orders", "namespace": "shop"},
            "spec": {
                "handler": "index.handler",
                "code": {"inline": "x"},
                "publishVersions": True,
                "aliases": {"prod": {"functionVersion": "2", "provisionedConcurrency": 2}},
            },
        }
    )
    status = {
        "versions": [
            {
                "version": "2",
                "codeSha256": "c2",
                "digest": "d2" * 8,
                "handler": "new.handler",
                "memoryMB": 256,
            },
            {"version": "1", "codeSha256": "c1", "digest": "d1" * 8, "handler": "index.handler"},
        ],
        # During a rollout the operator's weights, not the spec's, are in effect.
        "aliases": {"prod": {"functionVersion": "1", "additionalVersionWeights": {"2": 0.5}}},
    }
    config = with_versions(function_config(fn), fn, status)  # type: ignore[arg-type]
    assert list(config.versions) == ["1", "2"]
    v2 = config.versions["2"]
    assert (v2.handler, v2.memory_mb, v2.version, v2.pool_key) == ("new.handler", 256, "2", "shop/orders:2")
    assert {v: c.provisioned_concurrency for v, c in config.versions.items()} == {"1": 1, "2": 1}
    registry = FunctionRegistry([config], default_namespace="shop")
    seen = {registry.route("orders:prod").executed_version for _ in range(20)}
    assert seen == {"1", "2"}
