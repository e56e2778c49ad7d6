"""Records per second through an EventSourceMapping worker with a no-op function, per broker.

    .venv/bin/python benchmarks/eventsource_throughput.py [--kinds redis,nats,rabbitmq]
        [--batch-sizes 1,10,100] [--records N]

Starts private loopback brokers (tests/support/brokers.py), preloads each source with N records,
then times one worker from start until every record is acknowledged. The function parses the event
(as any handler would) and records the message ids it saw; the run checks that every record arrived
and that the broker holds nothing unacknowledged afterwards. Default N: 2,000 at batch 1, 10,000 at
batch 10, 20,000 at batch 100.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lamina.api import EventSource  # noqa: E402
from lamina.eventsources.config import MappingConfig  # noqa: E402
from lamina.eventsources.factory import consumer_name, make_source  # noqa: E402
from lamina.eventsources.mapping import MappingWorker  # noqa: E402
from lamina.eventsources.timing import Timing  # noqa: E402
from lamina_runtime.protocol import InvocationResult  # noqa: E402
from tests.support import brokers  # noqa: E402

DEFAULT_RECORDS = {1: 2_000, 10: 10_000, 100: 20_000}
KEY = {"redis": "stream", "nats": "subject", "rabbitmq": "queue"}


class NoOp:
    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.deliveries = 0

    async def __call__(
        self, function_name: str, payload: bytes, request_id: str | None = None
    ) -> InvocationResult:
        records = json.loads(payload)["Records"]
        self.deliveries += len(records)
        self.seen.update(r["body"] for r in records)
        return InvocationResult("bench", b"null")


async def preload(kind: str, url: str, name: str, count: int) -> list[bytes]:
    bodies = [json.dumps({"n": i, "pad": "x" * 64}).encode() for i in range(count)]
    for start in range(0, count, 5_000):
        await brokers.publish(kind, url, name, bodies[start : start + 5_000])
    return bodies


async def run_one(kind: str, url: str, batch: int, count: int) -> dict:
    tag = f"bench{batch}x{count}{int(time.time() * 1000) % 100000}"
    name = f"bench.{tag}" if kind == "nats" else f"bench-{tag}"
    esm = f"esm-{tag}"
    bodies = await preload(kind, url, name, count)
    function = NoOp()
    config = MappingConfig(name=esm, function_name="noop", batch_size=batch)
    endpoint = EventSource.model_validate({kind: {"url": url, KEY[kind]: name}})
    source = make_source(endpoint, url, esm_name=esm, batch_size=batch)
    worker = MappingWorker(config, source, function, timing=Timing(poll_wait=0.2))
    started = time.perf_counter()
    worker.start()
    while worker.status.records_succeeded < count:
        await asyncio.sleep(0.01)
        if worker.status.broker_errors > 10:
            break
    elapsed = time.perf_counter() - started
    await worker.stop()
    left = await brokers.unacknowledged(kind, url, name, consumer_name(esm))
    lost = len({b.decode() for b in bodies} - function.seen)
    return {
        "kind": kind,
        "batch": batch,
        "records": count,
        "seconds": elapsed,
        "rate": count / elapsed,
        "lost": lost,
        "duplicates": function.deliveries - len(function.seen),
        "unacked": left,
        "invocations": worker.status.invocations,
    }


async def main(kinds: list[str], batch_sizes: list[int], records: int | None) -> int:
    logging.basicConfig(level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lamina-bench-") as tmp:
        for kind in kinds:
            if not brokers.available(kind):
                print(f"skipping {kind}: {brokers.BINARIES[kind]} not installed", file=sys.stderr)
                continue
            server = brokers.server_for(kind, Path(tmp) / kind)
            await server.astart()
            try:
                for batch in batch_sizes:
                    count = records or DEFAULT_RECORDS.get(batch, 10_000)
                    row = await run_one(kind, server.url, batch, count)
                    rows.append(row)
                    print(
                        f"  {kind:<9} batch {batch:>4}: {row['rate']:>9,.0f} records/s",
                        file=sys.stderr,
                        flush=True,
                    )
            finally:
                await asyncio.to_thread(server.close)
    print()
    head = ("source", "batch", "records", "seconds", "records/s")
    print("| {:<9} | {:>5} | {:>7} | {:>7} | {:>9} | mean batch | lost | dup | unacked |".format(*head))
    print(f"|{'-' * 11}|{'-' * 7}|{'-' * 9}|{'-' * 9}|{'-' * 11}|------------|------|-----|---------|")
    for r in rows:
        print(
            f"| {r['kind']:<9} | {r['batch']:>5} | {r['records']:>7} | {r['seconds']:>7.2f} |"
            f" {r['rate']:>9,.0f} | {r['records'] / max(1, r['invocations']):>10.1f} |"
            f" {r['lost']:>4} | {r['duplicates']:>3} | {r['unacked']:>7} |"
        )
    bad = [r for r in rows if r["lost"] or r["unacked"]]
    redis100 = [r for r in rows if r["kind"] == "redis" and r["batch"] == 100]
    if redis100:
        verdict = "meets" if redis100[0]["rate"] >= 5_000 else "MISSES"
        print(f"\nredis at batch 100: {redis100[0]['rate']:,.0f} records/s ({verdict} the 5,000/s target)")
    if bad:
        print("LOST OR UNACKNOWLEDGED RECORDS:", bad)
        return 1
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default="redis,nats,rabbitmq")
    parser.add_argument("--batch-sizes", default="1,10,100")
    parser.add_argument("--records", type=int, default=None, help="records per run (default by batch size)")
    args = parser.parse_args()
    sys.exit(
        asyncio.run(main(args.kinds.split(","), [int(b) for b in args.batch_sizes.split(",")], args.records))
    )
