"""Warm generic pools: pods of the runtime image with no function yet, one pool per runtime image and
memory size in use in a namespace, and the hand-over that makes a claimed pod one function's.

A pool is a Deployment whose selector includes ``lamina.dev/pool-state=idle``. The gateway claims a pod
by changing that label (a conditional update on the pod's resourceVersion, so two gateways never win the
same pod); the pod then no longer matches, the ReplicaSet lets it go and starts a replacement, so the
pool refills by itself. The claimed pod serves that one function until the gateway deletes it.

Pure: functions and settings in, objects and decisions out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lamina.api import Function
from lamina.api.function import cpu_millicores
from lamina.resources import labels, names
from lamina.resources.function import (
    GRACE_SECONDS,
    INLINE_FILE,
    PORT,
    SERVE_COMMAND,
    SERVER_MEMORY_HEADROOM_MB,
    TASK_ROOT,
    TMP_SIZE,
    UNZIPPED_SIZE,
    function_env,
)
from lamina.resources.pods import hardened_pod, runtime_container
from lamina.resources.runtime_env import CREDENTIAL_VARIABLES
from lamina.resources.settings import CUSTOM_RUNTIME_IMAGE_RUNTIME, Settings
from lamina_runtime.factory import is_custom_runtime

LAYERS_ROOT = "/opt/layers"
#: A claimed pod may serve a function with the longest timeout: it gets that long to finish when
#: deleted mid-invocation (an idle pod exits at once).
MAX_TIMEOUT_SECONDS = 900
POOL_PATH, DEPLOYMENT_PATH = "Pool", "Deployment"


@dataclass(frozen=True, order=True)
class PoolKey:
    """One pool: the runtime image's runtime (``provided.*`` run in the python3.12 image) and a size."""

    runtime: str
    memory_mb: int

    @property
    def label(self) -> str:
        return f"{self.runtime}-{self.memory_mb}"

    @property
    def deployment(self) -> str:
        return names.pool_deployment(self.label)

    @classmethod
    def parse(cls, label: str) -> PoolKey:
        runtime, _, memory = label.rpartition("-")
        return cls(runtime, int(memory))


def pool_key(fn: Function) -> PoolKey:
    runtime = CUSTOM_RUNTIME_IMAGE_RUNTIME if is_custom_runtime(fn.spec.runtime) else fn.spec.runtime
    return PoolKey(runtime, fn.spec.memory_mb)


@dataclass(frozen=True)
class PathChoice:
    """How a function's cold starts above provisioned concurrency are served, and why."""

    path: str  # POOL_PATH | DEPLOYMENT_PATH
    reason: str


def cold_start_path(fn: Function, settings: Settings, pool_size: int) -> PathChoice:
    """A function takes pool pods unless it needs what a generic pod cannot take on afterwards; then
    its own Deployment scales (provisioned concurrency is always its Deployment)."""
    memory = fn.spec.memory_mb
    if pool_size <= 0:
        return PathChoice(DEPLOYMENT_PATH, "no warm pool in this namespace (pool size 0)")
    if settings.pool_memory_sizes and memory not in settings.pool_memory_sizes:
        sizes = ", ".join(str(m) for m in settings.pool_memory_sizes)
        return PathChoice(DEPLOYMENT_PATH, f"no pool of {memory} MB (pools: {sizes} MB)")
    if fn.spec.code.s3 is not None:
        return PathChoice(
            DEPLOYMENT_PATH, "code from S3 is fetched with the function's own credentials by its pods"
        )
    if fn.spec.service_account_name:
        # A pod's ServiceAccount (and its token's mount) is fixed when the pod is created.
        return PathChoice(
            DEPLOYMENT_PATH,
            f"runs as its own ServiceAccount {fn.spec.service_account_name}, which a pool pod cannot take on",
        )
    if fn.spec.network is not None and fn.spec.network.egress is not None:
        # A pool pod starts with the pool's egress; the function's NetworkPolicy would reach a claimed
        # pod only once the node's policy controller saw its new labels, after INIT had begun.
        return PathChoice(DEPLOYMENT_PATH, "its own egress (spec.network.egress) differs from the pool's")
    key = pool_key(fn)
    return PathChoice(POOL_PATH, f"warm pool {key.label} ({pool_size} pods)")


def pool_size(settings: Settings, namespace: Mapping[str, Any] | None) -> int:
    """The installation's pool size, or the namespace's ``lamina.dev/pool-size`` annotation."""
    annotations = ((namespace or {}).get("metadata") or {}).get("annotations") or {}
    raw = annotations.get(labels.POOL_SIZE)
    if raw is None:
        return settings.pool_size
    try:
        return max(0, int(raw))
    except ValueError:
        return settings.pool_size


def pools_wanted(functions: Iterable[Function], settings: Settings, size: int) -> dict[PoolKey, int]:
    """The pools a namespace needs: one per runtime image and memory size of a function on the pool
    path, each ``size`` pods."""
    wanted: dict[PoolKey, int] = {}
    for fn in functions:
        if cold_start_path(fn, settings, size).path == POOL_PATH:
            wanted[pool_key(fn)] = size
    return wanted


def build_pool(namespace: str, key: PoolKey, size: int, settings: Settings) -> dict[str, Any]:
    """The Deployment of one pool: hardened generic pods with writable code and layer volumes and no
    credentials (no ServiceAccount token, no Secret, nothing of any function)."""
    memory = f"{key.memory_mb + SERVER_MEMORY_HEADROOM_MB}Mi"
    millicores = cpu_millicores(key.memory_mb)
    image = settings.image_for(key.runtime)
    container = {
        "name": "function",
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": [*SERVE_COMMAND, "--pool"],
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "env": [
            {"name": "LAMINA_RUNTIME", "value": key.runtime},
            {"name": "LAMINA_POOL_TASK_ROOT", "value": TASK_ROOT},
            {"name": "LAMINA_POOL_LAYERS_ROOT", "value": LAYERS_ROOT},
        ],
        # Ready while idle (claimable), then again once the function's INIT is done.
        **runtime_container(millicores, memory),
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "code", "mountPath": TASK_ROOT},
            {"name": "layers", "mountPath": LAYERS_ROOT},
        ],
    }
    pod = hardened_pod(
        {
            "terminationGracePeriodSeconds": MAX_TIMEOUT_SECONDS + GRACE_SECONDS,
            "containers": [container],
            "volumes": [
                {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE}},
                {"name": "code", "emptyDir": {"sizeLimit": UNZIPPED_SIZE}},
                {"name": "layers", "emptyDir": {"sizeLimit": UNZIPPED_SIZE}},
            ],
        }
    )
    pod_labels = {**labels.pool_labels(key.label), **labels.pool_selector(key.label)}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": key.deployment, "namespace": namespace, "labels": labels.pool_labels(key.label)},
        "spec": {
            "replicas": size,
            "selector": {"matchLabels": labels.pool_selector(key.label)},
            "revisionHistoryLimit": 2,
            "template": {"metadata": {"labels": pod_labels}, "spec": pod},
        },
    }


# -------------------------------------------------------------------------------- the hand-over


class UnresolvedReference(ValueError):
    """A Secret or ConfigMap value the function's variables name was not given to the hand-over."""


def handover_environment(
    fn: Function,
    settings: Settings,
    layer_paths: Sequence[str],
    resolved: Mapping[str, str],
    credentials: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The function's variables as its Deployment's container would have them, with each
    ``valueFrom`` replaced by its value from ``resolved`` (by variable name). ``credentials``: the
    function's execution credentials (authentication on), in place of the placeholders, unless the
    function sets credential variables of its own."""
    env: dict[str, str] = {}
    own = set(fn.spec.environment) | {e.name for e in fn.spec.environment_from}
    if credentials is not None and not own & CREDENTIAL_VARIABLES:
        env.update(credentials)
    for var in function_env(fn, settings, layer_paths, own_credentials=credentials is not None):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif var["name"] in resolved:
            env[var["name"]] = resolved[var["name"]]
        else:
            raise UnresolvedReference(
                f"Function {fn.name}: {var['name']} names a value that was not resolved"
            )
    return env


def layer_paths(layer_names: Sequence[str]) -> list[str]:
    return [names.layer_mount_path(i, name) for i, name in enumerate(layer_names)]


def source_doc(
    files: Mapping[str, str] | None = None, *, url: str | None = None, sha256: str | None = None
) -> dict[str, Any]:
    """Code or a layer in the hand-over: files (a ConfigMap's data, inline code), or a zip to fetch."""
    if url is not None:
        return {"url": url, "sha256": (sha256 or "").lower()}
    return {"files": dict(files or {})}


def handover(
    environment: Mapping[str, str],
    code: Mapping[str, Any],
    layers: Sequence[Mapping[str, Any]],
    invoke_secret: str | None,
) -> dict[str, Any]:
    """The body of ``POST /specialize`` (see lamina_runtime.specialize)."""
    return {
        "environment": dict(environment),
        "code": dict(code),
        "layers": [dict(layer) for layer in layers],
        "invokeSecret": invoke_secret,
    }


def inline_files(fn: Function) -> dict[str, str] | None:
    """Inline code as the files its ConfigMap would hold (``index.py``)."""
    return {INLINE_FILE: fn.spec.code.inline} if fn.spec.code.inline is not None else None


__all__ = [
    "DEPLOYMENT_PATH",
    "LAYERS_ROOT",
    "POOL_PATH",
    "PathChoice",
    "PoolKey",
    "UnresolvedReference",
    "build_pool",
    "cold_start_path",
    "handover",
    "handover_environment",
    "inline_files",
    "layer_paths",
    "pool_key",
    "pool_size",
    "pools_wanted",
    "source_doc",
]
