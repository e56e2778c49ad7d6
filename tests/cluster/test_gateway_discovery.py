"""The cluster gateway's view of environments, against a real API server with kwok pods.

Nothing listens at these pods' addresses, so these tests check discovery and scaling only; invoking
through pods is tests/cluster/test_end_to_end.py (which runs the pods' servers itself) and
tests/unit/test_http_pool.py (real runtime servers on loopback).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubernetes import client

from lamina.environments.base import FunctionConfig
from lamina.environments.endpoints import ScaleTargetMissing
from lamina.environments.http_pool import HttpEnvironmentPool
from lamina.environments.kubernetes_source import DELETION_COST, FIELD_MANAGER, KubernetesEndpointSource
from lamina.resources import labels, names


def deployment(name: str, replicas: int) -> dict[str, Any]:
    pod_labels = {labels.FUNCTION: name, labels.NAME: labels.FUNCTION_APP}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": names.function_deployment(name)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": pod_labels},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {"containers": [{"name": "runtime", "image": "lamina/runtime:test"}]},
            },
        },
    }


async def eventually(predicate, within: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.2)


async def test_ready_pods_become_endpoints_and_scale_follows(k8s_api, namespace, apply_yaml) -> None:
    apply_yaml(deployment("disc", 1), namespace=namespace)
    fn = FunctionConfig(name="disc", namespace=namespace)
    source = KubernetesEndpointSource(k8s_api, namespace)
    seen: list[list[str]] = []
    source.subscribe(lambda key, pods: seen.append(list(pods.ready)) if key == fn.key else None)
    await source.start()
    try:
        await eventually(lambda: len(source.endpoints(fn.key)) == 1)
        [endpoint] = source.endpoints(fn.key)
        assert endpoint.endswith(":8080")
        assert seen[-1] == [endpoint]

        await source.scale(fn, 3)
        await eventually(lambda: len(source.endpoints(fn.key)) == 3)

        retire = source.endpoints(fn.key)[1]
        await source.scale(fn, 2, retire=retire)
        apps = client.AppsV1Api(k8s_api)
        scale = apps.read_namespaced_deployment_scale(names.function_deployment("disc"), namespace)
        assert scale.spec.replicas == 2
        managers = {
            f.manager
            for f in apps.read_namespaced_deployment(
                names.function_deployment("disc"), namespace
            ).metadata.managed_fields
        }
        assert FIELD_MANAGER in managers  # scaling is the gateway's, not confused with the operator's
        await eventually(lambda: len(source.endpoints(fn.key)) == 2)
        assert retire not in source.endpoints(fn.key)  # the idle pod we named is the one removed
    finally:
        await source.close()


async def test_retired_pod_is_marked_cheapest_to_delete(k8s_api, namespace, apply_yaml) -> None:
    apply_yaml(deployment("cost", 2), namespace=namespace)
    fn = FunctionConfig(name="cost", namespace=namespace)
    source = KubernetesEndpointSource(k8s_api, namespace)
    await source.start()
    try:
        await eventually(lambda: len(source.endpoints(fn.key)) == 2)
        retire = source.endpoints(fn.key)[0]
        core = client.CoreV1Api(k8s_api)
        pods = core.list_namespaced_pod(namespace, label_selector=f"{labels.FUNCTION}=cost").items
        [victim] = [p for p in pods if f"{p.status.pod_ip}:8080" == retire]
        await source.scale(fn, 2, retire=retire)  # same size: only the annotation changes
        annotations = core.read_namespaced_pod(victim.metadata.name, namespace).metadata.annotations
        assert annotations[DELETION_COST] == "-1000"
    finally:
        await source.close()


async def test_a_function_whose_deployment_is_not_made_yet_is_scaled_once_it_is(
    k8s_api, namespace, apply_yaml
) -> None:
    """A gateway that starts (or takes a cold start) before the operator has made a Function's
    Deployment keeps running, and asks again until the Deployment takes the count: the final CI saw
    a gateway exit on the 404 of its first scale."""
    fn = FunctionConfig(name="late", namespace=namespace, provisioned_concurrency=2)
    source = KubernetesEndpointSource(k8s_api, namespace)
    pool = HttpEnvironmentPool(source, [fn])
    await pool.start()  # the scale to 2 finds no Deployment
    try:
        apply_yaml(deployment("late", 0), namespace=namespace)
        apps = client.AppsV1Api(k8s_api)
        await eventually(
            lambda: (
                apps.read_namespaced_deployment_scale(
                    names.function_deployment("late"), namespace
                ).spec.replicas
                == 2
            ),
            within=30,
        )
        await eventually(lambda: len(source.endpoints(fn.key)) == 2)
    finally:
        await pool.close()


async def test_scaling_a_missing_deployment_says_so_and_a_gone_retiree_is_no_error(
    k8s_api, namespace, apply_yaml
) -> None:
    fn = FunctionConfig(name="gone", namespace=namespace)
    source = KubernetesEndpointSource(k8s_api, namespace)
    await source.start()
    try:
        with pytest.raises(ScaleTargetMissing, match=f"{namespace}/{names.function_deployment('gone')}"):
            await source.scale(fn, 1)
        apply_yaml(deployment("gone", 1), namespace=namespace)
        await eventually(lambda: len(source.endpoints(fn.key)) == 1)
        [endpoint] = source.endpoints(fn.key)
        core = client.CoreV1Api(k8s_api)
        [pod] = core.list_namespaced_pod(namespace, label_selector=f"{labels.FUNCTION}=gone").items
        core.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)
        await source.scale(fn, 0, retire=endpoint)  # the pod named may be gone by the time we patch it
        gone = client.AppsV1Api(k8s_api).read_namespaced_deployment(
            names.function_deployment("gone"), namespace
        )
        assert gone.spec.replicas == 0
    finally:
        await source.close()
