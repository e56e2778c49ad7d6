"""Function reconciler: check what the function depends on, apply its children, report readiness.

``reconcile_function`` is the whole level-based reconcile; it is called by the kopf handlers of the
Function itself, by the Layer handlers (a layer a function uses changed) and by the periodic resync.
``sync_function_status`` only refreshes readiness from the Deployment and the problems of the function's
pods (called on Deployment events, and when what the pods say changes).
"""

from __future__ import annotations

import logging
from typing import Any

from lamina.api import API_VERSION, Function
from lamina.api.common import GROUP, VERSION
from lamina.invocation.reservations import Reservation, refused_reservations
from lamina.reconcilers.apply import apply, apply_scaled_deployment, delete_if_owned
from lamina.reconcilers.client import ApiError, KubeApi, Ref
from lamina.reconcilers.context import Blocked, Context, parse_as
from lamina.reconcilers.pool import namespace_pool_size, reconcile_pools
from lamina.reconcilers.s3code import resolve_code
from lamina.reconcilers.secrets import create_once, secret_values
from lamina.reconcilers.status import (
    READY,
    BlockReason,
    find,
    is_blocked,
    is_ready,
    set_condition,
    write_status,
)
from lamina.reconcilers.versions import reconcile_versions
from lamina.resources import LayerArtifact, build_function, deployment_readiness, labels, names
from lamina.resources.function import Readiness
from lamina.resources.pool import cold_start_path

log = logging.getLogger(__name__)

#: Retry delays (seconds): dependencies that nothing watches are polled; layers also trigger us.
POLL_DELAY = 10.0
LAYER_DELAY = 60.0


def function_ref(namespace: str, name: str) -> Ref:
    return Ref(API_VERSION, "Function", namespace, name)


def deployment_ref(namespace: str, function: str) -> Ref:
    return Ref("apps/v1", "Deployment", namespace, names.function_deployment(function))


# ------------------------------------------------------------------------------------ dependencies


def resolve_layers(kube: KubeApi, fn: Function) -> list[LayerArtifact]:
    artifacts = []
    ns = fn.metadata.namespace
    for name in fn.spec.layers:
        layer = kube.get(Ref(API_VERSION, "Layer", ns, name))
        if layer is None:
            raise Blocked(
                BlockReason.LAYER_NOT_FOUND,
                f"Layer {name} does not exist in namespace {ns}",
                retry=LAYER_DELAY,
            )
        status = layer.get("status") or {}
        runtimes = (layer.get("spec") or {}).get("compatibleRuntimes") or []
        if runtimes and fn.spec.runtime not in runtimes:
            raise Blocked(
                BlockReason.LAYER_INCOMPATIBLE,
                f"Layer {name} supports {', '.join(runtimes)}, not {fn.spec.runtime}",
                retry=LAYER_DELAY,
            )
        if not is_ready(status) or not status.get("artifact"):
            cond = find(status.get("conditions"), READY)
            why = f" ({cond.get('reason')}: {cond.get('message', '')})" if cond else ""
            raise Blocked(BlockReason.LAYER_NOT_READY, f"Layer {name} is not ready{why}", retry=LAYER_DELAY)
        artifacts.append(LayerArtifact.from_status(name, status))
    return artifacts


def check_references(kube: KubeApi, fn: Function) -> dict[str, Any] | None:
    """Check the Secrets / ConfigMaps the function reads; return its code ConfigMap, if any.

    A Secret is only checked to exist, by its metadata (the operator never reads a Secret's data; the
    kubelet resolves the value, and a missing key shows on the pods as CreateContainerConfigError).
    Where the operator may not even do that (it watches the whole cluster: no Secret access at all),
    the check is left to the kubelet too."""
    ns = fn.metadata.namespace
    for ref in fn.spec.environment_from:
        if ref.secret_key_ref is not None:
            name = ref.secret_key_ref.name
            try:
                found = kube.get_metadata(Ref("v1", "Secret", ns, name))
            except ApiError as e:
                if e.status == 403:
                    continue
                raise
            if found is None:
                raise Blocked(
                    BlockReason.SECRET_NOT_FOUND,
                    f"Secret {name} (for {ref.name}) does not exist",
                    retry=POLL_DELAY,
                )
            continue
        assert ref.config_map_key_ref is not None
        key_ref = ref.config_map_key_ref
        obj = kube.get(Ref("v1", "ConfigMap", ns, key_ref.name))
        if obj is None:
            raise Blocked(
                BlockReason.CONFIG_MAP_NOT_FOUND,
                f"ConfigMap {key_ref.name} (for {ref.name}) does not exist",
                retry=POLL_DELAY,
            )
        if key_ref.key not in (obj.get("data") or {}) and key_ref.key not in (obj.get("binaryData") or {}):
            raise Blocked(
                BlockReason.CONFIG_MAP_NOT_FOUND,
                f"ConfigMap {key_ref.name} has no key {key_ref.key} (for {ref.name})",
                retry=POLL_DELAY,
            )
    code = fn.spec.code.config_map
    if code is None:
        return None
    cm = kube.get(Ref("v1", "ConfigMap", ns, code.name))
    if cm is None:
        raise Blocked(
            BlockReason.CONFIG_MAP_NOT_FOUND,
            f"ConfigMap {code.name} (the code) does not exist",
            retry=POLL_DELAY,
        )
    return cm


def watched_functions(ctx: Context) -> list[dict[str, Any]]:
    """Every Function the installation serves: those of the watched namespaces, or of the whole
    cluster. An operator that watches the whole cluster lists its Functions as kopf watches them (the
    chart binds it cluster-wide then): a refused list is an error, never a fallback to one namespace,
    whose Functions alone would under-count the reservations and grant one that overdraws the pool."""
    api = f"{GROUP}/{VERSION}"
    if ctx.namespaces:
        return [obj for one in ctx.namespaces for obj in ctx.kube.list(api, "Function", namespace=one)]
    return list(ctx.kube.list(api, "Function"))


def reservation_fields(ctx: Context, fn: Function, key: str) -> dict[str, Any]:
    """``reservation`` (Granted / Refused) and why, for a Function with reserved concurrency: the
    gateway serves a refused one as unreserved (lamina.invocation.reservations decides for both)."""
    if fn.spec.reserved_concurrency is None:
        return {"reservation": None, "reservationReason": None}
    functions = watched_functions(ctx)
    asked = []
    for obj in functions:
        meta, amount = obj["metadata"], (obj.get("spec") or {}).get("reservedConcurrency")
        if amount is not None:
            asked.append(
                Reservation(f"{meta['namespace']}/{meta['name']}", meta.get("creationTimestamp", ""), amount)
            )
    settings = ctx.settings
    refused = refused_reservations(asked, settings.concurrency_limit, settings.min_unreserved)
    if key in refused:
        return {"reservation": "Refused", "reservationReason": refused[key]}
    reason = f"{fn.spec.reserved_concurrency} of the account's {settings.concurrency_limit} reserved"
    return {"reservation": "Granted", "reservationReason": reason}


# ----------------------------------------------------------------------------------------- reconcile


def reconcile_function(ctx: Context, body: dict[str, Any]) -> dict[str, Any] | None:
    """Make the cluster match one Function and return its new status; raise :class:`Blocked` when
    it cannot (after writing Ready=False with the reason)."""
    meta = body["metadata"]
    ns, name, generation = meta["namespace"], meta["name"], meta.get("generation")
    if meta.get("deletionTimestamp"):
        return None
    kube = ctx.kube
    # Deployment events from here on may carry state newer than what this reconcile applies and
    # reports; while it runs, sync_function_status leaves the status to it, so it re-syncs after.
    events_seen = ctx.child_events((ns, name))
    try:
        try:
            fn = parse_as(body, Function)
            layers = resolve_layers(kube, fn)
            code_cm = check_references(kube, fn)
            s3_code = resolve_code(kube, fn, (body.get("status") or {}).get("codeS3"))
            if s3_code is not None:  # uploads are not watched: look at the object again
                ctx.revisit(("Function", ns, name), ctx.settings.s3_poll_seconds)
            res = build_function(
                fn,
                ctx.settings,
                layers,
                code_cm,
                s3_code=s3_code,
                secret_values=secret_values(ctx.settings, fn),
            )
            if res.secret is not None:
                create_once(kube, res.secret)
            code_ref = Ref("v1", "ConfigMap", ns, names.function_code_config_map(name))
            code_cm_desired = res.code_config_map

            def code() -> Any:
                if code_cm_desired is not None:
                    return apply(kube, code_cm_desired)
                return delete_if_owned(kube, code_ref, meta["uid"])

            pools = namespace_pool_size(ctx, ns)
            policy = res.network_policy

            def isolate() -> Any:
                return apply(kube, policy) if policy is not None else None

            # The children do not depend on each other: apply them side by side (the namespace's
            # warm pools too: this function may be the first or the last of its size).
            _, _, _, deployment, _ = ctx.run_all(
                code,
                isolate,
                lambda: apply(kube, res.service),
                lambda: apply_scaled_deployment(kube, res.deployment, fn.spec.provisioned_concurrency),
                lambda: reconcile_pools(ctx, ns, pools),
            )
            version_fields = reconcile_versions(ctx, fn, body, res, layers, code_cm, s3_code)
        except ApiError as e:
            raise Blocked(
                BlockReason.APPLY_FAILED, f"the API server refused a child: {e.message}", retry=POLL_DELAY
            ) from e
    except Blocked as blocked:
        written = write_function_status(ctx, ns, name, generation, blocked=blocked, first=body)
        if written is not None:
            ctx.announce(body, *written)
        raise
    path = cold_start_path(fn, ctx.settings, pools)
    fields = {
        **version_fields,
        **reservation_fields(ctx, fn, f"{ns}/{name}"),
        "coldStartPath": path.path,
        "coldStartPathReason": path.reason,
        "codeS3": s3_code.to_status(fn.spec.code.s3) if s3_code and fn.spec.code.s3 else None,
        "layerRevisions": {a.name: a.revision for a in layers},
        "codeDigest": res.code_digest,
        "url": f"{ctx.settings.gateway_url}/url/{ns}.{name}",
    }
    written = write_function_status(
        ctx, ns, name, generation, fields=fields, first=body, deployment=deployment
    )
    if ctx.child_events((ns, name)) != events_seen:
        sync_function_status(ctx, ns, name)
    if _unobserved(deployment):
        # The Deployment controller's first look at this spec reaches the status through a
        # Deployment event; one that never came (twice in three CI runs of the real-pod tier) left the
        # Function Ready=False "Deploying" until the next resync, 10 minutes later. Look again soon,
        # for as long as that is what it waits on: level-triggered, whatever the watch delivered.
        ctx.revisit(("Function", ns, name), DEPLOYING_RECHECK_SECONDS)
    if written is None:
        return None
    ctx.announce(body, *written)
    return written[1]


#: How soon a Function whose Deployment the controller has not yet observed is reconciled again.
DEPLOYING_RECHECK_SECONDS = 2.0


def _unobserved(deployment: dict[str, Any] | None) -> bool:
    if deployment is None:
        return False
    generation = (deployment.get("metadata") or {}).get("generation") or 0
    return bool(((deployment.get("status") or {}).get("observedGeneration") or 0) < generation)


def _readiness_fields(
    obj: dict[str, Any], readiness: Readiness, blocked: Blocked | None, generation: int | None
) -> dict[str, Any]:
    status = obj.get("status") or {}
    fields: dict[str, Any] = {
        "readyEnvironments": readiness.ready_environments,
        "desiredEnvironments": readiness.desired_environments,
    }
    reason: str
    if blocked is not None:
        ready, reason, message = False, blocked.reason, blocked.message
    else:
        ready, reason, message = readiness.ready, readiness.reason, readiness.message
    fields["conditions"] = set_condition(status.get("conditions"), READY, ready, reason, message, generation)
    if generation is not None:
        fields["observedGeneration"] = generation
    return fields


def _deployments(ctx: Context, namespace: str, name: str, first: dict[str, Any] | None) -> Any:
    """The Deployment for a status write: ``first`` (as a watch event or an apply delivered it) for
    the first attempt, else a fresh read made after the Function was read. Either may be older than
    the newest state, but then a newer event follows: handled by sync_function_status, or, while
    the current generation is not yet reported, by the re-sync that ends its reconcile."""
    pending = [first] if first is not None else []

    def current() -> dict[str, Any] | None:
        return pending.pop() if pending else ctx.kube.get(deployment_ref(namespace, name))

    return current


def write_function_status(
    ctx: Context,
    namespace: str,
    name: str,
    generation: int | None,
    fields: dict[str, Any] | None = None,
    blocked: Blocked | None = None,
    first: dict[str, Any] | None = None,
    deployment: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Write the outcome of reconciling ``generation``, with readiness from the Deployment.

    ``first`` (the Function as the handler got it) and ``deployment`` (as the apply returned it)
    save two reads when they are still current; after a conflict both are read afresh."""
    current_deployment = _deployments(ctx, namespace, name, deployment)
    seen: dict[str, Any] = {}

    def compute(obj: dict[str, Any]) -> dict[str, Any] | None:
        seen.clear()
        if obj["metadata"].get("generation") != generation:
            return None  # the spec moved on; the reconcile of the new generation writes
        readiness = deployment_readiness(
            current_deployment(), _provisioned(obj), ctx.pod_problem((namespace, name))
        )
        seen["readiness"] = readiness
        return {**(fields or {}), **_readiness_fields(obj, readiness, blocked, generation)}

    written = write_status(ctx.kube, function_ref(namespace, name), compute, first=first)
    _remember_written(ctx, (namespace, name), written, seen)
    return written


def _remember_written(ctx: Context, key: tuple[str, str], written: Any, seen: dict[str, Any]) -> None:
    """Remember the readiness the Function's status now carries, and only that one: the Deployment
    watcher skips events whose readiness equals it, so a readiness that was computed but never
    written (the write failed, or it was not this generation's to write) must not count as written,
    or the event that would have written it is skipped and the Function stays as it was."""
    if written is not None and "readiness" in seen:
        ctx.remember_readiness(key, seen["readiness"])


def _provisioned(obj: dict[str, Any]) -> int:
    return int((obj.get("spec") or {}).get("provisionedConcurrency") or 0)


def sync_function_status(
    ctx: Context, namespace: str, name: str, deployment: dict[str, Any] | None = None
) -> None:
    """Refresh readiness from the Deployment (``deployment``: as a watch event delivered it).

    Nothing is written before the current generation was reconciled: that reconcile writes the
    whole status and re-syncs if Deployment events came meanwhile (writing here would only make
    its write conflict). While a reconcile is blocked, only the counts are refreshed."""
    if deployment is not None:
        # Most Deployment events change nothing the Function reports: skip reading the Function.
        annotations = deployment["metadata"].get("annotations") or {}
        provisioned = int(annotations.get(labels.PROVISIONED, "0") or 0)
        problem = ctx.pod_problem((namespace, name))
        if ctx.readiness_unchanged((namespace, name), deployment_readiness(deployment, provisioned, problem)):
            return
    current_deployment = _deployments(ctx, namespace, name, deployment)
    seen: dict[str, Any] = {}

    def compute(obj: dict[str, Any]) -> dict[str, Any] | None:
        seen.clear()
        seen["obj"] = obj
        readiness = deployment_readiness(
            current_deployment(), _provisioned(obj), ctx.pod_problem((namespace, name))
        )
        generation = obj["metadata"].get("generation")
        if (obj.get("status") or {}).get("observedGeneration") != generation:
            return None
        seen["readiness"] = readiness
        if not is_blocked(obj):
            return _readiness_fields(obj, readiness, None, generation)
        return {
            "readyEnvironments": readiness.ready_environments,
            "desiredEnvironments": readiness.desired_environments,
        }

    written = write_status(ctx.kube, function_ref(namespace, name), compute)
    _remember_written(ctx, (namespace, name), written, seen)
    if written is not None:
        ctx.announce(seen["obj"], *written)
