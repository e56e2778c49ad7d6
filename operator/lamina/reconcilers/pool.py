"""Warm generic pools of a namespace: one Deployment per runtime image and memory size in use by a
function on the pool path, sized by the installation (``LAMINA_POOL_SIZE``) or the namespace's
``lamina.dev/pool-size`` annotation; pools nobody uses any more are deleted.

Pools have no owner (many functions share one), so this level-based reconcile of the whole namespace
runs after every Function reconcile, when a Function is deleted, and when a namespace's annotation
changes. Claimed pods left their pool's selector: deleting a pool never touches them.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from typing import Any

from lamina.api import API_VERSION, Function, ManifestError, parse_object
from lamina.reconcilers.apply import apply
from lamina.reconcilers.client import Ref
from lamina.reconcilers.context import Context
from lamina.resources import labels
from lamina.resources.pool import build_pool, pool_size, pools_wanted

log = logging.getLogger(__name__)

_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
#: Namespaces known to hold no pool: with pools off there, a Function reconcile lists nothing.
_without_pools: set[str] = set()


def namespace_pool_size(ctx: Context, namespace: str) -> int:
    """The pool size that holds in ``namespace`` (its annotation, else the installation's)."""
    return pool_size(ctx.settings, ctx.kube.get(Ref("v1", "Namespace", None, namespace)))


def _functions(ctx: Context, namespace: str) -> list[Function]:
    found = []
    for body in ctx.kube.list(API_VERSION, "Function", namespace):
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            continue
        doc: dict[str, Any] = {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}
        try:
            fn = parse_object(doc)
        except ManifestError:
            continue  # its own reconcile reports it; it gets no pool
        if isinstance(fn, Function):
            found.append(fn)
    return found


def reconcile_pools(ctx: Context, namespace: str, size: int | None = None) -> dict[str, int]:
    """Apply the pools ``namespace`` needs and delete the others; returns pool label -> size."""
    with _locks[namespace]:  # Function reconciles of one namespace run side by side
        size = namespace_pool_size(ctx, namespace) if size is None else size
        wanted = pools_wanted(_functions(ctx, namespace), ctx.settings, size)
        selector = f"{labels.NAME}={labels.POOL_APP}"
        existing = {
            d["metadata"]["name"]: d for d in ctx.kube.list("apps/v1", "Deployment", namespace, selector)
        }
        for key, replicas in sorted(wanted.items()):
            current = existing.pop(key.deployment, None)
            desired = build_pool(namespace, key, replicas, ctx.settings)
            if current is None or _differs(current, desired):
                apply(ctx.kube, desired)
        for name, deployment in existing.items():
            log.info("pool %s/%s: no function uses it any more; deleting it", namespace, name)
            ctx.kube.delete(Ref("apps/v1", "Deployment", namespace, name), uid=deployment["metadata"]["uid"])
        return {key.label: replicas for key, replicas in wanted.items()}


def _differs(current: dict[str, Any], desired: dict[str, Any]) -> bool:
    """Whether applying ``desired`` would change the pool: its size or its pods (saves a write on
    every Function reconcile of the namespace)."""
    spec, want = current.get("spec") or {}, desired["spec"]
    if spec.get("replicas") != want["replicas"]:
        return True
    have = ((spec.get("template") or {}).get("spec") or {}).get("containers") or [{}]
    mine = want["template"]["spec"]["containers"][0]
    return any(have[0].get(k) != mine[k] for k in ("image", "command", "env", "resources"))
