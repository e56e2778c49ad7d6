"""Nothing is lost when the worker dies mid-batch or the broker restarts mid-stream."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from .conftest import KINDS, Kit, TestFunction, eventually

pytestmark = pytest.mark.brokers

WORKER_SCRIPT = Path(__file__).with_name("esm_worker_proc.py")


@pytest.mark.parametrize("how", ["cancelled", "killed"])
async def test_worker_lost_mid_batch_loses_nothing(kit: Kit, function, running, how, tmp_path):
    src, esm = kit.name("in"), f"esm-{kit.tag}"
    bodies = [f"r{i:02d}" for i in range(20)]
    await kit.publish(src, bodies)

    if how == "killed":
        marker = tmp_path / "in-flight.json"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(WORKER_SCRIPT), kit.kind, kit.url, src, esm, str(marker)
        )
        try:
            await eventually(marker.exists, what="the worker process to receive a batch")
        finally:
            proc.kill()
            await proc.wait()
        in_flight = json.loads(marker.read_text())
    else:
        hanging = TestFunction()
        hanging.hold = asyncio.Event()  # never set: the function never answers
        first = kit.worker(hanging, src, esm=esm, batch_size=5)
        first.start()
        await eventually(lambda: hanging.batches, what="the first worker to receive a batch")
        await first.stop(grace_seconds=0.1)  # abandons the batch without acknowledging it
        in_flight = hanging.bodies(0)
    assert in_flight == bodies[:5] or not kit.ordered

    running(kit.worker(function, src, esm=esm, batch_size=5))
    await eventually(lambda: set(function.succeeded) == set(bodies), what="every record processed")
    assert set(in_flight) <= set(function.succeeded)
    if kit.ordered:
        assert function.succeeded == bodies  # the abandoned batch comes first, in order
    redelivered = [r for batch in function.batches for r in batch if r["body"] in in_flight]
    # Kafka counts no deliveries: a record read again from the last commit is new to it.
    if kit.kind != "kafka" and (kit.kind != "redis" or how == "killed"):
        assert all(int(r["attributes"]["ApproximateReceiveCount"]) >= 2 for r in redelivered), redelivered


@pytest.mark.parametrize("kind", KINDS)
async def test_broker_restart_mid_stream_loses_nothing(kind, private_server, running):
    server = private_server(kind)
    kit = Kit(kind, server)
    function = TestFunction()
    src = kit.name("in")
    first = [f"a{i:02d}" for i in range(12)]
    await kit.publish(src, first)
    function.hold = asyncio.Event()
    worker = running(kit.worker(function, src, batch_size=5))
    await eventually(lambda: function.batches, what="a batch in flight")

    await server.arestart()  # while the function still holds its batch
    function.hold.set()
    second = [f"b{i:02d}" for i in range(12)]
    await kit.publish(src, second)

    await eventually(lambda: set(function.succeeded) >= set(first + second), what="every record processed")
    assert set(function.succeeded) == set(first + second)
    await eventually(lambda: worker.status.state == "Enabled", what="the worker back to Enabled")
    await worker.stop()
    await eventually(
        lambda: _zero(kit.unacknowledged(src, worker.config.name)), what="everything acknowledged in the end"
    )


async def _zero(count) -> bool:
    return await count == 0


async def test_unreachable_failure_destination_holds_the_record_until_it_is_back(
    redis_server, private_server, running
):
    from lamina.api import Endpoint
    from lamina.eventsources.factory import make_sink
    from tests.support import brokers

    kit = Kit("redis", redis_server)
    dlq_server = private_server("redis")
    src = kit.name("in")
    await dlq_server.astop()  # the destination is down when the record fails
    function = TestFunction()
    await kit.publish(src, ["poison-waits"])
    worker = kit.worker(function, src, batch_size=1, maximum_retry_attempts=0)
    dlq = Endpoint.model_validate({"redis": {"url": dlq_server.url, "stream": "dlq"}})
    worker.dlq = make_sink(dlq, dlq_server.url)
    running(worker)
    await eventually(
        lambda: worker.status.last_processing_result == "PROBLEM: onFailure destination unavailable",
        what="the destination reported unavailable",
    )
    assert await kit.unacknowledged(src, worker.config.name) == 1

    await dlq_server.astart()
    await eventually(lambda: worker.status.records_dead_lettered == 1, what="dead-lettered once it is back")
    ((body, headers),) = await brokers.read_all("redis", dlq_server.url, "dlq")
    assert json.loads(body)["record"]["body"] == "poison-waits"
    assert headers["lamina-condition"] == "RetryAttemptsExhausted"
    await eventually(
        lambda: _zero(kit.unacknowledged(src, worker.config.name)), what="acknowledged after the write"
    )
