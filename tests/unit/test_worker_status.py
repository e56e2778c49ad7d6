"""The worker's status reporter without a cluster: what it writes, when, and that failures stay quiet
and harmless (the real API server, RBAC and all, is in tests/cluster/test_worker_status.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from lamina.api import EventSourceMapping, parse_object
from lamina.api.eventsourcemapping import EventSourceMappingStatus
from lamina.cluster.mapping_status import StatusReporter, mapping_reporter, worker_fields
from lamina.cluster.settings import WorkerSettings
from lamina.eventsources.runners import ScheduleMapping
from lamina.eventsources.status import OK, MappingStatus
from lamina.schedule.stores import SqliteTickStore

BROKER = {"name": "orders", "source": "redis orders", "function": "f", **MappingStatus().to_dict()}


def broker(**changes: Any) -> dict[str, Any]:
    return {**BROKER, **changes}


def forbidden() -> ApiException:
    exc = ApiException(status=403, reason="Forbidden")
    exc.body = json.dumps({"message": 'cannot patch resource "eventsourcemappings/status"'})
    return exc


def test_broker_fields_are_the_workers_keys_only() -> None:
    fields = worker_fields({**BROKER, "state": "Enabled", "lastProcessingResult": OK, "iteratorAgeMs": 42})
    assert fields == {"state": "Enabled", "lastProcessingResult": "OK", "iteratorAgeMs": 42}
    # Only keys the CRD has (the API server would prune others), never the operator's.
    status = EventSourceMappingStatus.model_validate(fields)
    assert status.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True) == fields
    assert not {"conditions", "observedGeneration", "source"} & fields.keys()


@pytest.mark.parametrize("state", ["Creating", "Disabled"])
def test_lifecycle_states_are_left_to_the_operator(state: str) -> None:
    # A worker stopped by a rollout says Disabled; the mapping is not disabled.
    assert "state" not in worker_fields(broker(state=state))


def test_schedule_fields_use_the_crds_date_time() -> None:
    snapshot = {"state": "Enabled", "fired": 1, "lastFired": "2025-03-01T10:00:00+00:00", "nextFire": None}
    fields = worker_fields(snapshot)
    assert fields == {"state": "Enabled", "lastFireTime": "2025-03-01T10:00:00Z", "nextFireTime": None}
    # Before this worker fired, the previous pod's lastFireTime is kept (not nulled).
    fields = worker_fields({"state": "Enabled", "lastFired": None, "nextFire": "2025-03-01T11:00:00+01:00"})
    assert fields == {"state": "Enabled", "nextFireTime": "2025-03-01T10:00:00Z"}
    EventSourceMappingStatus.model_validate(fields)


def test_a_schedule_runner_reports_its_next_fire_time(tmp_path: Any) -> None:
    esm = parse_object(
        {
            "apiVersion": "lamina.dev/v1alpha1",
            "kind": "EventSourceMapping",
            "metadata": {"name": "tick", "namespace": "team-a"},
            "spec": {"functionName": "f", "source": {"schedule": {"expression": "rate(1 hour)"}}},
        }
    )
    assert isinstance(esm, EventSourceMapping)

    async def enqueue(key: str, payload: bytes, request_id: str | None) -> None:
        return None

    runner = ScheduleMapping(esm, enqueue, SqliteTickStore(str(tmp_path / "ticks.sqlite3")))
    fields = worker_fields(runner.snapshot())
    assert fields["state"] == "Enabled"
    assert fields["nextFireTime"].endswith("Z")


class Recorder:
    def __init__(self, fail: BaseException | None = None) -> None:
        self.writes: list[dict[str, Any]] = []
        self.attempts = 0
        self.fail = fail
        self.attempted_thrice = threading.Event()  # set from the reporter's worker thread

    def __call__(self, fields: dict[str, Any]) -> None:
        self.attempts += 1
        if self.attempts >= 3:
            self.attempted_thrice.set()
        if self.fail is not None:
            raise self.fail
        self.writes.append(fields)


async def test_writes_only_on_change_and_again_when_the_resync_is_due() -> None:
    snapshot = broker(state="Enabled")
    now = [0.0]
    patch = Recorder()
    reporter = StatusReporter(lambda: snapshot, patch, "team-a/orders", resync=60, clock=lambda: now[0])
    assert await reporter.report()
    assert not await reporter.report()  # unchanged: no request
    snapshot = broker(state="Enabled", lastProcessingResult=OK)
    assert await reporter.report()
    now[0] = 61.0
    assert await reporter.report()  # unchanged, but the operator may have written over state
    assert [w.get("lastProcessingResult") for w in patch.writes] == ["No records processed", OK, OK]


async def test_a_refusing_api_server_is_logged_once_and_never_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    snapshot = broker(state="Enabled")
    patch = Recorder(fail=forbidden())
    reporter = StatusReporter(lambda: snapshot, patch, "team-a/orders", interval=2)
    with caplog.at_level(logging.INFO, logger="lamina.cluster.mapping_status"):
        for _ in range(3):
            assert not await reporter.report()
        assert patch.attempts == 3
        assert reporter.delay() > reporter.interval  # backs off
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "403 Forbidden" in warnings[0].getMessage()
        assert "eventsourcemappings/status" in warnings[0].getMessage()
        patch.fail = None
        assert await reporter.report()
        assert reporter.delay() == reporter.interval
    assert "works again" in caplog.records[-1].getMessage()


async def test_the_loop_keeps_running_while_writes_fail() -> None:
    """Unreachable: every attempt fails, the task stays alive, and stop() returns."""
    counter = {"n": 0}

    def snapshot() -> dict[str, Any]:
        counter["n"] += 1
        return broker(state="Enabled", iteratorAgeMs=counter["n"])

    patch = Recorder(fail=ConnectionRefusedError("connection refused"))
    reporter = StatusReporter(snapshot, patch, "team-a/orders", interval=0.001)
    reporter.start()
    assert await asyncio.to_thread(patch.attempted_thrice.wait, 30)
    await reporter.stop()
    assert patch.writes == []


def test_settings_and_missing_credentials_turn_reporting_off(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def settings(**environ: str) -> WorkerSettings:
        return WorkerSettings.from_environ(environ)

    assert settings().status_interval == 5.0
    assert settings(LAMINA_STATUS_INTERVAL="2.5").status_interval == 2.5
    assert settings(LAMINA_STATUS_INTERVAL="soon").status_interval == 5.0
    assert (
        mapping_reporter(dict, "lamina.dev/v1alpha1", "ns", "m", settings(LAMINA_STATUS_INTERVAL="0")) is None
    )
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config either
    assert mapping_reporter(dict, "lamina.dev/v1alpha1", "ns", "m", settings()) is None  # not in a pod
    missing = settings(KUBECONFIG=str(tmp_path / "missing"))
    assert mapping_reporter(dict, "lamina.dev/v1alpha1", "ns", "m", missing) is None
