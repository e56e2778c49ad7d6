"""EventSourceMappings in `lamina local`: a Redis stream consumer with a DLQ, and a live schedule."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import redis

from tests.support.local_mode import REPO, LocalServer
from tests.support.waiting import wait_for

pytestmark = pytest.mark.brokers


def test_redis_stream_consumer_with_bisect_and_dead_letters(private_redis, tmp_path: Path) -> None:
    manifest = (REPO / "docs/examples/orders-from-redis.yaml").read_text()
    manifest = manifest.replace("redis://127.0.0.1:6379/0", private_redis.url)
    manifest = manifest.replace(
        'print("processed order", order.get("id"))',
        f'open({str(tmp_path / "done")!r}, "a").write(str(order["id"]) + "\\n")',
    )
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "orders.yaml").write_text(manifest)
    client = redis.Redis.from_url(private_redis.url)
    for i in range(20):
        amount = -1 if i == 7 else 10 + i
        client.xadd("orders", {"body": json.dumps({"id": i, "amount": amount})})
    server = LocalServer([tmp_path / "m"], tmp_path / "state").start()
    try:
        done = tmp_path / "done"
        wait_for(
            lambda: (
                client.xlen("orders-dlq") == 1 and done.exists() and len(set(done.read_text().split())) == 19
            )
        )
        assert set(done.read_text().split()) == {str(i) for i in range(20) if i != 7}
        [(_, fields)] = client.xrange("orders-dlq")
        record = json.loads(fields[b"body"])
        assert record["requestContext"]["condition"] == "RetryAttemptsExhausted"
        assert "negative amount" in json.dumps(record["responsePayload"])
        assert json.loads(record["record"]["body"])["id"] == 7
        status = json.loads(urllib.request.urlopen(f"{server.url}/lamina/status", timeout=10).read())
        [mapping] = status["mappings"]
        assert mapping["name"] == "orders"
        assert mapping["state"] == "Enabled"
        assert mapping["counters"]["recordsDeadLettered"] == 1
        pending = client.xpending("orders", "lamina-orders")
        assert pending["pending"] == 0  # everything was acknowledged: succeeded or dead-lettered
    finally:
        server.stop()


def test_rate_schedule_fires_on_time(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "schedule.yaml").write_text(
        (REPO / "examples/schedule.yaml")
        .read_text()
        .replace(
            "print(f\"report for {event['time']} ({event['detail-type']})\")",
            f'open({str(tmp_path / "fired")!r}, "a").write(event["time"] + "\\n")',
        )
    )
    server = LocalServer([tmp_path / "m"], tmp_path / "state").start()
    try:
        fired = tmp_path / "fired"
        wait_for(fired.exists, timeout=90)  # rate(1 minute) ticks on minute boundaries
        [tick] = fired.read_text().split()
        assert tick.endswith(":00Z")
        fired_at = fired.stat().st_mtime
        from datetime import datetime

        scheduled = datetime.fromisoformat(tick.replace("Z", "+00:00")).timestamp()
        assert 0 <= fired_at - scheduled < 30  # fired after its tick, not a minute late
    finally:
        server.stop()
