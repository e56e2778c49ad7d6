"""EventSourceMapping reconciler: run (or pause) the mapping's worker and report its state.

The worker writes its own half of the status (``lastProcessingResult``, ``iteratorAgeMs``, fire
times, and ``state`` while it runs) through the ServiceAccount applied here; the operator keeps
``conditions``, ``observedGeneration``, ``source`` and the lifecycle states (Creating, Updating,
Disabled).
"""

from __future__ import annotations

from typing import Any

from lamina.api import API_VERSION, EventSourceMapping
from lamina.reconcilers.apply import apply
from lamina.reconcilers.client import ApiError, Ref
from lamina.reconcilers.context import Blocked, Context, parse_as
from lamina.reconcilers.secrets import create_once
from lamina.reconcilers.status import READY, BlockReason, is_blocked, set_condition, write_status
from lamina.reconcilers.watch_access import check_watch_access
from lamina.resources import build_mapping, build_mapping_identity, names, worker_state
from lamina.resources.eventsourcemapping import mapping_secret

POLL_DELAY = 10.0
#: States only the running worker can tell apart; the operator, seeing a ready pod, would say Enabled.
WORKER_STATES = frozenset({"Enabling", "Enabled"})


def mapping_ref(namespace: str, name: str) -> Ref:
    return Ref(API_VERSION, "EventSourceMapping", namespace, name)


def worker_ref(namespace: str, name: str) -> Ref:
    return Ref("apps/v1", "Deployment", namespace, names.mapping_deployment(name))


def _fields(
    ctx: Context, obj: dict[str, Any], generation: int | None, blocked: Blocked | None
) -> dict[str, Any]:
    meta, spec = obj["metadata"], obj.get("spec") or {}
    enabled = spec.get("enabled", True)
    conditions = (obj.get("status") or {}).get("conditions")
    reason: str
    if blocked is not None:
        ready, reason, message, state = False, blocked.reason, blocked.message, "Creating"
    else:
        ws = worker_state(ctx.kube.get(worker_ref(meta["namespace"], meta["name"])), enabled)
        ready, reason, message, state = ws.ready, ws.reason, ws.message, ws.state
        reported = (obj.get("status") or {}).get("state")
        if state == "Enabled" and reported in WORKER_STATES:
            state = reported  # a running worker still connecting to its broker says Enabling
    fields: dict[str, Any] = {
        "state": state,
        "conditions": set_condition(conditions, READY, ready, reason, message, generation),
    }
    if generation is not None:
        fields["observedGeneration"] = generation
    return fields


def reconcile_mapping(ctx: Context, body: dict[str, Any]) -> dict[str, Any] | None:
    meta = body["metadata"]
    ns, name, generation = meta["namespace"], meta["name"], meta.get("generation")
    if meta.get("deletionTimestamp"):
        return None
    ref = mapping_ref(ns, name)
    blocked: Blocked | None = None
    source = None
    try:
        esm = parse_as(body, EventSourceMapping)
        source = esm.spec.source.describe()
        fn = esm.function
        if ctx.kube.get(Ref(API_VERSION, "Function", ns, fn)) is None:
            raise Blocked(
                BlockReason.FUNCTION_NOT_FOUND, f"Function {fn} does not exist in namespace {ns}", POLL_DELAY
            )
        # Kubernetes sources only; with auth on, their worker invokes as the account they name.
        check_watch_access(ctx.kube, esm, POLL_DELAY, invoke=ctx.settings.auth_key is not None)
        for identity in build_mapping_identity(esm):  # before the pod that uses it
            # The operator may create Secrets but neither read nor patch them: the account's
            # token Secret is created once (the API server fills it in).
            (create_once if identity["kind"] == "Secret" else apply)(ctx.kube, identity)
        secret = mapping_secret(esm, ctx.settings)
        if secret is not None:
            create_once(ctx.kube, secret)
        apply(ctx.kube, build_mapping(esm, ctx.settings))
    except Blocked as b:
        blocked = b
    except ApiError as e:
        blocked = Blocked(
            BlockReason.APPLY_FAILED, f"the API server refused the worker: {e.message}", POLL_DELAY
        )

    def compute(obj: dict[str, Any]) -> dict[str, Any] | None:
        if obj["metadata"].get("generation") != generation:
            return None
        fields = _fields(ctx, obj, generation, blocked)
        if source is not None:
            fields["source"] = source
        return fields

    written = write_status(ctx.kube, ref, compute)
    if written is not None:
        ctx.announce(body, *written)
    if blocked is not None:
        raise blocked
    return written[1] if written else None


def sync_mapping_status(ctx: Context, namespace: str, name: str) -> None:
    """Refresh state and Ready from the worker Deployment (unless the reconcile is blocked)."""
    seen: dict[str, Any] = {}

    def compute(obj: dict[str, Any]) -> dict[str, Any] | None:
        seen["obj"] = obj
        generation = obj["metadata"].get("generation")
        if (obj.get("status") or {}).get("observedGeneration") != generation or is_blocked(obj):
            return None
        return _fields(ctx, obj, generation, None)

    written = write_status(ctx.kube, mapping_ref(namespace, name), compute)
    if written is not None:
        ctx.announce(seen["obj"], *written)
