"""Server-side apply of the builders' output, with a stable field manager.

The operator owns every field it states (``lamina-operator``), and forces conflicts: a child edited by
hand is put back. One field is shared: a Function Deployment's ``spec.replicas``. The gateway scales
environments above provisioned concurrency (it patches the scale subresource as its own manager), so
the operator's main apply leaves ``replicas`` out, and the operator sets it only through a second
manager, ``lamina-operator-replicas``, whose applies state nothing else. That manager never omits the
field it owns, so the API server never resets replicas to its default when the main apply drops it.
"""

from __future__ import annotations

import copy
from typing import Any

from lamina.reconcilers.client import KubeApi, Ref
from lamina.reconcilers.status import FIELD_MANAGER
from lamina.resources import desired_replicas, labels

REPLICAS_MANAGER = "lamina-operator-replicas"


def apply(kube: KubeApi, obj: dict[str, Any]) -> dict[str, Any]:
    return kube.apply(obj, FIELD_MANAGER)


def delete_if_owned(kube: KubeApi, ref: Ref, owner_uid: str) -> bool:
    """Delete ``ref`` if it exists and ``owner_uid`` is its controller (never a user's object)."""
    obj = kube.get(ref)
    if obj is None:
        return False
    owners = obj["metadata"].get("ownerReferences") or []
    if not any(o.get("uid") == owner_uid and o.get("controller") for o in owners):
        return False
    return kube.delete(ref, uid=obj["metadata"]["uid"])


def replicas_owners(deployment: dict[str, Any]) -> set[str]:
    """Field managers that own ``spec.replicas`` (read from managedFields)."""
    owners = set()
    for entry in deployment["metadata"].get("managedFields") or []:
        spec = (entry.get("fieldsV1") or {}).get("f:spec") or {}
        if "f:replicas" in spec:
            owners.add(entry.get("manager", ""))
    return owners


def apply_scaled_deployment(kube: KubeApi, desired: dict[str, Any], provisioned: int) -> dict[str, Any]:
    """Apply a Function's Deployment without taking ``replicas`` from the gateway.

    Replicas are set (through :data:`REPLICAS_MANAGER`) when the Deployment is new, when it has
    fewer than ``provisioned``, or when provisioned concurrency changed and nothing runs on top of it.
    """
    ref = Ref.of(desired)
    existing = kube.get(ref)
    body = copy.deepcopy(desired)
    spec = body["spec"]
    if existing is None:
        want: int | None = provisioned
        spec["replicas"] = provisioned  # a new Deployment must not start with the default of 1
    else:
        current = existing["spec"].get("replicas")
        previous = (existing["metadata"].get("annotations") or {}).get(labels.PROVISIONED)
        want = desired_replicas(
            current, int(previous) if previous and previous.isdigit() else None, provisioned
        )
        if replicas_owners(existing) <= {FIELD_MANAGER}:
            # Only the main manager owns replicas (first apply, or an interrupted hand-over):
            # keep stating it, so that the field survives until the replicas manager holds it.
            spec["replicas"] = want if want is not None else current
        else:
            spec.pop("replicas", None)
    applied = kube.apply(body, FIELD_MANAGER)
    if want is not None or FIELD_MANAGER in replicas_owners(applied) or existing is None:
        value = want if want is not None else applied["spec"].get("replicas", provisioned)
        scale = {
            "apiVersion": desired["apiVersion"],
            "kind": desired["kind"],
            "metadata": {"name": ref.name, "namespace": ref.namespace},
            "spec": {"replicas": value},
        }
        applied = kube.apply(scale, REPLICAS_MANAGER)
    return applied
