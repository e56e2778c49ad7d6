"""Published versions in local mode: one JSON file per version under the state directory.

``<state>/versions/<namespace>/<function>/<N>.json`` holds what the version runs: handler, runtime,
memory, timeout, HTTP payload format, the content-addressed code and layer directories (immutable
under the state directory), the plain environment and the ``environmentFrom`` references (resolved at
each start, as a pod resolves them; the values are not copied to disk). So a manifest changed between
two runs of ``lamina local`` publishes the next number, and ``name:7`` keeps running what 7 was.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

from lamina.api import EnvFrom, Function, ManifestError
from lamina.api.versions import MissingVersion, Route, declared_routes, needs_publish, plan, retained
from lamina.environments.base import FunctionConfig, version_of


class VersionStore:
    """Versions of every function, as files; only the state directory's owner writes."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "versions"

    def _dir(self, namespace: str, name: str) -> Path:
        return self.root / namespace / name

    def load(self, namespace: str, name: str) -> dict[str, dict[str, Any]]:
        """Version number -> record, oldest first."""
        folder = self._dir(namespace, name)
        if not folder.is_dir():
            return {}
        records = {}
        for path in folder.glob("*.json"):
            if path.stem.isdigit():
                records[path.stem] = json.loads(path.read_text())
        return dict(sorted(records.items(), key=lambda kv: int(kv[0])))

    def latest_number(self, namespace: str, name: str) -> int:
        """The newest number ever published (kept in ``latest``, so a collected one is never reused)."""
        marker = self._dir(namespace, name) / "latest"
        numbers = [int(v) for v in self.load(namespace, name)]
        if marker.exists():
            numbers.append(int(marker.read_text().strip() or 0))
        return max(numbers, default=0)

    def publish(self, namespace: str, name: str, record: dict[str, Any]) -> str:
        folder = self._dir(namespace, name)
        folder.mkdir(parents=True, exist_ok=True)
        number = str(self.latest_number(namespace, name) + 1)
        record = {**record, "version": number, "created": _now()}
        _write(folder / f"{number}.json", json.dumps(record, indent=1, sort_keys=True))
        _write(folder / "latest", number)
        return number

    def delete(self, namespace: str, name: str, version: str) -> None:
        (self._dir(namespace, name) / f"{version}.json").unlink(missing_ok=True)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def record_of(fn: Function, config: FunctionConfig, digest: str) -> dict[str, Any]:
    """What a version of ``fn`` keeps of its $LATEST ``config``."""
    return {
        "digest": digest,
        "codeSha256": config.code_sha256,
        "handler": config.handler,
        "runtime": config.runtime,
        "memoryMB": config.memory_mb,
        "timeoutSeconds": config.timeout_seconds,
        "codeDir": config.code_dir,
        "layerDirs": list(config.layer_dirs),
        "environment": dict(fn.spec.environment),
        "environmentFrom": [e.to_dict() for e in fn.spec.environment_from],
        "payloadFormat": config.http_format,
        "multiValueHeaders": config.http_multi_value,
    }


class LocalVersions:
    """Publishes, collects and routes the versions of local mode's functions."""

    def __init__(self, state_dir: Path, environment_from: Any) -> None:
        self.store = VersionStore(state_dir)
        #: ``environment_from(namespace, [EnvFrom], subject) -> dict``: resolves references.
        self.environment_from = environment_from

    def attach(
        self, fn: Function, latest: FunctionConfig, digest: str, routes: dict[str, Route] | None = None
    ) -> FunctionConfig:
        """Publish when ``publishVersions`` and $LATEST changed, collect what the retention lets go,
        and return ``latest`` carrying its versions and its aliases' routing (``routes``: routing in
        effect when a rollout overrides the declared one)."""
        ns, name, spec = fn.metadata.namespace, fn.name, fn.spec
        subject = f"Function {name}"
        records = self.store.load(ns, name)
        newest = records[max(records, key=int)]["digest"] if records else None
        if needs_publish(spec, digest, newest):
            number = self.store.publish(ns, name, record_of(fn, latest, digest))
            records = self.store.load(ns, name)
            print(f"lamina local: published {name} version {number}", flush=True)
        published = list(records)
        try:
            declared = declared_routes(spec, published)
        except MissingVersion as exc:
            raise ManifestError([f"{subject}: {exc}"]) from None
        effective = {**declared, **(routes or {})}
        named = spec.named_versions() | {v for r in effective.values() for v in r.versions()}
        _, collected = retained(published, spec.retain_versions, named)
        for version in collected:
            self.store.delete(ns, name, version)
            del records[version]
        wanted = plan(spec, effective)
        versions = {}
        for number, record in records.items():
            refs = [EnvFrom.model_validate(e) for e in record.get("environmentFrom") or []]
            env = {
                **record.get("environment", {}),
                **self.environment_from(ns, refs, f"{subject} version {number}"),
            }
            versions[number] = version_of(
                latest,
                record,
                code_dir=record["codeDir"],
                layer_dirs=list(record["layerDirs"]),
                environment=env,
                provisioned_concurrency=wanted.provisioned.get(number, 0),
                routed=number in wanted.routed,
            )
        latest.versions = versions
        latest.routes = effective
        return latest
