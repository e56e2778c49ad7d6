"""Label and annotation keys on the objects the operator makes.

Parent labels are deliberately not copied to children: a GitOps tool that tracks objects by a label
(Argo CD's ``app.kubernetes.io/instance``) would otherwise claim, and prune, what the operator made.
"""

from __future__ import annotations

NAME = "app.kubernetes.io/name"
COMPONENT = "app.kubernetes.io/component"
PART_OF = "app.kubernetes.io/part-of"
MANAGED_BY = "app.kubernetes.io/managed-by"

FUNCTION = "lamina.dev/function"
LAYER = "lamina.dev/layer"
#: On a published version's pods, Deployment and ConfigMap: its number.
VERSION = "lamina.dev/version"
MAPPING = "lamina.dev/eventsourcemapping"

#: Annotation on pod templates: digest of everything that should restart environments when it changes.
CONFIG_HASH = "lamina.dev/config-hash"
#: Annotation on a Function's Deployment: the provisionedConcurrency its replicas were last set from.
PROVISIONED = "lamina.dev/provisioned-concurrency"

#: A generic pool pod: which pool (``python3.12-128``), and where it is in its life.
POOL = "lamina.dev/pool"
POOL_STATE = "lamina.dev/pool-state"
IDLE, CLAIMED, SERVING = "idle", "claimed", "serving"
#: Annotation of a claimed pool pod: the gateway replica that claimed it.
CLAIMED_BY = "lamina.dev/claimed-by"
#: Annotation of a Namespace: its pools' size, overriding the installation's.
POOL_SIZE = "lamina.dev/pool-size"

FUNCTION_APP = "lamina-function"
#: A published version's pods carry another app name, so $LATEST's selector (which cannot change on an
#: existing Deployment) never matches them.
FUNCTION_VERSION_APP = "lamina-function-version"
POOL_APP = "lamina-pool"
WORKER_APP = "lamina-eventsource-worker"
LAYER_APP = "lamina-layer"
MANAGER = "lamina-operator"


def common(app: str, component: str) -> dict[str, str]:
    return {NAME: app, COMPONENT: component, PART_OF: "lamina", MANAGED_BY: MANAGER}


def function_selector(function: str) -> dict[str, str]:
    """Selects a Function's environments (pods); stable for the Deployment's lifetime."""
    return {NAME: FUNCTION_APP, FUNCTION: function}


def function_labels(function: str) -> dict[str, str]:
    return {**common(FUNCTION_APP, "execution-environment"), FUNCTION: function}


def version_selector(function: str, version: str) -> dict[str, str]:
    """Selects the environments of one published version."""
    return {NAME: FUNCTION_VERSION_APP, FUNCTION: function, VERSION: version}


def version_labels(function: str, version: str) -> dict[str, str]:
    return {**common(FUNCTION_VERSION_APP, "execution-environment"), FUNCTION: function, VERSION: version}


def mapping_selector(mapping: str) -> dict[str, str]:
    return {NAME: WORKER_APP, MAPPING: mapping}


def mapping_labels(mapping: str, function: str) -> dict[str, str]:
    return {**common(WORKER_APP, "event-source-worker"), MAPPING: mapping, FUNCTION: function}


def layer_labels(layer: str) -> dict[str, str]:
    return {**common(LAYER_APP, "layer-artifact"), LAYER: layer}


def pool_selector(pool: str) -> dict[str, str]:
    """Selects a pool's idle pods: a claimed pod leaves it (its ReplicaSet then makes a new one)."""
    return {NAME: POOL_APP, POOL: pool, POOL_STATE: IDLE}


def pool_labels(pool: str) -> dict[str, str]:
    return {**common(POOL_APP, "pool"), POOL: pool}
