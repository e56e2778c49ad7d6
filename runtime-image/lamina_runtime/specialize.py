"""A generic pool pod becomes one function's execution environment: the hand-over (``POST /specialize``).

A pool pod starts with the runtime image and no function (``python -m lamina_runtime serve --pool``).
The gateway that claimed it sends, once, what the function's own Deployment would have given a pod:
its environment variables (Lambda's reserved ones, the user's values, Secret and ConfigMap values
already resolved for this one function), its code and its layers, each either as files or as a zip
URL with its sha256 (fetched and checked here, as the ``fetch`` init container does), and the invoke
secret the pod then requires. After that the pod runs INIT and serves only that function; it is never
handed another (the gateway deletes it when it is reaped).

The body is JSON::

    {"environment": {"NAME": "value", ...},
     "code": {"files": {"index.py": "..."}, "binaryFiles": {"lib.so": "<base64>"}}
             | {"url": "...", "sha256": "..."},
     "layers": [<same shapes as code>, ...],  # in LAMINA_LAYERS order
     "invokeSecret": "..." | null}

Everything is written below two roots the pod's spec makes writable (its task root and its layer root);
a file path that leaves them is refused.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import fetch
from .paths import split_layers

#: Where a pool pod's code and layers go (emptyDir volumes in its spec).
TASK_ROOT = "/var/task"
LAYERS_ROOT = "/opt/layers"
#: Largest hand-over body (code as files travels in it; zips are fetched by URL instead).
MAX_BODY_BYTES = 8 * 1024 * 1024
#: Variables the hand-over may not set: the pod's own wiring.
POD_OWNED = ("LAMINA_POOL", "LAMINA_POOL_TASK_ROOT", "LAMINA_POOL_LAYERS_ROOT", "LAMINA_HTTP_TIMEOUTS")


class HandoverError(Exception):
    """The hand-over cannot be applied (a bad body, a path outside the roots, a failed fetch)."""


@dataclass(frozen=True)
class Source:
    """Code or one layer: files to write, or a zip to fetch."""

    files: dict[str, bytes] = field(default_factory=dict)
    url: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Handover:
    environment: dict[str, str]
    code: Source
    layers: list[Source]
    invoke_secret: str | None


def _source(doc: Any, where: str) -> Source:
    if not isinstance(doc, dict):
        raise HandoverError(f"{where}: expected an object")
    if "url" in doc:
        url, sha = doc.get("url"), doc.get("sha256")
        if not isinstance(url, str) or not isinstance(sha, str):
            raise HandoverError(f"{where}: url and sha256 must be strings")
        return Source(url=url, sha256=sha)
    files: dict[str, bytes] = {}
    names = [*(doc.get("files") or {}), *(doc.get("binaryFiles") or {})]
    for name in names:
        parts = name.replace("\\", "/").split("/")
        if not name or name.startswith("/") or ".." in parts:
            raise HandoverError(f"{where}: file {name!r} is outside its directory")
    for name, text in (doc.get("files") or {}).items():
        if not isinstance(text, str):
            raise HandoverError(f"{where}.files[{name!r}]: expected a string")
        files[name] = text.encode()
    for name, data in (doc.get("binaryFiles") or {}).items():
        try:
            files[name] = base64.b64decode(data, validate=True)
        except (binascii.Error, TypeError):
            raise HandoverError(f"{where}.binaryFiles[{name!r}]: not base64") from None
    return Source(files=files)


def parse(body: bytes) -> Handover:
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise HandoverError(f"the hand-over is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise HandoverError("the hand-over must be a JSON object")
    env = doc.get("environment")
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise HandoverError("environment: expected an object of strings")
    owned = sorted(set(env) & set(POD_OWNED))
    if owned:
        raise HandoverError(f"environment: {', '.join(owned)} belong to the pod, not the function")
    layers = doc.get("layers") or []
    if not isinstance(layers, list):
        raise HandoverError("layers: expected a list")
    secret = doc.get("invokeSecret")
    if secret is not None and not isinstance(secret, str):
        raise HandoverError("invokeSecret: expected a string")
    return Handover(
        environment=dict(env),
        code=_source(doc.get("code"), "code"),
        layers=[_source(layer, f"layers[{i}]") for i, layer in enumerate(layers)],
        invoke_secret=secret or None,
    )


def _inside(root: str, path: str) -> str:
    """``path`` made absolute and checked to lie strictly below ``root``."""
    real_root = os.path.realpath(root)
    full = os.path.realpath(os.path.join(real_root, path))
    if full == real_root or not full.startswith(real_root + os.sep):
        raise HandoverError(f"{path!r} is outside {root}")
    return full


def _write(source: Source, dest: str) -> None:
    os.makedirs(dest, exist_ok=True)
    if source.url is not None:
        assert source.sha256 is not None
        try:
            fetch.extract(fetch.download(source.url), source.sha256, dest)
        except fetch.FetchError as exc:
            raise HandoverError(str(exc)) from None
        return
    for name, data in source.files.items():
        path = _inside(dest, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as out:
            out.write(data)


def install(handover: Handover, pod_environ: Mapping[str, str]) -> dict[str, str]:
    """Write the code and layers into the pod's roots and return the environment the function's
    runtime starts with (the pod's own variables plus the function's). The pod decides where things
    go: the code into its task root (``LAMBDA_TASK_ROOT`` is set to it), each layer into a directory
    of its layer root named as the last part of the function's layer path, and ``LAMINA_LAYERS``
    lists those. Blocking: run it in a thread."""
    task_root = pod_environ.get("LAMINA_POOL_TASK_ROOT", TASK_ROOT)
    layers_root = pod_environ.get("LAMINA_POOL_LAYERS_ROOT", LAYERS_ROOT)
    env = handover.environment
    named = split_layers(env.get("LAMINA_LAYERS"))
    if len(named) != len(handover.layers):
        raise HandoverError(
            f"LAMINA_LAYERS names {len(named)} layers, the hand-over has {len(handover.layers)}"
        )
    targets = [_inside(layers_root, os.path.basename(path.rstrip("/")) or "?") for path in named]
    _write(handover.code, task_root)
    for source, target in zip(handover.layers, targets, strict=True):
        _write(source, target)
    merged = {k: v for k, v in pod_environ.items() if not k.startswith("LAMINA_POOL")}
    merged.update(env)
    merged["LAMBDA_TASK_ROOT"] = task_root
    if targets:
        merged["LAMINA_LAYERS"] = os.pathsep.join(targets)
    return merged
