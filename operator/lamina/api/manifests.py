"""Reading the manifests a user would ``kubectl apply``: files, folders, multi-document YAML.

Local mode runs from the same YAML as the cluster, so this loader accepts what kubectl accepts for
our kinds (plus ConfigMaps and Secrets that functions reference) and refuses the rest up front.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lamina.api.common import API_VERSION, LaminaObject
from lamina.api.errors import ManifestError, problems_from
from lamina.api.eventsourcemapping import EventSourceMapping
from lamina.api.function import Function
from lamina.api.layer import Layer

KINDS: dict[str, type[LaminaObject]] = {
    "Function": Function,
    "Layer": Layer,
    "EventSourceMapping": EventSourceMapping,
}
#: Core kinds kept as plain dicts because functions read values from them.
CORE_KINDS = ("ConfigMap", "Secret")
YAML_SUFFIXES = (".yaml", ".yml")
#: Kubernetes' rule for ConfigMap and Secret keys (IsConfigMapKey): no "/", not "." or "..", and not
#: starting with "..". Local mode writes ConfigMap keys as file names, so this keeps them inside the
#: state directory, exactly as the kubelet keeps them inside the volume.
DATA_KEY = re.compile(r"[-._a-zA-Z0-9]{1,253}")

Key = tuple[str, str]


def _plain(value: Any) -> Any:
    """Deep copy into plain dicts and lists (kopf hands out Mapping views, not dicts)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def parse_object(doc: Mapping[str, Any]) -> LaminaObject:
    """Validate one lamina object (a dict as kubectl or kopf sees it); raise ManifestError if wrong."""
    if not isinstance(doc, Mapping):
        raise ManifestError([f"expected an object, got {type(doc).__name__}"])
    doc = _plain(doc)
    kind, api_version = doc.get("kind"), doc.get("apiVersion")
    model = KINDS.get(kind) if isinstance(kind, str) else None
    if model is None or api_version != API_VERSION:
        raise ManifestError([f"unknown kind {kind!r} (apiVersion {api_version!r})"])
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    subject = f"{kind} {name}" if isinstance(name, str) and name else f"{kind} <unnamed>"
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise ManifestError(problems_from(subject, model, exc)) from None


@dataclass
class Manifests:
    """Everything loaded, indexed by (namespace, name)."""

    functions: dict[Key, Function] = field(default_factory=dict)
    layers: dict[Key, Layer] = field(default_factory=dict)
    mappings: dict[Key, EventSourceMapping] = field(default_factory=dict)
    config_maps: dict[Key, dict[str, Any]] = field(default_factory=dict)
    secrets: dict[Key, dict[str, Any]] = field(default_factory=dict)

    def secret_value(self, namespace: str, name: str, key: str) -> str | None:
        """A Secret's value by key, from ``stringData`` or base64 ``data``."""
        secret = self.secrets.get((namespace, name))
        if secret is None:
            return None
        if key in (secret.get("stringData") or {}):
            return str(secret["stringData"][key])
        raw = (secret.get("data") or {}).get(key)
        return None if raw is None else base64.b64decode(raw).decode(errors="replace")

    def config_map_value(self, namespace: str, name: str, key: str) -> str | None:
        """A ConfigMap's value by key."""
        cm = self.config_maps.get((namespace, name))
        value = (cm or {}).get("data", {}).get(key) if cm else None
        return None if value is None else str(value)


def _expand(paths: Iterable[str | Path]) -> list[Path]:
    """Files named directly are taken as they are; folders give their *.yaml/*.yml, recursively."""
    files: list[Path] = []
    missing: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(
                f
                for f in sorted(p.rglob("*"))
                if f.is_file()
                and f.suffix in YAML_SUFFIXES
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )
        elif p.is_file():
            files.append(p)
        else:
            missing.append(f"{p}: no such file or directory")
    if missing:
        raise ManifestError(missing)
    return files


def _documents(text: str, source: str) -> list[tuple[str, Any]]:
    """(label, document) for each non-empty document; ``kind: List`` is flattened."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError([f"{source}: invalid YAML{where}: {problem}"]) from None
    out: list[tuple[str, Any]] = []
    for i, doc in enumerate(docs, start=1):
        label = f"{source} (document {i})"
        if doc is None:
            continue
        if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            out.extend((f"{label} item {j}", item) for j, item in enumerate(doc["items"], start=1))
        else:
            out.append((label, doc))
    return out


def _data_problems(subject: str, doc: dict[str, Any]) -> list[str]:
    """What the API server would refuse in a ConfigMap's or Secret's data: bad keys, and base64
    fields that are not base64."""
    problems: list[str] = []
    for section in ("data", "binaryData", "stringData"):
        values = doc.get(section)
        if values is None:
            continue
        if not isinstance(values, dict):
            problems.append(f"{subject}: {section}: must be a map of keys to values")
            continue
        for k, v in values.items():
            where = f"{subject}: {section}[{k!r}]"
            if not isinstance(k, str) or not DATA_KEY.fullmatch(k) or k in (".", "..") or k.startswith(".."):
                problems.append(
                    f"{where}: a key must consist of letters, digits, '-', '_' or '.' (no '/', not "
                    "'.' or '..', not starting with '..')"
                )
            elif not isinstance(v, str):
                problems.append(f"{where}: must be a string")
            elif section == "binaryData" or (section == "data" and doc.get("kind") == "Secret"):
                try:
                    base64.b64decode(v, validate=True)
                except (binascii.Error, ValueError):
                    problems.append(f"{where}: must be base64")
    return problems


def _add(found: Manifests, seen: dict[tuple[str, Key], str], label: str, doc: Any) -> list[str]:
    """Put one document into ``found``; return its problems."""
    if not isinstance(doc, dict):
        return [f"{label}: expected a Kubernetes object, got {type(doc).__name__}"]
    kind, api_version = doc.get("kind"), doc.get("apiVersion")
    if kind in CORE_KINDS and api_version == "v1":
        meta = doc.get("metadata") or {}
        name = meta.get("name")
        if not isinstance(name, str) or not name:
            return [f"{label}: {kind} <unnamed>: metadata.name: is required"]
        key: Key = (meta.get("namespace") or "default", name)
        problems = _data_problems(f"{label}: {kind} {name}", doc)
        if problems:
            return problems
        obj: Any = doc
    elif kind in KINDS and api_version == API_VERSION:
        try:
            obj = parse_object(doc)
        except ManifestError as exc:
            return exc.problems
        key = obj.key
    else:
        return [f"{label}: unknown kind {kind!r} with apiVersion {api_version!r}"]
    if (kind, key) in seen:
        return [f"{kind} {key[1]}: defined twice in namespace {key[0]} ({seen[kind, key]} and {label})"]
    seen[kind, key] = label
    tables: dict[str, dict[Key, Any]] = {
        "Function": found.functions,
        "Layer": found.layers,
        "EventSourceMapping": found.mappings,
        "ConfigMap": found.config_maps,
        "Secret": found.secrets,
    }
    table = tables[kind]
    table[key] = obj
    return []


def load_documents(sources: Iterable[tuple[str, str]]) -> Manifests:
    """Load (source name, YAML text) pairs; every problem of every document is reported at once."""
    found = Manifests()
    seen: dict[tuple[str, Key], str] = {}
    problems: list[str] = []
    for source, text in sources:
        try:
            docs = _documents(text, source)
        except ManifestError as exc:
            problems.extend(exc.problems)
            continue
        for label, doc in docs:
            problems.extend(_add(found, seen, label, doc))
    if problems:
        raise ManifestError(problems)
    return found


def load_manifests(paths: str | Path | Iterable[str | Path]) -> Manifests:
    """Load every manifest under ``paths`` (files or folders); raise ManifestError listing all problems."""
    if isinstance(paths, str | Path):
        paths = [paths]
    files = _expand(paths)
    return load_documents((str(f), f.read_text(encoding="utf-8")) for f in files)
