"""Names of the objects the operator makes, derived from their parent's name.

Every child name is a DNS label (Services need one), so a long parent name is shortened and given a
hash suffix instead of being refused. The gateway and the docs rely on these names: change them only
together with their readers.
"""

from __future__ import annotations

import hashlib

DNS_LABEL_MAX = 63
_HASH_LEN = 8


def _bounded(name: str, limit: int = DNS_LABEL_MAX) -> str:
    """``name`` if it fits, else its head plus a short hash of the whole (still unique, still valid)."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:_HASH_LEN]
    head = name[: limit - _HASH_LEN - 1].rstrip("-")
    return f"{head}-{digest}"


def function_deployment(function: str) -> str:
    """The Deployment that holds a Function's execution environments."""
    return _bounded(f"fn-{function}")


def function_service(function: str) -> str:
    """The headless Service selecting a Function's environments (the gateway resolves pods through it)."""
    return _bounded(f"fn-{function}")


def function_network_policy(function: str) -> str:
    """The NetworkPolicy isolating a Function's environments."""
    return _bounded(f"fn-{function}")


def function_secret(function: str, content: str) -> str:
    """The Secret holding a Function's invoke secret and execution credentials. Named after a digest
    of its content: the operator only creates it (it may not read Secrets back), so new content makes
    a new Secret, and the pod template follows the name."""
    return _bounded(f"fn-{function}-{content[:10]}", 253)


def mapping_secret(mapping: str, content: str) -> str:
    """The Secret holding what a mapping's worker must not see in its pod spec (Redis credentials)."""
    return _bounded(f"esm-{mapping}-{content[:10]}", 253)


def function_code_config_map(function: str) -> str:
    """The ConfigMap holding ``index.py`` of a Function with inline code."""
    return _bounded(f"{function}-code", 253)


def version_deployment(function: str, version: str) -> str:
    """The Deployment of one published version's environments."""
    return _bounded(f"fn-{function}-v{version}")


def version_config_map(function: str, version: str) -> str:
    """The immutable ConfigMap that is a published version: its snapshot and its code files."""
    return _bounded(f"{function}-version-{version}", 253)


def layer_config_map(layer: str, digest: str) -> str:
    """The immutable ConfigMap holding one revision (content digest) of a configMap Layer."""
    return _bounded(f"layer-{layer}-{digest[:12]}", 253)


def mapping_deployment(mapping: str) -> str:
    """The Deployment running the worker of an EventSourceMapping."""
    return _bounded(f"esm-{mapping}")


def mapping_service_account(mapping: str) -> str:
    """The ServiceAccount (and its Role and RoleBinding) a mapping's worker writes status with."""
    return _bounded(f"esm-{mapping}")


def mapping_status_token(mapping: str) -> str:
    """The token Secret of that ServiceAccount, mounted into a worker whose pod runs as another one
    (a Kubernetes source watches with the ServiceAccount its mapping names)."""
    return _bounded(f"esm-{mapping}-status-token")


def layer_mount_path(index: int, layer: str) -> str:
    """Where the ``index``-th layer of a Function is mounted (LAMINA_LAYERS lists these in order)."""
    return f"/opt/layers/{index}-{layer}"


def pool_deployment(pool: str) -> str:
    """The Deployment keeping the warm generic pods of one pool (``python3.12-128``)."""
    return _bounded("lamina-pool-" + pool.replace(".", "-"))
