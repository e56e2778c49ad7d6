"""One entry point for every reconcile, whoever triggers it (a kopf handler, a dependency that
changed, the requeue, the resync): blocked objects are requeued, reconciled ones forgotten."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from typing import Any, cast

from lamina.api import API_VERSION
from lamina.reconcilers.client import ApiError, Ref
from lamina.reconcilers.context import Blocked, Context
from lamina.reconcilers.eventsourcemapping import reconcile_mapping
from lamina.reconcilers.function import reconcile_function
from lamina.reconcilers.layer import reconcile_layer

log = logging.getLogger(__name__)

RECONCILERS: dict[str, Callable[[Context, dict[str, Any]], Any]] = {
    "Layer": reconcile_layer,
    "Function": reconcile_function,
    "EventSourceMapping": reconcile_mapping,
}


def key_of(body: dict[str, Any]) -> tuple[str, str, str]:
    meta = body["metadata"]
    return (body["kind"], meta["namespace"], meta["name"])


def reconcile(ctx: Context, body: dict[str, Any]) -> Any:
    """Reconcile ``body`` (a plain dict); returns the reconciler's result, or None when blocked
    (the reason is in the object's status, and a retry is scheduled if waiting can help)."""
    key = key_of(body)
    metrics = ctx.metrics
    started = time.perf_counter()
    try:
        result = RECONCILERS[key[0]](ctx, body)
    except Blocked as b:
        log.info("%s %s/%s: %s: %s", *key, b.reason, b.message)
        metrics.reconciles.labels(key[0], "blocked").inc()
        metrics.blocked.block(key, key[0], b.reason)
        if b.retry is not None and ctx.requeue is not None:
            ctx.requeue.add(key, b.retry)
        elif ctx.requeue is not None:
            ctx.requeue.reset(key)  # only a change of the object can help; a pending look stays
        return None
    except Exception:
        metrics.reconciles.labels(key[0], "error").inc()
        raise
    finally:
        metrics.reconcile_seconds.labels(key[0]).observe(time.perf_counter() - started)
    metrics.reconciles.labels(key[0], "reconciled").inc()
    metrics.blocked.clear(key)
    if ctx.requeue is not None:
        # Not forget(): a reconcile of the same key running beside this one may have scheduled its
        # look again (say, at a Deployment not yet observed), and dropping it would leave that
        # Function's status stale until something else happens to it.
        ctx.requeue.reset(key)
        later = ctx.take_revisit(key)
        if later is not None:  # e.g. a rollout's next step
            ctx.requeue.add(key, later)
    return result


def reconcile_named(ctx: Context, kind: str, namespace: str, name: str) -> Any:
    """Read the object and reconcile it (nothing if it is gone or going)."""
    try:
        body = ctx.kube.get(Ref(API_VERSION, kind, namespace, name))
    except ApiError as e:
        log.warning("%s %s/%s: cannot read: %s", kind, namespace, name, e)
        if ctx.requeue is not None:
            ctx.requeue.add((kind, namespace, name), 5.0)
        return None
    if body is None or body["metadata"].get("deletionTimestamp"):
        ctx.metrics.blocked.clear((kind, namespace, name))
        if ctx.requeue is not None:
            ctx.requeue.forget((kind, namespace, name))
        return None
    return reconcile(ctx, body)


def reconcile_key(ctx: Context, key: Hashable) -> None:
    """The requeue's callback (keys are :func:`key_of`'s)."""
    kind, namespace, name = cast(tuple[str, str, str], key)
    reconcile_named(ctx, kind, namespace, name)
