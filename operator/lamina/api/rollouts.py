"""Progressive rollout of an alias: the pure state machine shared by the operator and local mode.

An alias with a ``rollout`` policy does not jump to a new version. When its declared version (``T``)
differs from the version it routes to now (``S``, from the alias's status), the rollout starts: ``T``
gets ``percent`` of the invocations; ``Canary`` moves to 100 % after ``intervalSeconds``, ``Linear`` adds
``percent`` every ``intervalSeconds``. Before every step the gateway's counts of ``T`` (invocations and
errors, INIT failures and invocations the platform could not run included) over the last
``windowSeconds`` are checked: past ``errorRateThreshold`` with at least ``minimumInvocations``, the alias
rolls back to ``S`` by itself and stays there while the declared version is still ``T``. The state is
the alias's status (``status.aliases.NAME.rollout``); every start, step, success and rollback is an
Event. ``advance`` takes the time and the counts and returns the decision: no clock, no I/O here.
"""

from __future__ import annotations

import datetime
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lamina.api.function import RolloutPolicy
from lamina.api.versions import Route

PROGRESSING, SUCCEEDED, ROLLED_BACK = "Progressing", "Succeeded", "RolledBack"
#: How often a progressing rollout is looked at again (seconds), at most.
TICK = 2.0


@dataclass(frozen=True)
class Counts:
    invocations: float = 0.0
    errors: float = 0.0

    @property
    def rate(self) -> float:
        return self.errors / self.invocations if self.invocations else 0.0


class ErrorWindow:
    """Cumulative per-version counters sampled over time; answers "what happened in the last N
    seconds". Keys are anything hashable (``(namespace, function, version)``)."""

    def __init__(self, keep_seconds: float = 7200.0) -> None:
        self.keep_seconds = keep_seconds
        self._samples: dict[Any, deque[tuple[float, float, float]]] = {}

    def observe(self, key: Any, now: float, invocations: float, errors: float) -> None:
        samples = self._samples.setdefault(key, deque())
        samples.append((now, invocations, errors))
        while len(samples) > 2 and samples[1][0] < now - self.keep_seconds:
            samples.popleft()

    def counts(self, key: Any, now: float, seconds: float, since: float) -> Counts:
        """Invocations and errors between ``max(now - seconds, since)`` and the newest sample (from the
        newest sample at or before that start; a counter that went down restarted from zero)."""
        samples = self._samples.get(key)
        if not samples:
            return Counts()
        start = max(now - seconds, since)
        base = samples[0]
        for sample in samples:
            if sample[0] <= start:
                base = sample
        last = samples[-1]
        if last[1] < base[1] or last[2] < base[2]:  # the source restarted
            return Counts(last[1], last[2])
        return Counts(last[1] - base[1], last[2] - base[2])


@dataclass
class Decision:
    """What an alias does now: its routing, its status, the Events to post, when to look again."""

    route: Route
    status: dict[str, Any]
    events: list[tuple[str, str, str]] = field(default_factory=list)
    revisit: float | None = None


def _iso(ts: float) -> str:
    stamp = datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def _epoch(text: str) -> float:
    return datetime.datetime.fromisoformat(text).timestamp()


def _status(route: Route, rollout: dict[str, Any] | None) -> dict[str, Any]:
    doc = route.to_status()
    if rollout is not None:
        doc["rollout"] = rollout
    return doc


def advance(
    alias: str,
    policy: RolloutPolicy,
    target: str,
    prior: Mapping[str, Any] | None,
    now: float,
    counts: Callable[[str, float, float], Counts],
) -> Decision:
    """The next state of ``alias`` whose spec points at version ``target`` under ``policy``.

    ``prior`` is the alias's status as last written (None: a new alias, which starts on ``target``
    at once). ``counts(version, window_seconds, since_epoch)`` gives a version's recent invocations.
    """
    prior = prior or {}
    stable = prior.get("functionVersion")
    rollout = dict(prior.get("rollout") or {})
    if not stable or stable == "$LATEST" or target == "$LATEST":
        return Decision(Route(target), _status(Route(target), None))
    if rollout.get("toVersion") == target and rollout.get("fromVersion") == stable:
        if rollout.get("phase") == ROLLED_BACK:
            return Decision(Route(stable), _status(Route(stable), rollout))  # stays back while T is declared
        if rollout.get("phase") == PROGRESSING:
            return _progress(alias, policy, stable, target, rollout, now, counts)
    if target == stable:
        if rollout.get("phase") == PROGRESSING:  # the spec was set back: that is a rollback too
            rollout.update(phase=ROLLED_BACK, weight=0.0, message=f"the alias was set back to {stable}")
            event = ("Normal", "RolloutAborted", f"alias {alias}: {rollout['message']}")
            return Decision(Route(stable), _status(Route(stable), rollout), [event])
        return Decision(Route(stable), _status(Route(stable), rollout or None))
    weight = policy.percent / 100
    rollout = {
        "phase": PROGRESSING,
        "fromVersion": stable,
        "toVersion": target,
        "weight": weight,
        "step": 1,
        "startedAt": _iso(now),
        "stepStartedAt": _iso(now),
        "message": f"{policy.type.lower()} rollout to {target}: {policy.percent}%",
    }
    route = Route(stable, target, weight)
    event = (
        "Normal",
        "RolloutStarted",
        f"alias {alias}: {stable} -> {target}, {policy.percent}% to {target}",
    )
    return Decision(route, _status(route, rollout), [event], revisit=min(TICK, policy.interval_seconds))


def _progress(
    alias: str,
    policy: RolloutPolicy,
    stable: str,
    target: str,
    rollout: dict[str, Any],
    now: float,
    counts: Callable[[str, float, float], Counts],
) -> Decision:
    step_started = _epoch(rollout["stepStartedAt"])
    seen = counts(target, policy.window_seconds, _epoch(rollout["startedAt"]))
    rollout["observedInvocations"] = int(seen.invocations)
    rollout["observedErrors"] = int(seen.errors)
    if seen.invocations >= policy.minimum_invocations and seen.rate > policy.error_rate_threshold:
        rollout.update(
            phase=ROLLED_BACK,
            weight=0.0,
            message=f"rolled back to {stable}: version {target} failed {int(seen.errors)} of "
            f"{int(seen.invocations)} invocations in the last {policy.window_seconds}s "
            f"({seen.rate:.0%} > {policy.error_rate_threshold:.0%})",
        )
        event = ("Warning", "RolloutRolledBack", f"alias {alias}: {rollout['message']}")
        return Decision(Route(stable), _status(Route(stable), rollout), [event])
    if now - step_started < policy.interval_seconds:
        route = Route(stable, target, float(rollout["weight"]))
        wait = min(TICK, policy.interval_seconds - (now - step_started))
        return Decision(route, _status(route, rollout), revisit=max(wait, 0.1))
    weight = 1.0 if policy.type == "Canary" else round(float(rollout["weight"]) + policy.percent / 100, 6)
    if weight >= 1.0:
        rollout.update(phase=SUCCEEDED, weight=1.0, message=f"{target} serves all invocations")
        event = ("Normal", "RolloutSucceeded", f"alias {alias}: {stable} -> {target} complete")
        return Decision(Route(target), _status(Route(target), rollout), [event])
    rollout.update(
        weight=weight,
        step=int(rollout["step"]) + 1,
        stepStartedAt=_iso(now),
        message=f"{policy.type.lower()} rollout to {target}: {weight:.0%}",
    )
    route = Route(stable, target, weight)
    event = ("Normal", "RolloutStep", f"alias {alias}: {weight:.0%} to {target} (step {rollout['step']})")
    return Decision(route, _status(route, rollout), [event], revisit=min(TICK, policy.interval_seconds))
