"""Records per second through an EventSourceMapping worker with a no-op function, per broker.

    .venv/bin/python benchmarks/eventsource_throughput.py
        [--kinds redis,nats,rabbitmq,kafka,sqs,sqs-fifo] [--batch-sizes 1,10,100] [--records N]
        [--fifo-groups 10] [--fifo-concurrency 10]

Starts private loopback brokers (tests/support/brokers.py; Kafka in KRaft mode and ElasticMQ from
their Maven Central jars), preloads each source with N records, then times the mapping's worker(s)
from start until every record is acknowledged. The function parses the event (as any handler would)
and records the bodies it saw; the run checks that every record arrived and that the broker holds
nothing unacknowledged afterwards. Default N: 2,000 at batch 1, 10,000 at batch 10, 20,000 at batch
100. SQS batches over 10 gather receives within a 1 s window (Lambda requires a window there);
``sqs-fifo`` spreads the records over ``--fifo-groups`` message groups and runs
``--fifo-concurrency`` workers (scalingConfig.maximumConcurrency), at most batch 10 (FIFO's limit).

Each row also gives the CPU time per record of this process (the worker and the function; the
preloading is before the clock starts) and of the broker's processes, with the load average: on a
shared machine the rate follows the load, CPU time per record hardly does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
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
from tests.support.brokers import normalized_records  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import cpu_seconds  # noqa: E402

DEFAULT_RECORDS = {1: 2_000, 10: 10_000, 100: 20_000}
KEY = {"redis": "stream", "nats": "subject", "rabbitmq": "queue", "kafka": "topic"}
SERVER = {"sqs-fifo": "sqs"}


class NoOp:
    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.deliveries = 0

    async def __call__(
        self, function_name: str, payload: bytes, request_id: str | None = None
    ) -> InvocationResult:
        records = normalized_records(payload)
        self.deliveries += len(records)
        self.seen.update(r["body"] for r in records)
        return InvocationResult("bench", b"null")


async def preload(kind: str, url: str, name: str, count: int) -> list[bytes]:
    bodies = [json.dumps({"n": i, "pad": "x" * 64}).encode() for i in range(count)]
    for start in range(0, count, 5_000):
        await brokers.publish(kind, url, name, bodies[start : start + 5_000])
    return bodies


async def preload_sqs(server: brokers.ElasticMQServer, url: str, count: int, groups: int) -> list[bytes]:
    """SendMessageBatch from a few threads (boto3 is the producer, as the tests use it)."""
    bodies = [json.dumps({"n": i, "pad": "x" * 64}).encode() for i in range(count)]

    def send(part: list[tuple[int, bytes]]) -> None:
        client = server.client()
        for start in range(0, len(part), 10):
            entries = []
            for i, body in part[start : start + 10]:
                entry = {"Id": str(i), "MessageBody": body.decode()}
                if groups:
                    entry.update(MessageGroupId=f"g{i % groups}", MessageDeduplicationId=str(i))
                entries.append(entry)
            failed = client.send_message_batch(QueueUrl=url, Entries=entries).get("Failed")
            if failed:
                raise RuntimeError(f"SendMessageBatch failed: {failed[:2]}")

    numbered = list(enumerate(bodies))
    if groups:  # per group in order: one sender keeps each group's order
        await asyncio.to_thread(send, numbered)
    else:
        threads = 8
        await asyncio.gather(*(asyncio.to_thread(send, numbered[i::threads]) for i in range(threads)))
    return bodies


def sqs_left(server: brokers.ElasticMQServer, url: str) -> int:
    attrs = server.client().get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


async def run_one(
    kind: str, server: brokers.BrokerServer, batch: int, count: int, args: argparse.Namespace
) -> dict:
    url = server.url
    tag = f"bench{batch}x{count}{int(time.time() * 1000) % 100000}"
    name = f"bench.{tag}" if kind == "nats" else f"bench-{tag}"
    esm = f"esm-{tag}"
    workers_n = 1
    window = 0
    if kind in ("sqs", "sqs-fifo"):
        assert isinstance(server, brokers.ElasticMQServer)
        fifo = kind == "sqs-fifo"
        attributes = {"VisibilityTimeout": "30"}
        if fifo:
            attributes.update(FifoQueue="true")
        queue = server.client().create_queue(
            QueueName=name + (".fifo" if fifo else ""), Attributes=attributes
        )
        name = queue["QueueUrl"]
        bodies = await preload_sqs(server, name, count, args.fifo_groups if fifo else 0)
        endpoint = EventSource.model_validate({"sqs": {"queueUrl": name}})
        window = 1 if batch > 10 else 0
        workers_n = args.fifo_concurrency if fifo else 1
    else:
        bodies = await preload(kind, url, name, count)
        if kind == "kafka":
            endpoint = EventSource.model_validate({"kafka": {"bootstrapServers": [url], "topic": name}})
        else:
            endpoint = EventSource.model_validate({kind: {"url": url, KEY[kind]: name}})
    function = NoOp()
    config = MappingConfig(
        name=esm, function_name="noop", batch_size=batch, maximum_batching_window_seconds=window
    )
    workers = [
        MappingWorker(
            config,
            make_source(endpoint, url, esm_name=esm, batch_size=batch),
            function,
            timing=Timing(poll_wait=0.2),
        )
        for _ in range(workers_n)
    ]
    broker_pid = server.proc.pid if server.proc is not None else None
    cpu0 = cpu_seconds(), cpu_seconds(broker_pid, tree=True) if broker_pid else 0.0
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    while sum(w.status.records_succeeded for w in workers) < count:
        await asyncio.sleep(0.01)
        if sum(w.status.broker_errors for w in workers) > 10:
            break
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds() - cpu0[0], (cpu_seconds(broker_pid, tree=True) - cpu0[1]) if broker_pid else 0.0
    for worker in workers:
        await worker.stop()
    if kind in ("sqs", "sqs-fifo"):
        left = await asyncio.to_thread(sqs_left, server, name)  # type: ignore[arg-type]
    else:
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
        "invocations": sum(w.status.invocations for w in workers),
        "worker_us": cpu[0] / count * 1e6,
        "broker_us": cpu[1] / count * 1e6,
        "load": os.getloadavg()[0],
    }


async def main(args: argparse.Namespace) -> int:
    kinds: list[str] = args.kinds.split(",")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    records: int | None = args.records
    logging.basicConfig(level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lamina-bench-") as tmp:
        for kind in kinds:
            server_kind = SERVER.get(kind, kind)
            if not brokers.available(server_kind):
                print(f"skipping {kind}: {brokers.BINARIES[server_kind]} not installed", file=sys.stderr)
                continue
            if server_kind == "sqs":
                server: brokers.BrokerServer = brokers.ElasticMQServer(
                    Path(tmp) / kind, persistent=args.sqs_persistent
                )
            else:
                server = brokers.server_for(server_kind, Path(tmp) / kind)
            await server.astart()
            try:
                for batch in batch_sizes:
                    if kind == "sqs-fifo" and batch > 10:
                        continue  # FIFO batches stop at 10
                    count = records or DEFAULT_RECORDS.get(batch, 10_000)
                    row = await run_one(kind, server, batch, count, args)
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
    print(
        "| {:<9} | {:>5} | {:>7} | {:>7} | {:>9} | mean batch | lost | dup | unacked "
        "| CPU/record worker | CPU/record broker | load |".format(*head)
    )
    print(
        f"|{'-' * 11}|{'-' * 7}|{'-' * 9}|{'-' * 9}|{'-' * 11}|------------|------|-----|---------"
        "|-------------------|-------------------|------|"
    )
    for r in rows:
        print(
            f"| {r['kind']:<9} | {r['batch']:>5} | {r['records']:>7} | {r['seconds']:>7.2f} |"
            f" {r['rate']:>9,.0f} | {r['records'] / max(1, r['invocations']):>10.1f} |"
            f" {r['lost']:>4} | {r['duplicates']:>3} | {r['unacked']:>7} |"
            f" {r['worker_us']:>14.0f} us | {r['broker_us']:>14.0f} us | {r['load']:>4.1f} |"
        )
    bad = [r for r in rows if r["lost"] or r["unacked"]]
    for kind, target in (("redis", 5_000), ("kafka", 10_000), ("sqs", 2_000), ("rabbitmq", 8_000)):
        at100 = [r for r in rows if r["kind"] == kind and r["batch"] == 100]
        if at100:
            verdict = "meets" if at100[0]["rate"] >= target else "MISSES"
            print(
                f"{kind} at batch 100: {at100[0]['rate']:,.0f} records/s ({verdict} the {target:,}/s target)"
            )
    if bad:
        print("LOST OR UNACKNOWLEDGED RECORDS:", bad)
        return 1
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default="redis,nats,rabbitmq,kafka,sqs,sqs-fifo")
    parser.add_argument("--batch-sizes", default="1,10,100")
    parser.add_argument("--records", type=int, default=None, help="records per run (default by batch size)")
    parser.add_argument("--fifo-groups", type=int, default=10, help="message groups of the sqs-fifo runs")
    parser.add_argument("--fifo-concurrency", type=int, default=10, help="workers of the sqs-fifo runs")
    parser.add_argument(
        "--sqs-persistent",
        action="store_true",
        help="ElasticMQ keeps messages on disk (H2), as the tests run it (default: in memory, its default)",
    )
    parser.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="event loop of the worker (uvloop, as the mapping worker process and lamina local run)",
    )
    options = parser.parse_args()
    if options.loop == "uvloop":
        import uvloop

        sys.exit(uvloop.run(main(options)))
    sys.exit(asyncio.run(main(options)))
