"""Object metadata shared by every builder: owner references and digests."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from lamina.api import LaminaObject


def owner_reference(owner: LaminaObject) -> dict[str, Any]:
    """The controller reference that makes the API server's garbage collector delete children with
    their parent (so the operator needs no finalizer)."""
    if not owner.metadata.uid:
        raise ValueError(f"{owner.kind} {owner.name} has no uid (was it read from the API server?)")
    return {
        "apiVersion": owner.api_version,
        "kind": owner.kind,
        "name": owner.name,
        "uid": owner.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(
    name: str, owner: LaminaObject, labels: Mapping[str, str], annotations: Mapping[str, str] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": owner.metadata.namespace,
        "labels": dict(labels),
        "ownerReferences": [owner_reference(owner)],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def digest(value: Any) -> str:
    """sha256 (hex) of a JSON-able value, independent of dict order."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def config_map_digest(config_map: Mapping[str, Any]) -> str:
    """Content digest of a ConfigMap: its data and binaryData, nothing of its metadata."""
    return digest({"data": config_map.get("data") or {}, "binaryData": config_map.get("binaryData") or {}})
