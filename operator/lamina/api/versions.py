"""Published versions and aliases: the pure rules shared by the operator, the gateway and local mode.

A version is an immutable snapshot of what an environment is made of (code digest, layers with their
revisions, runtime, handler, memory, timeout, environment, HTTP payload format). Its number is never
reused. :func:`version_digest` says whether ``$LATEST`` differs from the newest version (then
``publishVersions`` publishes the next one); :func:`retained` says which versions the retention
setting keeps; :func:`plan` says, from the aliases, where traffic goes and how many environments each
version keeps warm.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lamina.api.function import LATEST, LATEST_PUBLISHED, FunctionSpec

#: Fields of a Function's spec that a version snapshots (Lambda's "code and configuration", the
#: execution role included: ``serviceAccountName``). Aliases, concurrency, async settings, idle
#: keep-alive and the network policy are the function's, not a version's.
VERSIONED_FIELDS = (
    "runtime",
    "handler",
    "code",
    "memoryMB",
    "timeoutSeconds",
    "environment",
    "environmentFrom",
    "layers",
    "http",
    "serviceAccountName",
)


def versioned_config(spec: FunctionSpec) -> dict[str, Any]:
    """The part of ``spec`` a version snapshots, in wire form."""
    wire = spec.model_dump(mode="json", by_alias=True)
    return {k: wire[k] for k in VERSIONED_FIELDS}


def version_digest(spec: FunctionSpec, code_sha256: str, layer_digests: Iterable[str]) -> str:
    """Changes exactly when a new version would differ from the last one: the code's content, a layer's
    content, or a versioned setting."""
    doc = {"config": versioned_config(spec), "code": code_sha256, "layers": list(layer_digests)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def needs_publish(spec: FunctionSpec, digest: str, newest_digest: str | None) -> bool:
    return spec.publish_versions and digest != newest_digest


def retained(versions: Iterable[str], keep: int, named: set[str]) -> tuple[list[str], list[str]]:
    """(kept, collected): the ``keep`` newest versions and every version something names stay."""
    ordered = sorted(versions, key=int)
    newest = set(ordered[-keep:]) if keep > 0 else set()
    kept = [v for v in ordered if v in newest or v in named]
    return kept, [v for v in ordered if v not in kept]


class MissingVersion(ValueError):
    """An alias or a provisioned-concurrency setting names a version that is not published."""

    def __init__(self, field: str, version: str, published: Iterable[str]) -> None:
        shown = ", ".join(sorted(published, key=int)) or "none"
        super().__init__(f"{field}: version {version} does not exist (published: {shown})")
        self.field = field


@dataclass(frozen=True)
class Route:
    """Where an alias sends invocations: ``primary`` gets ``1 - weight``, ``additional`` gets ``weight``."""

    primary: str
    additional: str | None = None
    weight: float = 0.0

    def versions(self) -> list[str]:
        return [self.primary] + ([self.additional] if self.additional else [])

    def to_status(self) -> dict[str, Any]:
        weights = {self.additional: self.weight} if self.additional else {}
        return {"functionVersion": self.primary, "additionalVersionWeights": weights}

    @classmethod
    def from_status(cls, doc: Mapping[str, Any]) -> Route:
        weights = {k: v for k, v in (doc.get("additionalVersionWeights") or {}).items() if v is not None}
        extra = next(iter(weights.items()), None)
        if extra is None:
            return cls(str(doc["functionVersion"]))
        return cls(str(doc["functionVersion"]), str(extra[0]), float(extra[1]))


def resolve_target(target: str, published: list[str]) -> str | None:
    """A version an alias names, with ``$LATEST.PUBLISHED`` made the newest published number (None when
    nothing is published yet)."""
    if target == LATEST_PUBLISHED:
        return max(published, key=int) if published else None
    return target


def declared_routes(spec: FunctionSpec, published: list[str]) -> dict[str, Route]:
    """Each alias's routing as the spec declares it; raises :class:`MissingVersion` naming the field."""
    have = set(published)
    routes: dict[str, Route] = {}
    for name, alias in spec.aliases.items():
        primary = resolve_target(alias.function_version, published)
        where = f"spec.aliases.{name}.functionVersion"
        if primary is None:
            raise MissingVersion(where, alias.function_version, published)
        if primary != LATEST and primary not in have:
            raise MissingVersion(where, primary, published)
        extra = next(iter(alias.additional_version_weights.items()), None)
        if extra is not None and extra[0] not in have:
            raise MissingVersion(f"spec.aliases.{name}.additionalVersionWeights", extra[0], published)
        if extra is not None and extra[0] == primary:
            extra = None  # $LATEST.PUBLISHED caught up with the weighted version: one version left
        routes[name] = Route(primary, *extra) if extra is not None else Route(primary)
    for version in spec.provisioned_concurrency_by_version:
        if version not in have:
            raise MissingVersion("spec.provisionedConcurrencyByVersion", version, published)
    return routes


@dataclass
class VersionPlan:
    """Per version: environments kept initialised, and whether any alias sends traffic to it."""

    provisioned: dict[str, int] = field(default_factory=dict)
    routed: set[str] = field(default_factory=set)


def plan(spec: FunctionSpec, routes: Mapping[str, Route]) -> VersionPlan:
    """Split each alias's provisioned concurrency over its versions by weight (the additional version
    gets ``ceil(pc * weight)`` when its weight is above zero, so a canary never starts cold), and add the
    per-version settings."""
    out = VersionPlan()
    for name, route in routes.items():
        pc = spec.aliases[name].provisioned_concurrency if name in spec.aliases else 0
        out.routed.update(v for v in route.versions() if v != LATEST)
        if route.primary == LATEST:
            continue
        extra = math.ceil(pc * route.weight) if route.additional and route.weight > 0 else 0
        extra = min(extra, pc)
        out.provisioned[route.primary] = out.provisioned.get(route.primary, 0) + pc - extra
        if route.additional and extra:
            out.provisioned[route.additional] = out.provisioned.get(route.additional, 0) + extra
    for version, pc in spec.provisioned_concurrency_by_version.items():
        out.provisioned[version] = out.provisioned.get(version, 0) + pc
        if pc:
            out.routed.add(version)
    return out
