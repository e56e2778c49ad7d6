"""What every reconcile gets: the API client, the installation settings, and a way to post Events."""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from lamina.api import LaminaObject, ManifestError, parse_object
from lamina.api.rollouts import ErrorWindow
from lamina.reconcilers.client import KubeApi
from lamina.reconcilers.gateway_metrics import GatewayCounts
from lamina.reconcilers.metrics import OperatorMetrics
from lamina.reconcilers.requeue import Requeue
from lamina.reconcilers.status import BLOCKING_REASONS, READY, BlockReason, find
from lamina.resources import Settings
from lamina.resources.pod_state import FAILURE_REASONS, PodProblem, function_problem

log = logging.getLogger(__name__)

T = TypeVar("T", bound=LaminaObject)

#: (involved object, type, reason, message) -> None; kopf's poster in the operator.
EventSink = Callable[[Mapping[str, Any], str, str, str], None]


class Blocked(Exception):
    """The reconcile cannot go on: Ready=False with ``reason``; retried after ``retry`` seconds
    (None: only a change of the object helps, e.g. an invalid spec)."""

    def __init__(self, reason: BlockReason, message: str, retry: float | None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry = retry


def parse_as(body: Mapping[str, Any], kind: type[T]) -> T:
    """The validated model of an object as the API server returned it (status is not validated);
    an invalid spec blocks the reconcile until the object changes."""
    doc = {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}
    try:
        obj = parse_object(doc)
    except ManifestError as e:
        raise Blocked(BlockReason.INVALID_SPEC, str(e), retry=None) from None
    assert isinstance(obj, kind)
    return obj


def _log_event(obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    meta = obj.get("metadata") or {}
    log.info(
        "%s %s/%s: %s %s: %s",
        obj.get("kind"),
        meta.get("namespace"),
        meta.get("name"),
        type_,
        reason,
        message,
    )


@dataclass
class Context:
    kube: KubeApi
    settings: Settings
    post: EventSink = field(default=_log_event)
    requeue: Requeue | None = None
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    #: The namespaces the operator watches (``--namespace``); empty: the whole cluster. The
    #: installation's account is what it watches: reservations are counted there, as the gateway does.
    namespaces: tuple[str, ...] = ()
    #: Last readiness computed per (namespace, function): lets Deployment events that change nothing
    #: the Function reports skip reading the Function (thread-safe: single dict operations).
    readiness: dict[Hashable, Any] = field(default_factory=dict)
    #: Runs a reconcile's independent API calls side by side (kopf's own pool runs the handlers;
    #: a separate pool cannot deadlock on it).
    fanout: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=16, thread_name_prefix="lamina-apply")
    )

    def run_all(self, *calls: Callable[[], Any]) -> list[Any]:
        """Run ``calls`` concurrently and return their results in order. Every call finishes before
        the first failure is raised, so no write is left running behind a reconcile that gave up."""
        futures = [self.fanout.submit(call) for call in calls]
        errors = [f.exception() for f in futures]
        for error in errors:
            if error is not None:
                raise error
        return [f.result() for f in futures]

    #: Sequence number of the last child (Deployment) event per object, from one counter, so a
    #: value never repeats: a reconcile compares it before and after to learn whether events came.
    _child_events: dict[Hashable, int] = field(default_factory=dict)
    _child_event_seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def note_child_event(self, key: Hashable) -> None:
        self._child_events[key] = next(self._child_event_seq)  # both steps are atomic under the GIL

    def child_events(self, key: Hashable) -> int:
        return self._child_events.get(key, 0)

    #: Problems of each function's pods (pod name -> problem), fed by the pod watch; the Function's
    #: readiness names the one :func:`function_problem` picks.
    _pod_problems: dict[Hashable, dict[str, PodProblem]] = field(default_factory=dict)
    _pod_lock: threading.Lock = field(default_factory=threading.Lock)

    def note_pod(self, key: Hashable, pod: str, problem: PodProblem | None) -> bool:
        """Record what one pod of function ``key`` says; True when the function's problem changed."""
        with self._pod_lock:
            problems = self._pod_problems.setdefault(key, {})
            before = function_problem(problems.values())
            if problem is None:
                problems.pop(pod, None)
            else:
                problems[pod] = problem
            if not problems:
                del self._pod_problems[key]
            return function_problem(problems.values()) != before

    def pod_problem(self, key: Hashable) -> PodProblem | None:
        with self._pod_lock:
            return function_problem((self._pod_problems.get(key) or {}).values())

    #: Progressing rollouts: the sampled per-version counts (an error window) and the gateways they
    #: are read from; created on first use, so operators without rollouts never scrape.
    _rollout_window: ErrorWindow = field(default_factory=ErrorWindow)
    _gateway_counts: GatewayCounts | None = None
    #: Objects that asked to be reconciled again after a success (a rollout's next step), by key.
    _revisits: dict[Hashable, float] = field(default_factory=dict)

    def sample_versions(self, now: float) -> ErrorWindow:
        """Read the gateways' per-version counts into the rollout error window, and return it."""
        if self._gateway_counts is None:
            self._gateway_counts = GatewayCounts(self.settings.metrics_urls)
        for key, (invocations, errors) in self._gateway_counts.scrape().items():
            self._rollout_window.observe(key, now, invocations, errors)
        return self._rollout_window

    def revisit(self, key: Hashable, seconds: float) -> None:
        """Reconcile ``key`` again in ``seconds`` even though this reconcile succeeds."""
        current = self._revisits.get(key)
        self._revisits[key] = seconds if current is None else min(current, seconds)

    def take_revisit(self, key: Hashable) -> float | None:
        return self._revisits.pop(key, None)

    def remember_readiness(self, key: Hashable, readiness: Any) -> None:
        self.readiness[key] = readiness

    def readiness_unchanged(self, key: Hashable, readiness: Any) -> bool:
        return bool(self.readiness.get(key) == readiness)

    def forget_readiness(self, key: Hashable) -> None:
        self.readiness.pop(key, None)
        self._child_events.pop(key, None)

    def announce(
        self,
        obj: Mapping[str, Any],
        before: Mapping[str, Any] | None,
        after: Mapping[str, Any] | None,
    ) -> None:
        """Post an Event when Ready flips, or when a blocking reason or an environment failure (a
        Warning) newly stands.
        Transient progress (Deploying, RollingOut...) stays in the status only."""
        new = find((after or {}).get("conditions"), READY)
        old = find((before or {}).get("conditions"), READY)
        if new is None:
            return
        reason, status = str(new.get("reason")), new.get("status")
        # A reconcile that stopped, or environments that cannot start: both need someone to act.
        blocking = reason in BLOCKING_REASONS or reason in FAILURE_REASONS
        if old is not None and old.get("reason") == reason:
            return
        if not blocking and old is not None and old.get("status") == status:
            return
        if not blocking and old is None and status != "True":
            return
        type_ = "Warning" if blocking else "Normal"
        try:
            self.post(obj, type_, reason, str(new.get("message", "")))
        except Exception:  # an Event is a courtesy; never fail a reconcile over it
            log.exception("could not post an Event")
