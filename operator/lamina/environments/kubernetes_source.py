"""Environments of functions in a cluster: pods found through the Kubernetes API.

Pods labelled `lamina.dev/function=<name>` are the endpoints (`podIP:8080`): Ready ones take requests,
ones that have an address but are not Ready yet are offered as starting (the pool probes those itself
while a request waits), and what stops a pod from starting (`pod_state.pod_problem`) is passed on so a
waiting request fails with that cause instead of waiting out the cold-start limit. Scaling patches the
replicas of the function's Deployment (a patch of the Deployment, not of its scale subresource: the
chart's ValidatingAdmissionPolicy can then check that it is one lamina made and that nothing but
replicas changes); a pod chosen for retirement is first given the lowest
`controller.kubernetes.io/pod-deletion-cost`, so the ReplicaSet removes that idle pod and not a busy one.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from lamina.environments.base import LATEST, FunctionConfig
from lamina.environments.endpoints import Listener, PodSet, ScaleTargetMissing
from lamina.kubeapi import ThreadedWatch, list_pods_fn, watched
from lamina.resources import labels, names
from lamina.resources.pod_state import PodProblem, function_problem, pod_problem

log = logging.getLogger(__name__)


RUNTIME_PORT = 8080
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
#: Who owns `replicas` above provisioned concurrency (the operator only sets the floor).
FIELD_MANAGER = "lamina-gateway"


def pod_address(pod: dict[str, Any]) -> str | None:
    """`ip:port` of a pod that has an address and is not terminating, else None."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp") or not status.get("podIP"):
        return None
    return f"{status['podIP']}:{RUNTIME_PORT}"


def pod_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def pod_endpoint(pod: dict[str, Any]) -> str | None:
    """`ip:port` of a pod that is Ready and not terminating, else None."""
    address = pod_address(pod)
    return address if address is not None and pod_ready(pod) else None


@dataclass(frozen=True)
class _Pod:
    name: str
    address: str | None
    ready: bool
    problem: PodProblem | None
    pooled: bool = False  # a claimed pool pod (serving this function)


def pod_set(pods: list[_Pod]) -> PodSet:
    """A function's pods as the pool sees them: a pod with a problem is never offered as starting,
    and one without an address yet counts as pending unless it has a problem."""
    return PodSet.of(
        (p.address for p in pods if p.address and p.ready),
        (p.address for p in pods if p.address and not p.ready and p.problem is None),
        function_problem(p.problem for p in pods),
        sum(1 for p in pods if not p.address and p.problem is None),
        (p.address for p in pods if p.address and p.ready and p.pooled),
    )


class KubernetesEndpointSource:
    """An `EndpointSource` over the Kubernetes API (some namespaces, or all of them)."""

    def __init__(self, api: client.ApiClient, namespaces: str | list[str] | None = None) -> None:
        self.api = api
        self.namespaces = [namespaces] if isinstance(namespaces, str) else (namespaces or None)
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self._listeners: list[Listener] = []
        self._pods: dict[str, dict[str, _Pod]] = defaultdict(dict)  # function key -> pod uid -> pod
        self._watches: list[ThreadedWatch] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._watches = [
            ThreadedWatch(list_pods_fn(self.api, ns, labels.FUNCTION), self._on_pod, loop)
            for ns in watched(self.namespaces)
        ]
        for watch in self._watches:
            watch.start()
        for watch in self._watches:
            await asyncio.to_thread(watch.synced.wait, 30)

    def _on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        function = (meta.get("labels") or {}).get(labels.FUNCTION)
        if not function:
            return
        version = (meta.get("labels") or {}).get(labels.VERSION)
        key = f"{meta.get('namespace')}/{function}" + (f":{version}" if version else "")
        pods = self._pods[key]
        before = pod_set(list(pods.values()))
        uid = meta.get("uid", "")
        pod_labels = meta.get("labels") or {}
        pooled = pod_labels.get(labels.NAME) == labels.POOL_APP
        # A claimed pool pod is the function's only once its hand-over is done (state "serving"):
        # until then the gateway that claimed it is handing it over, and nobody else may use it.
        handing_over = pooled and pod_labels.get(labels.POOL_STATE) != labels.SERVING
        if kind == "DELETED" or meta.get("deletionTimestamp") or handing_over:
            pods.pop(uid, None)
        else:
            pods[uid] = _Pod(meta.get("name", ""), pod_address(pod), pod_ready(pod), pod_problem(pod), pooled)
        after = pod_set(list(pods.values()))
        if after == before:
            return
        if after.problem is not None and after.problem != before.problem:
            log.warning("function %s: %s: %s", key, after.problem.reason, after.problem.message)
        for listener in self._listeners:
            listener(key, after)

    def endpoints(self, key: str) -> list[str]:
        return list(pod_set(list(self._pods.get(key, {}).values())).ready)

    async def scale(self, fn: FunctionConfig, replicas: int, retire: str | None = None) -> None:
        await asyncio.to_thread(self._scale, fn, replicas, retire)

    def _scale(self, fn: FunctionConfig, replicas: int, retire: str | None) -> None:
        if retire is not None:
            pods = self._pods.get(fn.pool_key, {}).values()
            pod = next((p.name for p in pods if p.address == retire), None)
            if pod is not None:
                try:
                    self.core.patch_namespaced_pod(
                        pod,
                        fn.namespace,
                        {"metadata": {"annotations": {DELETION_COST: "-1000"}}},
                        field_manager=FIELD_MANAGER,
                    )
                except ApiException as exc:
                    if exc.status != 404:
                        raise  # gone already: the scale below removes some other pod, or none
        deployment = (
            names.function_deployment(fn.name)
            if fn.version == LATEST
            else names.version_deployment(fn.name, fn.version)
        )
        try:
            self.apps.patch_namespaced_deployment(
                deployment,
                fn.namespace,
                {"spec": {"replicas": replicas}},
                field_manager=FIELD_MANAGER,
            )
        except ApiException as exc:
            if exc.status == 404:
                raise ScaleTargetMissing(
                    f"deployment {fn.namespace}/{deployment} does not exist yet"
                ) from None
            raise

    async def close(self) -> None:
        for watch in self._watches:
            watch.stop()
