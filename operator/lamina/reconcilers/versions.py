"""A Function's published versions and aliases in a cluster (see :mod:`lamina.resources.versions` for
where a version lives and why).

Called by :func:`reconcile_function` after $LATEST's children are applied: publish when
``publishVersions`` and $LATEST differs from the newest version, resolve the aliases (an alias naming a
version that does not exist blocks the Function with the field), collect what the retention lets go
(never a version something names), and keep one Deployment per kept version at its provisioned
concurrency. Returns the status fields.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from lamina.api import Function, RolloutPolicy
from lamina.api.rollouts import Counts, Decision, advance
from lamina.api.versions import (
    MissingVersion,
    Route,
    declared_routes,
    needs_publish,
    plan,
    retained,
    version_digest,
)
from lamina.reconcilers.apply import apply_scaled_deployment
from lamina.reconcilers.client import ApiError, Ref
from lamina.reconcilers.context import Blocked, Context
from lamina.reconcilers.secrets import create_once, secret_values
from lamina.reconcilers.status import FIELD_MANAGER, BlockReason
from lamina.resources import LayerArtifact, labels, names
from lamina.resources.function import FunctionResources, S3Code, function_secret
from lamina.resources.versions import (
    read_snapshot,
    snapshot,
    summary,
    version_config_map,
    version_deployment,
    version_function,
)

log = logging.getLogger(__name__)
ALIAS_RETRY = 10.0


def _owned(obj: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])


def published(ctx: Context, fn: Function) -> dict[str, dict[str, Any]]:
    """Version number -> its ConfigMap, for the versions of this Function object (by owner uid)."""
    selector = f"{labels.FUNCTION}={fn.name},{labels.VERSION}"
    found = ctx.kube.list("v1", "ConfigMap", fn.metadata.namespace, label_selector=selector)
    uid = fn.metadata.uid or ""
    by_number = {cm["metadata"]["labels"][labels.VERSION]: cm for cm in found if _owned(cm, uid)}
    return dict(sorted(by_number.items(), key=lambda kv: int(kv[0])))


def _deploy_version(ctx: Context, fn: Function, config_map: Mapping[str, Any], provisioned: int) -> None:
    """A kept version's Deployment at its provisioned concurrency, after the Secret its pods read their
    invoke secret and execution credentials from (the same as $LATEST's unless the version runs as
    another ServiceAccount)."""
    values = secret_values(ctx.settings, version_function(fn, read_snapshot(config_map)))
    if values:
        create_once(ctx.kube, function_secret(fn, values))
    deployment = version_deployment(fn, config_map, ctx.settings, provisioned, secret_values=values)
    apply_scaled_deployment(ctx.kube, deployment, provisioned)


def reconcile_versions(
    ctx: Context,
    fn: Function,
    body: Mapping[str, Any],
    res: FunctionResources,
    layers: Sequence[LayerArtifact],
    code_config_map: Mapping[str, Any] | None,
    s3_code: S3Code | None,
) -> dict[str, Any]:
    """Publish, route (advancing rollouts), collect and deploy; returns the status fields."""
    kube, spec, ns = ctx.kube, fn.spec, fn.metadata.namespace
    status = body.get("status") or {}
    if not (spec.publish_versions or spec.aliases or spec.provisioned_concurrency_by_version) and not (
        status.get("latestVersion")
    ):
        return {}  # a function that never published: no reads spent on versions
    versions = published(ctx, fn)
    latest = max([int(status.get("latestVersion") or 0), *map(int, versions)])
    digest = version_digest(spec, res.code_digest, [a.digest for a in layers])
    newest = read_snapshot(versions[max(versions, key=int)])["digest"] if versions else None
    if needs_publish(spec, digest, newest):
        number = str(latest + 1)
        cm = version_config_map(
            fn, number, snapshot(fn, digest, res.code_digest, layers, s3_code), code_config_map
        )
        try:
            versions[number] = kube.create(cm, FIELD_MANAGER)
            latest += 1
            post_event(ctx, body, "Normal", "VersionPublished", f"published version {number}")
        except ApiError as e:
            if e.status != 409:
                raise
            versions = published(ctx, fn)  # another reconcile published it first
            latest = max([latest, *map(int, versions)])
    numbers = list(versions)
    try:
        declared = declared_routes(spec, numbers)
    except MissingVersion as exc:
        raise Blocked(BlockReason.ALIAS_VERSION_NOT_FOUND, str(exc), retry=ALIAS_RETRY) from None
    effective = dict(declared)
    alias_status: dict[str, Any] = {}
    for alias, route in declared.items():
        policy = spec.aliases[alias].rollout
        if policy is None:
            continue
        decision = _advance(ctx, fn, alias, policy, route, (status.get("aliases") or {}).get(alias))
        effective[alias] = decision.route
        alias_status[alias] = decision.status
        for kind, reason, message in decision.events:
            post_event(ctx, body, kind, reason, message)
        if decision.revisit is not None:
            ctx.revisit(("Function", ns, fn.name), decision.revisit)
    named = spec.named_versions() | {v for r in effective.values() for v in r.versions()}
    kept, collected = retained(numbers, spec.retain_versions, named)
    wanted = plan(spec, effective)
    for number in collected:
        kube.delete(Ref("apps/v1", "Deployment", ns, names.version_deployment(fn.name, number)))
        kube.delete(Ref("v1", "ConfigMap", ns, names.version_config_map(fn.name, number)))
        post_event(ctx, body, "Normal", "VersionCollected", f"deleted version {number} (retainVersions)")
    _delete_orphan_deployments(ctx, fn, set(kept))
    ctx.run_all(
        *((lambda n=n: _deploy_version(ctx, fn, versions[n], wanted.provisioned.get(n, 0))) for n in kept)
    )
    before = status.get("aliases") or {}
    aliases: dict[str, Any] = {}
    for name, route in effective.items():
        doc = dict(alias_status.get(name) or route.to_status())
        # A merge patch removes a key only when told to: a weight of a version no longer split to.
        old_weights = (before.get(name) or {}).get("additionalVersionWeights") or {}
        weights = dict(doc.get("additionalVersionWeights") or {})
        weights.update({v: None for v in old_weights if v not in weights})
        doc["additionalVersionWeights"] = weights
        aliases[name] = doc
    for gone in set(before) - set(aliases):
        aliases[gone] = None
    return {
        "latestVersion": latest or None,
        "versions": [summary(versions[n]) for n in kept],
        "aliases": aliases or None,
    }


def post_event(ctx: Context, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """A Kubernetes Event about the Function, written through the API directly: rollout steps happen
    in requeued reconciles, on a thread where kopf's event poster is not available."""
    meta = body["metadata"]
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": body.get("apiVersion", "lamina.dev/v1alpha1"),
            "kind": "Function",
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "type": type_,
        "reason": reason,
        "message": message,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "source": {"component": "lamina-operator"},
        "reportingComponent": "lamina-operator",
    }
    try:
        ctx.kube.create(event, FIELD_MANAGER)
    except ApiError as exc:  # an Event is a courtesy: the status carries the same
        log.warning(
            "cannot post Event %s for %s/%s: %s", reason, meta["namespace"], meta["name"], exc.message
        )


def _advance(
    ctx: Context, fn: Function, alias: str, policy: RolloutPolicy, declared: Route, prior: Any
) -> Decision:
    """One step of an alias's rollout state machine, judged on the gateways' counts (read only
    while a rollout may move: one that starts, or one that is progressing)."""
    now = time.time()
    rollout = (prior or {}).get("rollout") or {}
    moving = (prior or {}).get("functionVersion") not in (None, declared.primary) or rollout.get(
        "phase"
    ) == "Progressing"
    window = ctx.sample_versions(now) if moving else None
    ns, name = fn.metadata.namespace, fn.name

    def counts(version: str, seconds: float, since: float) -> Counts:
        return window.counts((ns, name, version), now, seconds, since) if window is not None else Counts()

    return advance(alias, policy, declared.primary, prior, now, counts)


def _delete_orphan_deployments(ctx: Context, fn: Function, kept: set[str]) -> None:
    """Deployments of versions that are no longer kept (their ConfigMap went first, or by hand)."""
    selector = f"{labels.FUNCTION}={fn.name},{labels.VERSION}"
    uid = fn.metadata.uid or ""
    for dep in ctx.kube.list("apps/v1", "Deployment", fn.metadata.namespace, label_selector=selector):
        number = dep["metadata"]["labels"].get(labels.VERSION)
        if number not in kept and _owned(dep, uid):
            ctx.kube.delete(Ref.of(dep))
