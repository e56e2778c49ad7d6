"""Environments of functions in a cluster: ready pods found through the Kubernetes API.

Ready pods labelled `lamina.dev/function=<name>` are the endpoints (`podIP:8080`). Scaling patches the
scale subresource of the function's Deployment; a pod chosen for retirement is first given the lowest
`controller.kubernetes.io/pod-deletion-cost`, so the ReplicaSet removes that idle pod and not a busy one.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

from kubernetes import client

from lamina.environments.base import FunctionConfig
from lamina.environments.endpoints import Listener
from lamina.kubeapi import ThreadedWatch
from lamina.resources import labels, names

log = logging.getLogger(__name__)

RUNTIME_PORT = 8080
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
#: Who owns `replicas` above provisioned concurrency (the operator only sets the floor).
FIELD_MANAGER = "lamina-gateway"


def pod_endpoint(pod: dict[str, Any]) -> str | None:
    """`ip:port` of a pod that is Ready and not terminating, else None."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp") or not status.get("podIP"):
        return None
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return f"{status['podIP']}:{RUNTIME_PORT}" if ready else None


class KubernetesEndpointSource:
    """An `EndpointSource` over the Kubernetes API (one namespace, or all of them)."""

    def __init__(self, api: client.ApiClient, namespace: str | None = None) -> None:
        self.api = api
        self.namespace = namespace
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self._listeners: list[Listener] = []
        self._pods: dict[str, dict[str, tuple[str, str]]] = defaultdict(dict)  # key -> uid -> (ep, pod)
        self._watch: ThreadedWatch | None = None

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        selector = labels.FUNCTION
        if self.namespace:

            def list_pods(**kw: Any) -> Any:
                return self.core.list_namespaced_pod(self.namespace, label_selector=selector, **kw)
        else:

            def list_pods(**kw: Any) -> Any:
                return self.core.list_pod_for_all_namespaces(label_selector=selector, **kw)

        self._watch = ThreadedWatch(list_pods, self._on_pod, asyncio.get_running_loop())
        self._watch.start()
        await asyncio.to_thread(self._watch.synced.wait, 30)

    def _on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        function = (meta.get("labels") or {}).get(labels.FUNCTION)
        if not function:
            return
        key = f"{meta.get('namespace')}/{function}"
        pods = self._pods[key]
        endpoint = None if kind == "DELETED" else pod_endpoint(pod)
        before = sorted(ep for ep, _ in pods.values())
        if endpoint is None:
            pods.pop(meta.get("uid", ""), None)
        else:
            pods[meta["uid"]] = (endpoint, meta["name"])
        after = sorted(ep for ep, _ in pods.values())
        if after != before:
            for listener in self._listeners:
                listener(key, after)

    def endpoints(self, key: str) -> list[str]:
        return sorted(ep for ep, _ in self._pods.get(key, {}).values())

    async def scale(self, fn: FunctionConfig, replicas: int, retire: str | None = None) -> None:
        await asyncio.to_thread(self._scale, fn, replicas, retire)

    def _scale(self, fn: FunctionConfig, replicas: int, retire: str | None) -> None:
        if retire is not None:
            pod = next((name for ep, name in self._pods.get(fn.pool_key, {}).values() if ep == retire), None)
            if pod is not None:
                self.core.patch_namespaced_pod(
                    pod,
                    fn.namespace,
                    {"metadata": {"annotations": {DELETION_COST: "-1000"}}},
                    field_manager=FIELD_MANAGER,
                )
        self.apps.patch_namespaced_deployment_scale(
            names.function_deployment(fn.name),
            fn.namespace,
            {"spec": {"replicas": replicas}},
            field_manager=FIELD_MANAGER,
        )

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.stop()
