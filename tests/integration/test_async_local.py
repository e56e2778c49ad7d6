"""Event invocations in `lamina local`: retries, destinations, throttling, and SIGKILL durability."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.local_mode import LocalServer
from tests.support.waiting import wait_for

MANIFESTS = Path(__file__).parent / "async_manifests"


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalServer]:
    srv = LocalServer(
        [MANIFESTS], tmp_path / "state", extra_args=["--async-retry-base-seconds", "0.2"]
    ).start()
    yield srv
    srv.kill()


def send(client, name: str, payload: dict) -> str:
    response = client.invoke(FunctionName=name, InvocationType="Event", Payload=json.dumps(payload).encode())
    assert response["StatusCode"] == 202
    return response["ResponseMetadata"]["RequestId"]


def test_function_errors_are_retried_then_recorded_on_failure(server: LocalServer, tmp_path: Path) -> None:
    out = tmp_path / "fails"
    request_id = send(server.lambda_client(), "always-fails", {"path": str(out), "id": "e1"})
    records_file = Path(str(out) + ".records")
    wait_for(lambda: bool(lines(records_file)))
    assert len(lines(out)) == 3  # the first attempt and maximumRetryAttempts (2) retries
    record = lines(records_file)[0]
    assert record["version"] == "1.0"
    assert record["requestContext"]["requestId"] == request_id
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 3
    assert record["requestPayload"] == {"path": str(out), "id": "e1"}
    assert record["responseContext"]["functionError"] == "Unhandled"
    assert record["responsePayload"]["errorMessage"] == "boom e1"


def test_success_goes_to_on_success(server: LocalServer, tmp_path: Path) -> None:
    out = tmp_path / "ok"
    request_id = send(server.lambda_client(), "recorder", {"path": str(out), "id": "s1"})
    records_file = Path(str(out) + ".records")
    wait_for(lambda: bool(lines(records_file)))
    record = lines(records_file)[0]
    assert record["requestContext"]["condition"] == "Success"
    assert record["requestContext"]["requestId"] == request_id
    assert record["responsePayload"] == {"recorded": "s1"}


def test_throttled_events_wait_instead_of_being_dropped(server: LocalServer, tmp_path: Path) -> None:
    out = tmp_path / "throttled"
    client = server.lambda_client()
    ids = [f"t{i}" for i in range(8)]
    for event_id in ids:  # reservedConcurrency 1 and 0.2 s each: most attempts are throttled first
        send(client, "recorder", {"path": str(out), "id": event_id, "sleep": 0.2})
    wait_for(lambda: {r["id"] for r in lines(out)} == set(ids), timeout=120)
    assert "async_events_dropped" not in [line for line in server.output().splitlines() if "dropped" in line]


def test_no_event_is_lost_when_local_mode_is_killed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    out = tmp_path / "durable"
    first = LocalServer([MANIFESTS], state, extra_args=["--async-retry-base-seconds", "0.2"]).start()
    client = first.lambda_client()
    ids = [f"d{i}" for i in range(40)]
    for event_id in ids:
        send(client, "recorder", {"path": str(out), "id": event_id, "sleep": 0.05})
    first.kill()  # SIGKILL while most events are still queued
    done_before = {r["id"] for r in lines(out)}
    assert done_before != set(ids), "the kill came too late to test anything"
    second = LocalServer(
        [MANIFESTS], state, port=first.port, extra_args=["--async-retry-base-seconds", "0.2"]
    ).start()
    try:
        wait_for(lambda: {r["id"] for r in lines(out)} == set(ids), timeout=120)
    finally:
        second.kill()


def test_a_second_local_mode_on_the_same_state_dir_is_refused(server: LocalServer) -> None:
    second = LocalServer([MANIFESTS], server.state_dir)
    with pytest.raises(RuntimeError, match="is used by another lamina local"):
        second.start()
