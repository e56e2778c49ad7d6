"""Published versions in a cluster: one immutable ConfigMap per version, owned by the Function, and a
Deployment per kept version.

Why a ConfigMap and not the status: a version must survive what the status does not (a status is
rewritten on every reconcile, dropped by backup/restore tools, and bounded by the object's size), and
it must carry the code of ``inline`` and ``configMap`` functions, which changes under $LATEST. The
ConfigMap ``<fn>-version-<N>`` holds ``snapshot.json`` (the versioned spec, the code digest, the layer
artifacts with their revisions, the S3 object version) and the code files under ``code.<file>``;
``immutable: true`` makes the API server refuse any change, and its creation is the atomic act of
publishing (a second operator replica racing for the same number gets 409). The status lists a summary
(`status.versions`) for `kubectl get` and for the gateway.

Pure: the reconciler reads and writes; these functions take data and return data.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from typing import Any

from lamina.api import Function, FunctionSpec
from lamina.api.versions import versioned_config
from lamina.resources import labels, names
from lamina.resources.function import (
    INLINE_FILE,
    VERSION_CODE_PREFIX,
    S3Code,
    VersionPods,
    _deployment,
    config_hash,
    function_secret,
)
from lamina.resources.layer import LayerArtifact
from lamina.resources.meta import metadata
from lamina.resources.settings import Settings

SNAPSHOT_KEY = "snapshot.json"


def snapshot(
    fn: Function,
    digest: str,
    code_sha256: str,
    layers: Sequence[LayerArtifact],
    s3_code: S3Code | None = None,
) -> dict[str, Any]:
    """What a version keeps of $LATEST (without its number, which publishing gives it)."""
    doc: dict[str, Any] = {
        "digest": digest,
        "codeSha256": code_sha256,
        "spec": versioned_config(fn.spec),
        "layers": [
            {
                "name": a.name,
                "revision": a.revision,
                "digest": a.digest,
                "configMap": a.config_map,
                "url": a.url,
                "s3": a.s3,
            }
            for a in layers
        ],
    }
    if s3_code is not None:
        doc["s3"] = {"sha256": s3_code.sha256, "versionId": s3_code.version_id}
    return doc


def version_config_map(
    fn: Function, number: str, snap: Mapping[str, Any], code_config_map: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The immutable ConfigMap that publishes version ``number`` of ``fn``."""
    data: dict[str, str] = {}
    binary: dict[str, str] = {}
    code = fn.spec.code
    if code.inline is not None:
        data[VERSION_CODE_PREFIX + INLINE_FILE] = code.inline
    elif code.config_map is not None and code_config_map is not None:
        for key, value in (code_config_map.get("data") or {}).items():
            data[VERSION_CODE_PREFIX + key] = value
        for key, value in (code_config_map.get("binaryData") or {}).items():
            binary[VERSION_CODE_PREFIX + key] = value
    doc = {
        **snap,
        "version": number,
        "created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    data[SNAPSHOT_KEY] = json.dumps(doc, sort_keys=True)
    cm: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(
            names.version_config_map(fn.name, number), fn, labels.version_labels(fn.name, number)
        ),
        "immutable": True,
        "data": data,
    }
    if binary:
        cm["binaryData"] = binary
    return cm


def read_snapshot(config_map: Mapping[str, Any]) -> dict[str, Any]:
    snapshot: dict[str, Any] = json.loads((config_map.get("data") or {})[SNAPSHOT_KEY])
    return snapshot


def code_files(config_map: Mapping[str, Any]) -> tuple[str, ...]:
    keys = [*(config_map.get("data") or {}), *(config_map.get("binaryData") or {})]
    return tuple(sorted(k[len(VERSION_CODE_PREFIX) :] for k in keys if k.startswith(VERSION_CODE_PREFIX)))


def version_function(fn: Function, snap: Mapping[str, Any]) -> Function:
    """``fn`` as version ``snap`` was: the function's identity with the version's versioned spec."""
    wire = fn.spec.to_dict()
    wire.update(snap["spec"])
    return fn.model_copy(update={"spec": FunctionSpec.model_validate(wire)})


class _S3Pinned:
    def __init__(self, doc: Mapping[str, Any]) -> None:
        self.sha256 = str(doc["sha256"])
        self.version_id = doc.get("versionId")


def version_deployment(
    fn: Function,
    config_map: Mapping[str, Any],
    settings: Settings,
    provisioned: int,
    secret_values: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The Deployment of the version that ``config_map`` publishes, kept at ``provisioned``.
    ``secret_values``: the derived secrets of the function as the version is (its ServiceAccount may
    differ from $LATEST's), in :func:`~lamina.resources.function.function_secret`, created first."""
    snap = read_snapshot(config_map)
    vfn = version_function(fn, snap)
    layers = [
        LayerArtifact(
            layer["name"],
            int(layer["revision"]),
            layer["digest"],
            config_map=layer.get("configMap"),
            url=layer.get("url"),
            s3=layer.get("s3"),
        )
        for layer in snap.get("layers") or []
    ]
    s3 = _S3Pinned(snap["s3"]) if snap.get("s3") else None
    image = settings.image_for(vfn.spec.runtime)
    chash = config_hash(vfn, image, snap["codeSha256"], layers)
    pods = VersionPods(
        number=str(snap["version"]),
        config_map=config_map["metadata"]["name"],
        code_files=code_files(config_map),
        provisioned=provisioned,
    )
    secret = function_secret(vfn, secret_values) if secret_values else None
    return _deployment(
        vfn,
        settings,
        image,
        layers,
        chash,
        s3,
        version=pods,
        secret_name=secret["metadata"]["name"] if secret is not None else None,
        secret_values=secret_values or {},
    )


def summary(config_map: Mapping[str, Any]) -> dict[str, Any]:
    """A version as ``status.versions`` lists it."""
    snap = read_snapshot(config_map)
    spec = snap["spec"]
    http = spec.get("http") or {}
    return {
        "version": str(snap["version"]),
        "codeSha256": snap["codeSha256"],
        "digest": snap["digest"],
        "runtime": spec.get("runtime", ""),
        "handler": spec.get("handler", ""),
        "memoryMB": spec.get("memoryMB", 128),
        "timeoutSeconds": spec.get("timeoutSeconds", 3),
        "layerRevisions": {layer["name"]: layer["revision"] for layer in snap.get("layers") or []},
        "payloadFormat": http.get("payloadFormat", "2.0"),
        "multiValueHeaders": bool(http.get("multiValueHeaders")),
        "created": snap.get("created", ""),
    }
