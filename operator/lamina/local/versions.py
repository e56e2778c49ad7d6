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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lamina.api import EnvFrom, Function, FunctionSpec, ManifestError
from lamina.api.rollouts import Counts, advance
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

    def alias_statuses(self, namespace: str, name: str) -> dict[str, Any]:
        """Each alias's routing in effect (and its rollout) as last run, the status of local mode."""
        path = self._dir(namespace, name) / "aliases.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def save_alias_statuses(self, namespace: str, name: str, statuses: dict[str, Any]) -> None:
        folder = self._dir(namespace, name)
        folder.mkdir(parents=True, exist_ok=True)
        _write(folder / "aliases.json", json.dumps(statuses, indent=1, sort_keys=True))


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
        effective = self.route_aliases(fn, declared, time.time(), lambda v, w, since: Counts())
        named = spec.named_versions() | {v for r in effective.values() for v in r.versions()}
        _, collected = retained(published, spec.retain_versions, named)
        for version in collected:
            self.store.delete(ns, name, version)
            del records[version]
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
            )
        latest.versions = versions
        apply_routes(latest, spec, effective)
        return latest

    def route_aliases(
        self,
        fn: Function,
        declared: dict[str, Route],
        now: float,
        counts: Callable[[str, float, float], Counts],
    ) -> dict[str, Route]:
        """Each alias's routing in effect; aliases with a rollout advance their state machine (the
        state is kept in the state directory). Events are printed."""
        ns, name = fn.metadata.namespace, fn.name
        prior = self.store.alias_statuses(ns, name)
        statuses, effective = {}, {}
        for alias, route in declared.items():
            policy = fn.spec.aliases[alias].rollout
            if policy is None:
                effective[alias], statuses[alias] = route, route.to_status()
                continue
            decision = advance(alias, policy, route.primary, prior.get(alias), now, counts)
            effective[alias], statuses[alias] = decision.route, decision.status
            for kind, reason, message in decision.events:
                print(f"lamina local: {name}: {kind} {reason}: {message}", flush=True)
        if statuses != prior:
            self.store.save_alias_statuses(ns, name, statuses)
        return effective


def apply_routes(latest: FunctionConfig, spec: FunctionSpec, routes: dict[str, Route]) -> None:
    """Set the aliases' routing on ``latest`` and, from it, each version's provisioned environments
    and whether anything routes to it."""
    wanted = plan(spec, routes)
    latest.routes = routes
    for number, config in latest.versions.items():
        config.provisioned_concurrency = wanted.provisioned.get(number, 0)
        config.routed = number in wanted.routed
