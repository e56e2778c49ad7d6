"""Records per second through a RabbitMQ mapping whose function takes time, by maximumConcurrency.

    .venv/bin/python benchmarks/esm_concurrency.py [--records 2000] [--batch-size 10]
        [--function-ms 20] [--concurrency 1,4,16]

A function that spends ``--function-ms`` per batch (waiting, as one calling a database would) bounds a
one-batch-at-a-time mapping to batch_size / function time; ``scalingConfig.maximumConcurrency`` runs
that many batches at once. Starts a private loopback rabbitmq-server, preloads the queue, runs the
mapping (lamina.eventsources.runners.BrokerMapping, as local mode and the cluster worker do) until
every record was processed, and checks that every record arrived and none is left in the queue.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lamina.api import EventSourceMapping, parse_object  # noqa: E402
from lamina.eventsources.runners import BrokerMapping  # noqa: E402
from lamina_runtime.protocol import InvocationResult  # noqa: E402
from tests.support import brokers  # noqa: E402


class SlowFunction:
    def __init__(self, seconds: float, expect: int) -> None:
        self.seconds = seconds
        self.expect = expect
        self.seen: set[str] = set()
        self.all_seen = asyncio.Event()

    async def __call__(
        self, function_key: str, payload: bytes, request_id: str | None = None
    ) -> InvocationResult:
        records = json.loads(payload)["Records"]
        await asyncio.sleep(self.seconds)
        self.seen.update(r["body"] for r in records)
        if len(self.seen) >= self.expect:
            self.all_seen.set()
        return InvocationResult("bench", b"null")


async def never(*_: object) -> None:
    raise AssertionError("nothing is enqueued in this benchmark")


def mapping(url: str, queue: str, batch: int, concurrency: int) -> EventSourceMapping:
    spec: dict = {
        "functionName": "fn",
        "source": {"rabbitmq": {"url": url, "queue": queue}},
        "batchSize": batch,
    }
    if concurrency > 1:
        spec["scalingConfig"] = {"maximumConcurrency": concurrency}
    esm = parse_object(
        {
            "apiVersion": "lamina.dev/v1alpha1",
            "kind": "EventSourceMapping",
            "metadata": {"name": f"bench-{queue}", "namespace": "default"},
            "spec": spec,
        }
    )
    assert isinstance(esm, EventSourceMapping)
    return esm


async def run_one(url: str, records: int, batch: int, function_s: float, concurrency: int) -> float:
    queue = f"conc-{concurrency}-{uuid.uuid4().hex[:6]}"
    bodies = [json.dumps({"n": i}).encode() for i in range(records)]
    for start in range(0, records, 5_000):
        await brokers.publish("rabbitmq", url, queue, bodies[start : start + 5_000])
    function = SlowFunction(function_s, records)
    runner = BrokerMapping(mapping(url, queue, batch, concurrency), function, never, lambda t, ns: str(t.url))
    with contextlib.redirect_stdout(io.StringIO()):  # the mapping's state lines
        started = time.perf_counter()
        await runner.start()
        await asyncio.wait_for(function.all_seen.wait(), 600)
        elapsed = time.perf_counter() - started
        await runner.stop()
    assert function.seen == {b.decode() for b in bodies}, "a record is missing"
    left = await brokers.unacknowledged("rabbitmq", url, queue, "")
    assert left == 0, f"{left} records left in the queue"
    return records / elapsed


async def main(records: int, batch: int, function_ms: float, levels: list[int]) -> int:
    logging.basicConfig(level=logging.WARNING)
    server = brokers.server_for("rabbitmq", Path(tempfile.mkdtemp(prefix="lamina-bench-rmq-")))
    server.start()
    try:
        print(f"rabbitmq, {records} records, batch {batch}, function {function_ms:.0f} ms per batch")
        for level in levels:
            rate = await run_one(server.url, records, batch, function_ms / 1000, level)
            bound = batch * level / (function_ms / 1000)
            print(f"  maximumConcurrency {level:>4}: {rate:8.0f} records/s  (ideal {bound:8.0f}), 0 lost")
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--function-ms", type=float, default=20.0)
    parser.add_argument("--concurrency", default="1,4,16")
    a = parser.parse_args()
    levels = [int(x) for x in a.concurrency.split(",")]
    sys.exit(asyncio.run(main(a.records, a.batch_size, a.function_ms, levels)))
