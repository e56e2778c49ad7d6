"""Versions and aliases in a cluster: the operator publishes immutable version ConfigMaps, keeps a
Deployment per kept version, writes each alias's routing into the status, collects by retention, and
the CRD's CEL refuses an alias naming a missing version or weights out of range, with the field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from tests.cluster.test_operator_reconcile import Cluster, cluster, container, crds, function, operator  # noqa: F401  (fixtures)

CODE = "def handler(event, context):\n    return {tag!r}\n"


def versioned(tag: str, **spec: Any) -> dict[str, Any]:
    return function("vf", publishVersions=True, code={"inline": CODE.format(tag=tag)}, **spec)


def status(c: Cluster) -> dict[str, Any]:
    return c.get("functions", "vf").get("status") or {}


def env_of(dep: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container(dep)["env"]}


def test_versions_aliases_and_retention(
    request: pytest.FixtureRequest, wait_until: Callable[..., Any]
) -> None:
    request.getfixturevalue("operator")
    k8s: Cluster = request.getfixturevalue("cluster")
    live = {"live": {"functionVersion": "$LATEST.PUBLISHED"}}
    k8s.create("functions", versioned("one", aliases=live))
    wait_until(lambda: status(k8s).get("latestVersion") == 1, timeout=60, message="version 1")
    st = status(k8s)
    assert st["aliases"]["live"] == {"functionVersion": "1", "additionalVersionWeights": {}}
    assert [v["version"] for v in st["versions"]] == ["1"]
    cm = k8s.config_map("vf-version-1")
    assert cm is not None and cm["immutable"] is True
    assert "'one'" in cm["data"]["code.index.py"]
    dep = wait_until(lambda: k8s.deployment("fn-vf-v1"), timeout=30, message="version 1 Deployment")
    assert env_of(dep)["AWS_LAMBDA_FUNCTION_VERSION"] == "1"
    assert dep["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "lamina-function-version"

    k8s.patch("functions", "vf", {"code": {"inline": CODE.format(tag="two")}})
    wait_until(lambda: status(k8s).get("latestVersion") == 2, timeout=60, message="version 2")
    wait_until(
        lambda: status(k8s)["aliases"]["live"]["functionVersion"] == "2", timeout=30, message="live -> 2"
    )
    assert "'one'" in k8s.config_map("vf-version-1")["data"]["code.index.py"]  # immutable snapshot
    assert "'two'" in k8s.config_map("vf-version-2")["data"]["code.index.py"]

    # Unchanged code and configuration publish nothing.
    k8s.patch("functions", "vf", {"reservedConcurrency": 10})
    wait_until(lambda: k8s.ready("functions", "vf"), timeout=30, message="reconciled")
    assert status(k8s)["latestVersion"] == 2

    canary = {"functionVersion": "1", "additionalVersionWeights": {"2": 0.2}, "provisionedConcurrency": 2}
    k8s.patch("functions", "vf", {"aliases": {**live, "canary": canary}})
    wait_until(
        lambda: (
            status(k8s)["aliases"].get("canary")
            == {"functionVersion": "1", "additionalVersionWeights": {"2": 0.2}}
        ),
        timeout=30,
        message="canary routing in the status",
    )
    # Provisioned concurrency split by weight: ceil(2 * 0.2) = 1 for the canary, 1 for version 1.
    wait_until(lambda: k8s.deployment("fn-vf-v1")["spec"]["replicas"] == 1, timeout=30, message="v1 at 1")
    wait_until(lambda: k8s.deployment("fn-vf-v2")["spec"]["replicas"] == 1, timeout=30, message="v2 at 1")

    # Retention 1 with nothing naming version 1 any more: it is collected, ConfigMap and Deployment.
    k8s.patch("functions", "vf", {"retainVersions": 1, "aliases": {**live, "canary": None}})
    wait_until(lambda: k8s.config_map("vf-version-1") is None, timeout=30, message="version 1 collected")
    wait_until(lambda: k8s.deployment("fn-vf-v1") is None, timeout=30, message="its Deployment too")
    wait_until(
        lambda: (
            [v["version"] for v in status(k8s)["versions"]] == ["2"]
            and "canary" not in status(k8s)["aliases"]
        ),
        timeout=30,
        message="status lists version 2 only, and no canary",
    )


@pytest.mark.parametrize(
    ("aliases", "message"),
    [
        ({"prod": {"functionVersion": "9"}}, "spec.aliases: an alias names a version that does not exist"),
        (
            {"prod": {"functionVersion": "1", "additionalVersionWeights": {"2": 1.5}}},
            "additionalVersionWeights",
        ),
        (
            {"prod": {"functionVersion": "1", "additionalVersionWeights": {"2": 0.1, "3": 0.1}}},
            "additionalVersionWeights",
        ),
        ({"123": {"functionVersion": "1"}}, "an alias name"),
    ],
)
def test_crd_refuses_bad_aliases_with_the_field(
    request: pytest.FixtureRequest, aliases: dict[str, Any], message: str
) -> None:
    request.getfixturevalue("crds")
    k8s: Cluster = request.getfixturevalue("cluster")
    with pytest.raises(ApiException) as err:
        k8s.create("functions", versioned("one", aliases=aliases))
    assert err.value.status == 422
    assert message in err.value.body
