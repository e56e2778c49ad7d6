"""Layer reconciler: turn the layer's content into a ready, immutable artifact and report it.

Functions read ``status.artifact`` / ``status.digest`` / ``status.revision``; the handlers in
:mod:`lamina.reconcilers.main` re-reconcile the functions that use a layer when its status changes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from lamina.api import API_VERSION, Layer
from lamina.reconcilers.apply import apply
from lamina.reconcilers.client import ApiError, KubeApi, Ref
from lamina.reconcilers.context import Blocked, Context, parse_as
from lamina.reconcilers.s3code import resolve_object
from lamina.reconcilers.status import READY, BlockReason, Compute, is_ready, set_condition, write_status
from lamina.resources import NotSupported, build_layer, labels
from lamina.resources.layer import S3_SCHEME, LayerBuild, next_revision, stale_revisions

log = logging.getLogger(__name__)

POLL_DELAY = 10.0


def layer_ref(namespace: str, name: str) -> Ref:
    return Ref(API_VERSION, "Layer", namespace, name)


def prune_revisions(kube: KubeApi, layer: Layer, current: str) -> None:
    """Delete this layer's revision ConfigMaps beyond the newest few (never the current one)."""
    ns, uid = layer.metadata.namespace, layer.metadata.uid
    selector = f"{labels.LAYER}={layer.name},{labels.NAME}={labels.LAYER_APP}"
    owned = [
        cm
        for cm in kube.list("v1", "ConfigMap", ns, selector)
        if any(o.get("uid") == uid for o in cm["metadata"].get("ownerReferences") or [])
    ]
    for name in stale_revisions(owned, current):
        log.info("Layer %s/%s: deleting old revision ConfigMap %s", ns, layer.name, name)
        kube.delete(Ref("v1", "ConfigMap", ns, name))


def build(kube: KubeApi, layer: Layer, status: Mapping[str, Any] | None = None) -> LayerBuild:
    source = None
    s3_object = None
    if layer.spec.s3 is not None:
        recorded = recorded_s3(status)
        s3_object = resolve_object(kube, layer.metadata.namespace, layer.spec.s3, "spec.s3", recorded)
    if layer.spec.config_map is not None:
        cm_name = layer.spec.config_map.name
        source = kube.get(Ref("v1", "ConfigMap", layer.metadata.namespace, cm_name))
        if source is None:
            raise Blocked(
                BlockReason.CONFIG_MAP_NOT_FOUND,
                f"ConfigMap {cm_name} (the content) does not exist",
                POLL_DELAY,
            )
    try:
        return build_layer(layer, source, s3_object)
    except NotSupported as e:
        raise Blocked(BlockReason.NOT_SUPPORTED_YET, str(e), retry=None) from None


def recorded_s3(status: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What the last reconcile read of an s3 layer (its artifact and digest), to skip a re-read."""
    artifact = (status or {}).get("artifact") or ""
    if not artifact.startswith(S3_SCHEME):
        return None
    doc: dict[str, Any] = json.loads(artifact[len(S3_SCHEME) :])
    doc["sha256"] = (status or {}).get("digest")
    return doc


def reconcile_layer(ctx: Context, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Make the layer's current content available; returns (status before, status after)."""
    meta = body["metadata"]
    ns, name, generation = meta["namespace"], meta["name"], meta.get("generation")
    if meta.get("deletionTimestamp"):
        return None
    ref = layer_ref(ns, name)
    try:
        try:
            layer = parse_as(body, Layer)
            result = build(ctx.kube, layer, body.get("status"))
            if layer.spec.s3 is not None:  # uploads are not watched: look at the object again
                ctx.revisit(("Layer", ns, name), ctx.settings.s3_poll_seconds)
            if result.config_map is not None:
                apply(ctx.kube, result.config_map)
                prune_revisions(ctx.kube, layer, result.config_map["metadata"]["name"])
        except ApiError as e:
            raise Blocked(
                BlockReason.APPLY_FAILED, f"the API server refused the artifact: {e.message}", POLL_DELAY
            ) from e
    except Blocked as blocked:
        written = write_status(ctx.kube, ref, _failed(generation, blocked))
        if written is not None:
            ctx.announce(body, *written)
        raise

    def ready(obj: dict[str, Any]) -> dict[str, Any] | None:
        if obj["metadata"].get("generation") != generation:
            return None
        status = obj.get("status") or {}
        revision = next_revision(status, result.digest)
        artifact = result.artifact(revision, name)
        message = f"revision {revision} ({result.digest[:12]}) is available"
        return {
            "observedGeneration": generation,
            "revision": revision,
            "digest": result.digest,
            "artifact": artifact.artifact,
            "conditions": set_condition(
                status.get("conditions"), READY, True, "Available", message, generation
            ),
        }

    written = write_status(ctx.kube, ref, ready)
    if written is not None:
        ctx.announce(body, *written)
    return written


def _failed(generation: int | None, blocked: Blocked) -> Compute:
    def compute(obj: dict[str, Any]) -> dict[str, Any] | None:
        if obj["metadata"].get("generation") != generation:
            return None
        conditions = (obj.get("status") or {}).get("conditions")
        return {
            "observedGeneration": generation,
            "conditions": set_condition(
                conditions, READY, False, blocked.reason, blocked.message, generation
            ),
        }

    return compute


def artifact_changed(written: tuple[dict[str, Any], dict[str, Any]] | None) -> bool:
    """Whether what functions mount (or whether they may) changed with this write."""
    if written is None:
        return False
    before, after = written
    keys = ("revision", "digest", "artifact")
    return is_ready(before) != is_ready(after) or any(before.get(k) != after.get(k) for k in keys)
