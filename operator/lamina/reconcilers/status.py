"""Status hygiene shared by every kind: the Ready condition, observedGeneration, and one way to write.

Two kinds of writers touch a status: the reconcile of the object itself and the watchers of its
children (a Deployment's ready replicas). Both go through :func:`write_status`, which reads the object,
computes the new status from what it read, and writes it with the read ``resourceVersion`` as a
precondition, retrying on conflict. So a writer never puts back a status computed from an older view
than the last write, whatever order the threads run in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ValidationError

from lamina.api import Condition, EventSourceMappingStatus, FunctionStatus, LayerStatus
from lamina.api.common import StatusBase
from lamina.reconcilers.client import Conflict, KubeApi, Ref

log = logging.getLogger(__name__)

FIELD_MANAGER = "lamina-operator"
READY = "Ready"


class BlockReason(StrEnum):
    """Why a reconcile stops: the object's Ready=False reason, a Warning Event, and the label of the
    blocked-objects metric. While one of them stands, the Deployment watcher does not flip Ready."""

    #: The spec breaks a rule the CRD cannot express; only an edit helps.
    INVALID_SPEC = "InvalidSpec"
    #: A Layer the Function names does not exist / is not ready / does not support its runtime.
    LAYER_NOT_FOUND = "LayerNotFound"
    LAYER_NOT_READY = "LayerNotReady"
    LAYER_INCOMPATIBLE = "LayerIncompatible"
    #: A Secret or ConfigMap (or a key of it) the object reads does not exist.
    SECRET_NOT_FOUND = "SecretNotFound"
    CONFIG_MAP_NOT_FOUND = "ConfigMapNotFound"
    #: The Function an EventSourceMapping invokes does not exist.
    FUNCTION_NOT_FOUND = "FunctionNotFound"
    #: A Kubernetes source's ServiceAccount does not exist, or may not list and watch what it names,
    #: or invoke the functions its worker calls (with authentication on), or the API server serves no
    #: such kind (lamina grants the account nothing).
    SERVICE_ACCOUNT_NOT_FOUND = "ServiceAccountNotFound"
    SERVICE_ACCOUNT_CANNOT_WATCH = "ServiceAccountCannotWatch"
    SERVICE_ACCOUNT_CANNOT_INVOKE = "ServiceAccountCannotInvoke"
    KIND_NOT_FOUND = "KindNotFound"
    #: The object asks for something lamina does not do yet (e.g. a requirements Layer).
    NOT_SUPPORTED_YET = "NotSupportedYet"
    #: The API server refused a child object; its message says why.
    APPLY_FAILED = "ApplyFailed"
    #: The code or a layer in S3-compatible storage cannot be read (bucket and key named).
    S3_OBJECT_UNREADABLE = "S3ObjectUnreadable"
    #: An alias (or provisionedConcurrencyByVersion) names a version that is not published.
    ALIAS_VERSION_NOT_FOUND = "AliasVersionNotFound"


#: The Ready reasons that mean "blocked" (derived from :class:`BlockReason`, so never out of step).
BLOCKING_REASONS = frozenset(reason.value for reason in BlockReason)


class StatusFieldError(ValueError):
    """A reconciler wrote a status key its kind's status model does not have: the API server would
    drop it without a word, so it is refused here (every test that reaches the write fails)."""


#: The status model of each kind lamina writes status for (what the CRD's status schema is made of).
STATUS_MODELS: dict[str, type[StatusBase]] = {
    "Function": FunctionStatus,
    "Layer": LayerStatus,
    "EventSourceMapping": EventSourceMappingStatus,
}


def _aliases(model: type[BaseModel]) -> set[str]:
    return {f.alias or name for name, f in model.model_fields.items()}


def _without_nulls(fields: Mapping[str, Any]) -> dict[str, Any]:
    """``fields`` without the nulls a merge patch uses to delete keys, at any depth of objects."""
    return {k: _without_nulls(v) if isinstance(v, Mapping) else v for k, v in fields.items() if v is not None}


def check_status(kind: str, fields: Mapping[str, Any]) -> None:
    """Refuse ``fields`` unless each key (and each key of each condition) is a field of ``kind``'s
    status model and each value passes the model's validation (types, ranges). ``None`` is allowed
    at any depth (a merge patch deletes the key with it)."""
    model = STATUS_MODELS[kind]
    unknown = sorted(set(fields) - _aliases(model))
    if unknown:
        raise StatusFieldError(
            f"{kind} status has no field {', '.join(unknown)} (fields: {', '.join(sorted(_aliases(model)))})"
        )
    for condition in fields.get("conditions") or []:
        extra = sorted(set(condition) - _aliases(Condition))
        if extra:
            raise StatusFieldError(f"{kind} status condition has no field {', '.join(extra)}")
    try:
        model.model_validate(_without_nulls(fields))
    except ValidationError as e:
        raise StatusFieldError(f"{kind} status is not valid: {e}") from None


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def find(conditions: list[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def set_condition(
    conditions: list[Mapping[str, Any]] | None,
    type_: str,
    status: bool | str,
    reason: str,
    message: str,
    generation: int | None,
    timestamp: str | None = None,
) -> list[dict[str, Any]]:
    """``conditions`` with ``type_`` set; lastTransitionTime moves only when the status flips."""
    value = status if isinstance(status, str) else ("True" if status else "False")
    previous = find(conditions, type_)
    changed = previous is None or previous.get("status") != value
    condition: dict[str, Any] = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": (timestamp or now())
        if previous is None or changed or not previous.get("lastTransitionTime")
        else previous["lastTransitionTime"],
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    others = [dict(c) for c in conditions or [] if c.get("type") != type_]
    return [*others, condition]


def ready_reason(status: Mapping[str, Any] | None) -> str | None:
    cond = find((status or {}).get("conditions"), READY)
    return cond.get("reason") if cond else None


def is_ready(status: Mapping[str, Any] | None) -> bool:
    cond = find((status or {}).get("conditions"), READY)
    return cond is not None and cond.get("status") == "True"


def is_blocked(obj: Mapping[str, Any]) -> bool:
    """Whether the last reconcile of the current generation stopped at a blocking reason."""
    status = obj.get("status") or {}
    current = status.get("observedGeneration") == (obj.get("metadata") or {}).get("generation")
    return current and ready_reason(status) in BLOCKING_REASONS


def differs(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether writing ``new`` would change ``old`` (keys of ``new`` only)."""
    old = old or {}
    return any(old.get(k) != v for k, v in new.items())


Compute = Callable[[dict[str, Any]], "dict[str, Any] | None"]


def write_status(
    kube: KubeApi, ref: Ref, compute: Compute, attempts: int = 10, first: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Read ``ref``, let ``compute(obj)`` return the status fields to set (None: nothing to do), and
    write them with a resourceVersion precondition; on conflict start over from a fresh read.

    ``first`` (the object as the handler received it) replaces the first read: when it is stale the
    precondition fails and the loop reads afresh, so it only saves a round trip. A stale copy is
    never trusted to say "nothing to change" either; that answer always comes from a fresh read.

    Returns (status before, status after) of the write that happened (equal when nothing changed),
    or None if the object is gone or kept changing.
    """
    cached = first
    for _ in range(attempts):
        obj = cached if cached is not None else kube.get(ref)
        from_cache, cached = cached is not None, None
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return None
        fields = compute(obj)
        current = obj.get("status") or {}
        if fields is None or not differs(current, fields):
            if from_cache:
                continue  # confirm on a fresh read
            return current, current
        check_status(ref.kind, fields)
        patch = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]}, "status": fields}
        try:
            written = kube.merge_patch(ref, patch, FIELD_MANAGER, subresource="status")
        except Conflict:
            continue
        return current, written.get("status") or {}
    log.warning("%s: status kept changing under %d attempts; leaving it to the next event", ref, attempts)
    return None
