"""Layer -> its ready artifact, and the other way round (status -> what a Function mounts).

A layer revision is immutable: its identity is the content digest. ``url`` layers are referenced as
they are (the digest is the given sha256; each environment fetches and checks the zip in an init
container). ``configMap`` layers are copied into an immutable ConfigMap named after the digest, so that
editing the source ConfigMap makes a new revision instead of changing files under running
environments. ``s3`` layers are read by the operator once per object version (digest computed and
recorded in the artifact, pinned to the object version) and fetched by each environment's init
container with credentials by Secret reference. ``requirements`` layers need a build step with
somewhere to store its output; the cluster has no such store yet, so they are reported as not supported
(local mode builds them).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from lamina.api import Layer
from lamina.api.common import S3Location
from lamina.resources import labels, names
from lamina.resources.meta import config_map_digest, metadata

CONFIG_MAP_SCHEME = "configmap:"
#: ``s3:{json}``: an object in S3-compatible storage, pinned to its version (bucket, key, versionId,
#: endpoint, region, credentialsSecret, etag); each environment fetches it with ``fetch-s3``.
S3_SCHEME = "s3:"
#: How many revision ConfigMaps of a layer are kept (the current one and those before it), so that
#: environments of a Function still rolling from an older revision can start.
KEEP_REVISIONS = 3


class S3Resolved(Protocol):
    """An S3 object as the operator read it."""

    @property
    def sha256(self) -> str: ...

    @property
    def version_id(self) -> str | None: ...

    @property
    def etag(self) -> str | None: ...


class NotSupported(Exception):
    """The layer's source cannot be turned into an artifact in a cluster (yet)."""


@dataclass(frozen=True)
class LayerArtifact:
    """A ready layer revision as a Function consumes it: exactly one of ``config_map`` / ``url``."""

    name: str
    revision: int
    digest: str
    config_map: str | None = None
    url: str | None = None
    s3: str | None = None  # the JSON after ``s3:``

    @property
    def artifact(self) -> str:
        """The ``status.artifact`` string: ``configmap:<name>``, ``s3:{...}`` or the archive URL."""
        if self.config_map is not None:
            return f"{CONFIG_MAP_SCHEME}{self.config_map}"
        if self.s3 is not None:
            return f"{S3_SCHEME}{self.s3}"
        return str(self.url)

    def s3_object(self) -> tuple[S3Location, str | None]:
        """The S3 location and the pinned object version of an ``s3`` artifact."""
        assert self.s3 is not None
        doc = json.loads(self.s3)
        version = doc.pop("versionId", None)
        doc.pop("etag", None)
        return S3Location.model_validate(doc), version

    @classmethod
    def from_status(cls, name: str, status: Mapping[str, Any]) -> LayerArtifact:
        artifact, digest = status.get("artifact"), status.get("digest")
        if not artifact or not digest:
            raise ValueError(f"Layer {name} has no artifact yet")
        revision = int(status.get("revision") or 0)
        if artifact.startswith(CONFIG_MAP_SCHEME):
            return cls(name, revision, digest, config_map=artifact[len(CONFIG_MAP_SCHEME) :])
        if artifact.startswith(S3_SCHEME):
            return cls(name, revision, digest, s3=artifact[len(S3_SCHEME) :])
        return cls(name, revision, digest, url=artifact)


@dataclass(frozen=True)
class LayerBuild:
    """What a Layer's current content becomes: the artifact, and the object holding it (if any)."""

    digest: str
    config_map: dict[str, Any] | None
    url: str | None
    s3: str | None = None

    def artifact(self, revision: int, name: str) -> LayerArtifact:
        cm = self.config_map["metadata"]["name"] if self.config_map is not None else None
        return LayerArtifact(name, revision, self.digest, config_map=cm, url=self.url, s3=self.s3)


def s3_artifact(location: S3Location, version_id: str | None, etag: str | None) -> str:
    """The JSON of an ``s3:`` artifact (stable key order, so an unchanged object is an unchanged string)."""
    doc = location.to_dict()
    doc.pop("objectVersion", None)
    if version_id:
        doc["versionId"] = version_id
    if etag:
        doc["etag"] = etag
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def build_layer(
    layer: Layer, source_config_map: Mapping[str, Any] | None = None, s3_object: S3Resolved | None = None
) -> LayerBuild:
    """The artifact of the layer's current content. ``source_config_map`` is the user's ConfigMap for
    a ``configMap`` layer, ``s3_object`` the operator's reading of an ``s3`` one. Raises
    :class:`NotSupported` for ``requirements`` layers."""
    spec = layer.spec
    if spec.s3 is not None:
        if s3_object is None:
            raise ValueError(f"Layer {layer.name}: the digest of {spec.s3.describe()} is needed")
        return LayerBuild(
            s3_object.sha256, None, None, s3=s3_artifact(spec.s3, s3_object.version_id, s3_object.etag)
        )
    if spec.url is not None:
        assert spec.sha256 is not None
        return LayerBuild(spec.sha256.lower(), None, spec.url)
    if spec.config_map is not None:
        if source_config_map is None:
            raise ValueError(f"Layer {layer.name}: the content of ConfigMap {spec.config_map.name} is needed")
        digest = config_map_digest(source_config_map)
        cm: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata(
                names.layer_config_map(layer.name, digest), layer, labels.layer_labels(layer.name)
            ),
            "immutable": True,
        }
        for key in ("data", "binaryData"):
            if source_config_map.get(key):
                cm[key] = dict(source_config_map[key])
        return LayerBuild(digest, cm, None)
    raise NotSupported(
        "requirements layers are built by `lamina local` only; in a cluster publish the built layer "
        "as url + sha256 or as a configMap"
    )


def next_revision(status: Mapping[str, Any] | None, digest: str) -> int:
    """The revision number for content ``digest``: unchanged for the same content, else one more."""
    status = status or {}
    current = int(status.get("revision") or 0)
    if status.get("digest") == digest and current:
        return current
    return current + 1


def stale_revisions(
    config_maps: Sequence[Mapping[str, Any]], current: str, keep: int = KEEP_REVISIONS
) -> list[str]:
    """Names of a layer's revision ConfigMaps to delete: all but the newest ``keep`` (never ``current``)."""
    ordered = sorted(
        config_maps,
        key=lambda cm: (cm["metadata"].get("creationTimestamp") or "", cm["metadata"]["name"]),
        reverse=True,
    )
    kept = {current}
    for cm in ordered:
        if len(kept) >= keep:
            break
        kept.add(cm["metadata"]["name"])
    return [cm["metadata"]["name"] for cm in ordered if cm["metadata"]["name"] not in kept]
