"""Stopping `lamina local` (SIGTERM from a process manager or a container runtime, Ctrl-C): it listens
no more, lets what it accepted finish within --drain-seconds, leaves no process behind and exits 0.

The functions hold each call until the test creates a file, so "in flight at SIGTERM" is a fact the
test establishes, not a race it hopes to win."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import urllib.request
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
import redis

from tests.support.local_mode import LocalServer
from tests.support.waiting import wait_for

MANIFESTS = Path(__file__).parent / "stop_manifests"


def descendants(root: int) -> set[tuple[int, str]]:
    """The processes below ``root`` (pid, start time: a pid reused later is not the same process)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                children.setdefault(int(stat[1]), []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            stat = _stat(pid)
            if stat is not None:
                found.add((pid, stat[19]))
                todo.append(pid)
    return found


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command (state first), or None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def alive(process: tuple[int, str]) -> bool:
    """Whether that very process still exists and has not exited (a zombie has)."""
    stat = _stat(process[0])
    return stat is not None and stat[19] == process[1] and stat[0] != "Z"


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def status(server: LocalServer) -> dict[str, Any]:
    return json.loads(urllib.request.urlopen(f"{server.url}/lamina/status", timeout=10).read())


@pytest.fixture
def servers(tmp_path: Path):
    started: list[LocalServer] = []

    def start() -> LocalServer:
        server = LocalServer([MANIFESTS], tmp_path / "state", extra_args=["--drain-seconds", "120"])
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.kill()


def test_sigterm_finishes_the_calls_and_events_in_flight_refuses_new_ones_and_leaves_no_process(
    servers, tmp_path: Path
) -> None:
    server = servers()
    client = server.lambda_client(read_timeout=300)
    log = tmp_path / "events.log"

    def event(name: str) -> dict[str, str]:
        return {"id": name, "log": str(log), "release": str(tmp_path / f"release-{name}")}

    # Two async events of a function with reserved concurrency 1: "a" runs, "b" waits its turn.
    for name in ("a", "b"):
        answer = client.invoke(
            FunctionName="held-events", InvocationType="Event", Payload=json.dumps(event(name))
        )
        assert answer["StatusCode"] == 202
    wait_for(lambda: log.exists() and "started a" in log.read_text())
    # A synchronous call in flight.
    started, release = tmp_path / "held-started", tmp_path / "held-release"
    answers: list[Any] = []

    def call() -> None:
        payload = {"id": "sync-1", "started": str(started), "release": str(release)}
        try:
            response = client.invoke(FunctionName="held", Payload=json.dumps(payload))
            answers.append((response["StatusCode"], json.loads(response["Payload"].read()), response))
        except Exception as exc:  # reported by the assertion below
            answers.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    wait_for(started.exists)
    wait_for(lambda: started.read_text().endswith("}"))
    handler_child = int(json.loads(started.read_text())["child"])
    assert server.proc is not None
    processes = descendants(server.proc.pid)
    assert handler_child in {pid for pid, _ in processes}

    server.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: refuses_connections(server.port))
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        client.invoke(FunctionName="held", Payload=b"{}")
    assert server.proc.poll() is None  # still answering what it took

    release.touch()
    (tmp_path / "release-a").touch()
    caller.join(120)
    [(status_code, payload, response)] = answers
    assert (status_code, payload) == (200, {"answered": "sync-1"})
    assert "FunctionError" not in response
    assert server.proc.wait(120) == 0
    assert "lamina local: stopped" in server.output()
    assert [p for p in processes if alive(p)] == []  # environments and the handler's own child

    # The event that ran finished once and is not run again; the one that waited was kept and runs now.
    (tmp_path / "release-b").touch()
    again = servers()
    wait_for(lambda: "done b" in log.read_text() and status(again)["asyncPending"] == 0)
    assert sorted(log.read_text().splitlines()) == ["done a", "done b", "started a", "started b"]
    again.proc.send_signal(signal.SIGTERM)
    assert again.proc.wait(120) == 0


MAPPED = """apiVersion: lamina.dev/v1alpha1
kind: Function
metadata:
  name: consume
spec:
  handler: index.handler
  timeoutSeconds: 300
  code:
    inline: |
      import json, os, time

      def handler(event, context):
          for record in event["Records"]:
              body = json.loads(record["body"])
              open("LOG", "a").write(f"started {body['id']}\\n")
              while not os.path.exists(f"LOG.release-{body['id']}"):
                  time.sleep(0.02)
              open("LOG", "a").write(f"done {body['id']}\\n")
---
apiVersion: lamina.dev/v1alpha1
kind: EventSourceMapping
metadata:
  name: orders
spec:
  functionName: consume
  source:
    redis:
      url: REDIS_URL
      stream: orders
  batchSize: 1
"""


@pytest.mark.brokers
def test_sigterm_acknowledges_a_batch_that_finishes_in_the_grace_and_leaves_a_cut_one_to_the_broker(
    private_redis, tmp_path: Path
) -> None:
    log = tmp_path / "records.log"
    manifests = tmp_path / "m"
    manifests.mkdir()
    (manifests / "orders.yaml").write_text(
        MAPPED.replace("REDIS_URL", private_redis.url).replace("LOG", str(log))
    )
    stream = redis.Redis.from_url(private_redis.url)

    def local(drain_seconds: str) -> LocalServer:
        args = ["--drain-seconds", drain_seconds]
        return LocalServer([manifests], tmp_path / "state", extra_args=args).start()

    def pending() -> int:
        return int(stream.xpending("orders", "lamina-orders")["pending"])

    def stop(server: LocalServer) -> None:
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(120) == 0

    # A batch in flight at SIGTERM that finishes within the grace is acknowledged.
    stream.xadd("orders", {"body": json.dumps({"id": 1})})
    server = local("120")
    try:
        wait_for(lambda: log.exists() and "started 1" in log.read_text())
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: refuses_connections(server.port))
        Path(f"{log}.release-1").touch()
        assert server.proc.wait(120) == 0
    finally:
        server.kill()
    assert pending() == 0
    # One still running when the grace ends is not: the broker keeps it, and the next run takes it.
    stream.xadd("orders", {"body": json.dumps({"id": 2})})
    server = local("0")
    try:
        wait_for(lambda: "started 2" in log.read_text())
        stop(server)
    finally:
        server.kill()
    assert pending() == 1
    Path(f"{log}.release-2").touch()
    server = local("120")
    try:
        wait_for(lambda: "done 2" in log.read_text() and pending() == 0)
        stop(server)
    finally:
        server.kill()
    assert log.read_text().splitlines() == ["started 1", "done 1", "started 2", "started 2", "done 2"]
