"""`lamina worker esm` as its Deployment runs it: configured only through its environment, invoking
through a gateway's Invoke API (here `lamina local`'s), with real Redis for the stream and tick claims."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from lamina.api.common import secret_env_name
from tests.support.local_mode import REPO, LocalServer
from tests.support.waiting import wait_for

pytestmark = pytest.mark.brokers

CONSUMER = """
apiVersion: lamina.dev/v1alpha1
kind: Function
metadata: {name: consumer}
spec:
  handler: index.handler
  code:
    inline: |
      import json
      def handler(event, context):
          for record in event.get("Records", [event]):
              body = record.get("body", json.dumps(record))
              if "poison" in body:
                  raise ValueError("poison record")
              with open(OUT, "a") as f:
                  f.write(body + "\\n")
"""


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[LocalServer, Path]]:
    out = tmp_path / "out.txt"
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "consumer.yaml").write_text(CONSUMER.replace("OUT", repr(str(out))))
    server = LocalServer([tmp_path / "m"], tmp_path / "state").start()
    yield server, out
    server.stop()


def start_worker(esm: dict, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lamina.cli",
            "worker",
            "esm",
            "--namespace",
            "default",
            "--name",
            esm["metadata"]["name"],
        ],
        env={**os.environ, "LAMINA_ESM": json.dumps(esm), "PYTHONUNBUFFERED": "1", **env},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(30)


def test_stream_consumer_invokes_through_the_gateway(private_redis, gateway, tmp_path: Path) -> None:
    server, out = gateway
    esm = {
        "apiVersion": "lamina.dev/v1alpha1",
        "kind": "EventSourceMapping",
        "metadata": {"name": "orders", "namespace": "default"},
        "spec": {
            "functionName": "consumer",
            "batchSize": 5,
            "maximumRetryAttempts": 0,
            "bisectBatchOnFunctionError": True,
            "source": {"redis": {"url": private_redis.url, "stream": "orders"}},
            "destinationConfig": {
                "onFailure": {
                    "redis": {"urlFrom": {"secretKeyRef": {"name": "dlq", "key": "url"}}, "stream": "dlq"}
                }
            },
        },
    }
    client = redis.Redis.from_url(private_redis.url)
    for i in range(12):
        client.xadd("orders", {"body": "poison" if i == 4 else f"order-{i}"})
    worker = start_worker(
        esm,
        {"LAMINA_GATEWAY_URL": server.url, secret_env_name("dlq", "url"): private_redis.url},
        tmp_path / "worker.log",
    )
    try:
        expected = {f"order-{i}" for i in range(12) if i != 4}
        # Bisecting re-runs the good half of a failed batch: at-least-once, so compare as sets.
        wait_for(
            lambda: client.xlen("dlq") == 1 and out.exists() and set(out.read_text().split()) == expected
        )
        [(_, fields)] = client.xrange("dlq")
        assert json.loads(fields[b"body"])["record"]["body"] == "poison"
    finally:
        assert stop(worker) == 0, (tmp_path / "worker.log").read_text()


def test_two_schedule_replicas_fire_each_tick_once(private_redis, gateway, tmp_path: Path) -> None:
    server, out = gateway
    esm = {
        "apiVersion": "lamina.dev/v1alpha1",
        "kind": "EventSourceMapping",
        "metadata": {"name": "tick", "namespace": "default"},
        "spec": {
            "functionName": "consumer",
            "source": {"schedule": {"expression": "rate(1 minute)", "input": {"tick": True}}},
        },
    }
    env = {"LAMINA_GATEWAY_URL": server.url, "LAMINA_REDIS_URL": private_redis.url}
    workers = [start_worker(esm, env, tmp_path / f"worker-{i}.log") for i in range(2)]
    try:
        wait_for(out.exists, timeout=90)
        time.sleep(3)  # room for a second (duplicate) firing to show up
        assert out.read_text().splitlines() == [json.dumps({"tick": True})]
        fired = sum("fired rate(1 minute)" in (tmp_path / f"worker-{i}.log").read_text() for i in range(2))
        assert fired == 1
    finally:
        for worker in workers:
            stop(worker)
