"""Pure builders: a lamina object (plus what it depends on, read by the caller) -> the Kubernetes
objects that realise it, as plain dicts. No client, no I/O; the reconcilers apply what comes out."""

from lamina.resources.eventsourcemapping import (
    WorkerState,
    build_mapping,
    build_mapping_identity,
    worker_state,
)
from lamina.resources.function import (
    FunctionResources,
    Readiness,
    build_function,
    deployment_readiness,
    desired_replicas,
)
from lamina.resources.layer import LayerArtifact, LayerBuild, NotSupported, build_layer
from lamina.resources.settings import Settings

__all__ = [
    "FunctionResources",
    "LayerArtifact",
    "LayerBuild",
    "NotSupported",
    "Readiness",
    "Settings",
    "WorkerState",
    "build_function",
    "build_layer",
    "build_mapping",
    "build_mapping_identity",
    "deployment_readiness",
    "desired_replicas",
    "worker_state",
]
