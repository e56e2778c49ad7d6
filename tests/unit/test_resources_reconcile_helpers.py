"""The reconcilers' pure helpers: conditions, Event policy, requeue backoff, field ownership, paths."""

from __future__ import annotations

import logging
import threading
from typing import Any
from unittest import mock

import pytest

from lamina.reconcilers.apply import replicas_owners
from lamina.reconcilers.client import Ref, collection_path, object_path
from lamina.reconcilers.context import Context
from lamina.reconcilers.eventsourcemapping import _fields as mapping_status_fields
from lamina.reconcilers.main import QuietWatchHandlers
from lamina.reconcilers.requeue import Requeue
from lamina.reconcilers.status import is_blocked, set_condition
from lamina.resources import Settings
from lamina.resources.pod_state import PodProblem


def test_set_condition_moves_last_transition_time_only_when_the_status_flips() -> None:
    first = set_condition(None, "Ready", False, "Deploying", "waiting", 1, timestamp="T1")
    assert first == [
        {
            "type": "Ready",
            "status": "False",
            "reason": "Deploying",
            "message": "waiting",
            "lastTransitionTime": "T1",
            "observedGeneration": 1,
        }
    ]
    same = set_condition(first, "Ready", False, "RollingOut", "1/2", 2, timestamp="T2")
    assert same[0]["lastTransitionTime"] == "T1"
    assert (same[0]["reason"], same[0]["observedGeneration"]) == ("RollingOut", 2)
    flipped = set_condition(same, "Ready", True, "EnvironmentsReady", "2/2", 2, timestamp="T3")
    assert flipped[0]["lastTransitionTime"] == "T3"


def test_set_condition_keeps_other_conditions() -> None:
    conditions = [{"type": "Stalled", "status": "False", "reason": "No", "message": ""}]
    out = set_condition(conditions, "Ready", "Unknown", "Starting", "", None, timestamp="T")
    assert [c["type"] for c in out] == ["Stalled", "Ready"]
    assert "observedGeneration" not in out[1]


@pytest.mark.parametrize(
    ("observed", "reason", "blocked"),
    [(3, "LayerNotFound", True), (2, "LayerNotFound", False), (3, "RollingOut", False)],
)
def test_is_blocked_only_for_the_current_generation(observed: int, reason: str, blocked: bool) -> None:
    obj = {
        "metadata": {"generation": 3},
        "status": {"observedGeneration": observed, "conditions": [{"type": "Ready", "reason": reason}]},
    }
    assert is_blocked(obj) is blocked


def ready(status: str, reason: str) -> dict[str, Any]:
    return {"conditions": [{"type": "Ready", "status": status, "reason": reason, "message": f"{reason}!"}]}


@pytest.mark.parametrize(
    ("before", "after", "posted"),
    [
        (None, ready("False", "Deploying"), None),  # first steps are not news
        (None, ready("False", "LayerNotFound"), ("Warning", "LayerNotFound")),
        (ready("False", "Deploying"), ready("False", "RollingOut"), None),
        (ready("False", "RollingOut"), ready("True", "EnvironmentsReady"), ("Normal", "EnvironmentsReady")),
        (ready("True", "EnvironmentsReady"), ready("True", "EnvironmentsReady"), None),
        (ready("True", "EnvironmentsReady"), ready("False", "RollingOut"), ("Normal", "RollingOut")),
        (ready("False", "LayerNotFound"), ready("False", "SecretNotFound"), ("Warning", "SecretNotFound")),
        (ready("False", "SecretNotFound"), ready("False", "SecretNotFound"), None),
        # environments that cannot start are Warnings, as blocked reconciles are
        (ready("False", "RollingOut"), ready("False", "ImagePullBackOff"), ("Warning", "ImagePullBackOff")),
        (
            ready("True", "OnDemand"),
            ready("False", "InitContainerFailed"),
            ("Warning", "InitContainerFailed"),
        ),
        (ready("False", "CrashLoopBackOff"), ready("False", "CrashLoopBackOff"), None),
    ],
)
def test_events_on_ready_flips_and_blocking_reasons(
    before: dict[str, Any] | None, after: dict[str, Any], posted: tuple[str, str] | None
) -> None:
    events: list[tuple[str, str, str]] = []
    ctx = Context(kube=None, settings=Settings(), post=lambda obj, t, r, m: events.append((t, r, m)))  # type: ignore[arg-type]
    ctx.announce({"kind": "Function", "metadata": {"name": "f"}}, before, after)
    assert events == ([] if posted is None else [(*posted, f"{posted[1]}!")])


def test_pod_problems_change_the_function_only_when_its_problem_changes() -> None:
    ctx = Context(kube=None, settings=Settings())  # type: ignore[arg-type]
    key = ("default", "f")
    a = PodProblem("ImagePullBackOff", "image x", "fn-f-a")
    b = PodProblem("ImagePullBackOff", "image x", "fn-f-b")
    assert ctx.note_pod(key, "fn-f-b", b) is True
    assert ctx.note_pod(key, "fn-f-a", a) is True  # a comes first by name: reported instead
    assert ctx.note_pod(key, "fn-f-b", None) is False
    assert ctx.pod_problem(key) == a
    assert ctx.note_pod(key, "fn-f-c", None) is False  # a healthy pod changes nothing
    assert ctx.note_pod(key, "fn-f-a", None) is True
    assert ctx.pod_problem(key) is None


def test_requeue_backs_off_per_key_and_resets_when_forgotten() -> None:
    q = Requeue(lambda key: None, max_delay=30)
    assert [q.add("a", 10) for _ in range(4)] == [10, 20, 30, 30]
    assert q.add("b", 10) == 10
    q.forget("a")
    assert "a" not in q.pending() and "b" in q.pending()
    assert q.add("a", 10) == 10


def test_requeue_calls_back_each_due_key_once() -> None:
    seen: list[str] = []
    done = threading.Event()

    def callback(key: Any) -> None:
        seen.append(key)
        if len(seen) == 2:
            done.set()

    q = Requeue(callback)
    q.start()
    try:
        q.add("x", 0.01)
        q.add("x", 0.01)  # already pending: not twice
        q.add("y", 0.02)
        assert done.wait(10)
    finally:
        q.stop()
    assert sorted(seen) == ["x", "y"]


def test_a_reconciled_key_starts_its_backoff_again_and_keeps_a_pending_look() -> None:
    q = Requeue(lambda key: None, max_delay=30)
    assert [q.add("a", 10) for _ in range(3)] == [10, 20, 30]
    q.reset("a")
    assert "a" in q.pending()  # put there by someone: still due
    assert q.add("a", 10) == 10


def test_a_requeued_reconcile_that_raises_is_tried_again() -> None:
    calls: list[str] = []
    done = threading.Event()

    def callback(key: Any) -> None:
        calls.append(key)
        if len(calls) == 1:
            raise RuntimeError("the API server said 500")
        done.set()

    q = Requeue(callback)
    with mock.patch("lamina.reconcilers.requeue.FAILED_RETRY_SECONDS", 0.01):
        q.start()
        try:
            q.add("x", 0.01)
            assert done.wait(10)
        finally:
            q.stop()
    assert calls == ["x", "x"]


def test_replicas_owners_reads_managed_fields() -> None:
    dep = {
        "metadata": {
            "managedFields": [
                {"manager": "lamina-operator", "fieldsV1": {"f:spec": {"f:template": {}}}},
                {
                    "manager": "lamina-gateway",
                    "subresource": "scale",
                    "fieldsV1": {"f:spec": {"f:replicas": {}}},
                },
                {"manager": "kube-controller-manager", "fieldsV1": {"f:status": {}}},
            ]
        }
    }
    assert replicas_owners(dep) == {"lamina-gateway"}
    assert replicas_owners({"metadata": {}}) == set()


def test_api_paths() -> None:
    assert collection_path("v1", "ConfigMap", "ns") == "/api/v1/namespaces/ns/configmaps"
    assert collection_path("lamina.dev/v1alpha1", "Function", None) == "/apis/lamina.dev/v1alpha1/functions"
    ref = Ref("lamina.dev/v1alpha1", "Function", "ns", "f")
    assert object_path(ref, "status") == "/apis/lamina.dev/v1alpha1/namespaces/ns/functions/f/status"
    assert str(ref) == "Function ns/f"
    role = Ref("rbac.authorization.k8s.io/v1", "Role", "ns", "esm-m")
    assert object_path(role) == "/apis/rbac.authorization.k8s.io/v1/namespaces/ns/roles/esm-m"
    account = Ref("v1", "ServiceAccount", "ns", "esm-m")
    assert object_path(account) == "/api/v1/namespaces/ns/serviceaccounts/esm-m"


class _Deployments:
    """A Kube that knows one ready worker Deployment."""

    def get(self, ref: Ref) -> dict[str, Any] | None:
        status = {"observedGeneration": 1, "updatedReplicas": 1, "readyReplicas": 1}
        return {"metadata": {"generation": 1}, "status": status}


@pytest.mark.parametrize(
    ("reported", "written"),
    [(None, "Enabled"), ("Creating", "Enabled"), ("Enabling", "Enabling"), ("Enabled", "Enabled")],
)
def test_a_running_workers_own_state_is_not_overwritten(reported: str | None, written: str) -> None:
    ctx = Context(kube=_Deployments(), settings=Settings())  # type: ignore[arg-type]
    obj = {"metadata": {"namespace": "ns", "name": "m"}, "spec": {}, "status": {"state": reported}}
    fields = mapping_status_fields(ctx, obj, 1, None)
    assert fields["state"] == written
    assert fields["conditions"][0]["reason"] == "WorkerRunning"


@pytest.mark.parametrize(
    ("message", "kept"),
    [
        ("Handler 'function_deployment_event' succeeded.", False),
        ("Handler 'layer_deleted' succeeded.", False),
        ("Handler 'function_changed' succeeded.", True),
        ("Handler 'function_deployment_event' failed with an exception. Will ignore.", True),
    ],
)
def test_quiet_watch_handlers_filter(message: str, kept: bool) -> None:
    record = logging.LogRecord("kopf.objects", logging.INFO, __file__, 1, message, None, None)
    assert QuietWatchHandlers().filter(record) is kept
