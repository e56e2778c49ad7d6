"""Warm pool pods as a gateway sees them: which it may claim, which it holds, and the patches of both.

Pure: pods as the API returns them (plain dicts) in, :class:`PoolPod` values, choices and merge
patches out; :mod:`lamina.environments.pool_claims` sends the patches and keeps the pods up to date.

Two ways take a pod out of the pool for a function:

- **the race** (a replica that holds none): a merge patch that labels the pod claimed for the
  function, conditional on the ``resourceVersion`` the gateway saw, sent beside the pod's one-shot
  ``POST /specialize``; the pod is used only by the gateway that won both.
- **a hold** (taken ahead of time, off the cold start's path): a conditional patch that names one
  replica in the pod's annotations until a time (``held-by``, ``held-until``), renewed while the
  replica lives. A cold start on a pod it holds needs only the hand-over; the claim is written beside
  the function's first call, again conditional, so a hold lost meanwhile is noticed and the pod
  deleted. No replica's race takes a pod another holds until the hold expires, so a replica that died
  gives its pods back by expiry, and one that stops gives them back at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lamina.resources import labels

#: When the gateway claimed the pod (ISO 8601): a claim never handed over is swept after a while.
CLAIMED_AT = "lamina.dev/claimed-at"
#: The replica holding an idle pod ahead of its cold starts, and until when (ISO 8601, UTC).
HELD_BY = "lamina.dev/held-by"
HELD_UNTIL = "lamina.dev/held-until"


@dataclass
class PoolPod:
    name: str
    namespace: str
    pool: str
    state: str
    address: str | None
    ready: bool
    resource_version: str
    claimed_at: float | None = None
    held_by: str | None = None
    held_until: float | None = None

    @property
    def available(self) -> bool:
        """Idle, Ready and reachable: a pod a cold start could be given."""
        return self.state == labels.IDLE and self.ready and self.address is not None

    def held(self, now: float) -> bool:
        """Held by some replica at ``now`` (wall clock): no race takes it."""
        return self.held_by is not None and self.held_until is not None and now < self.held_until


def _timestamp(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")


def pool_pod(pod: dict[str, Any], port: int) -> PoolPod | None:
    """The pool pod ``pod`` (an API dict), or None when it is no pool pod or is being deleted."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    pod_labels = meta.get("labels") or {}
    if meta.get("deletionTimestamp") or not pod_labels.get(labels.POOL):
        return None
    conditions = status.get("conditions") or []
    annotations = meta.get("annotations") or {}
    return PoolPod(
        name=meta.get("name", ""),
        namespace=meta.get("namespace", ""),
        pool=pod_labels[labels.POOL],
        state=pod_labels.get(labels.POOL_STATE, ""),
        address=f"{status['podIP']}:{port}" if status.get("podIP") else None,
        ready=any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions),
        resource_version=meta.get("resourceVersion", ""),
        claimed_at=_timestamp(annotations.get(CLAIMED_AT)),
        held_by=annotations.get(HELD_BY),
        held_until=_timestamp(annotations.get(HELD_UNTIL)),
    )


def ranked(gateway_id: str, pods: Iterable[PoolPod]) -> list[PoolPod]:
    """``pods`` in this gateway's own order (rendezvous hashing on its identity), so replicas that
    cold-start or hold at once mostly pick different pods instead of all racing for the first."""
    gateway = gateway_id.encode()
    return sorted(pods, key=lambda p: hashlib.blake2b(gateway + p.name.encode(), digest_size=8).digest())


def claimable(pods: Iterable[PoolPod], now: float, taken: Iterable[str] = ()) -> list[PoolPod]:
    """Pods the race may take: available, held by nobody at ``now``, not being claimed here."""
    busy = set(taken)
    return [p for p in pods if p.available and not p.held(now) and p.name not in busy]


def usable_holds(
    pods: Iterable[PoolPod], gateway_id: str, now: float, margin: float, taken: Iterable[str] = ()
) -> list[PoolPod]:
    """This replica's holds a cold start may use: available, and held for ``margin`` seconds more (a
    hold about to expire might be taken by another replica's race while the hand-over runs)."""
    busy = set(taken)
    return [
        p
        for p in pods
        if p.available
        and p.held_by == gateway_id
        and p.held_until is not None
        and now + margin < p.held_until
        and p.name not in busy
    ]


def to_hold(
    pods: Iterable[PoolPod], gateway_id: str, now: float, want: int, margin: float, taken: Iterable[str] = ()
) -> list[PoolPod]:
    """Pods of one pool this replica should hold now to have ``want`` of them: never the last one the
    race could take, so a replica that holds none still finds a pod to claim."""
    pods = list(pods)
    have = len(usable_holds(pods, gateway_id, now, margin, taken))
    free = claimable(pods, now, taken)
    return ranked(gateway_id, free)[: max(0, min(want - have, len(free) - 1))]


def hold_patch(resource_version: str, gateway_id: str, until: float) -> dict[str, Any]:
    """Hold (or renew the hold of) a pod for ``gateway_id`` until ``until``, if nobody changed it since
    ``resource_version``."""
    return {
        "metadata": {
            "resourceVersion": resource_version,
            "annotations": {HELD_BY: gateway_id, HELD_UNTIL: iso(until)},
        }
    }


def unhold_patch(resource_version: str) -> dict[str, Any]:
    """Give a held pod back to its pool (a replica stopping, or no longer cold-starting from it)."""
    annotations = {HELD_BY: None, HELD_UNTIL: None}
    return {"metadata": {"resourceVersion": resource_version, "annotations": annotations}}


def claim_patch(
    resource_version: str,
    gateway_id: str,
    function: str,
    function_uid: str | None,
    now: float,
    state: str = labels.CLAIMED,
) -> dict[str, Any]:
    """Take the pod out of its pool for ``function`` (its selector no longer matches: the pool starts a
    replacement), if nobody changed it since ``resource_version``. ``state`` is ``serving`` for a pod
    already handed over (a held one), so that one write labels it the function's environment. The
    Function becomes the pod's owner (deleting it deletes its pods); any hold ends."""
    meta: dict[str, Any] = {
        "resourceVersion": resource_version,
        "labels": {labels.POOL_STATE: state, labels.FUNCTION: function},
        "annotations": {labels.CLAIMED_BY: gateway_id, CLAIMED_AT: iso(now), HELD_BY: None, HELD_UNTIL: None},
    }
    if function_uid:
        meta["ownerReferences"] = [
            {"apiVersion": "lamina.dev/v1alpha1", "kind": "Function", "name": function, "uid": function_uid}
        ]
    return {"metadata": meta}
