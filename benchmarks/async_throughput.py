"""Async (Event) invocation throughput: enqueue -> durable store -> dispatcher -> handler.

For each store (embedded sqlite; Redis Streams with ``appendfsync everysec`` and ``always``):

* enqueue: ``--events`` events written by ``--concurrency`` concurrent callers (as the gateway does
  for concurrent 202s), nothing consuming: enqueues/s and per-enqueue latency;
* end to end: a dispatcher with a no-op invoker is running while the same load is enqueued;
  events/s from the first enqueue to the last handler call, and the latency from the start of an
  enqueue to its handler call.

The invoker returns at once, so this measures the queue and the dispatcher, not the functions.
The end-to-end line also gives the CPU time per event of this process (enqueuers and dispatcher)
and of redis-server: on a shared machine rates follow the load, CPU per event hardly does.

Usage: python benchmarks/async_throughput.py [--events 3000] [--concurrency 32] [--stores sqlite,redis]
    [--fsync everysec,always] [--repeat 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from _common import cpu_seconds, free_port, summary

from lamina.asyncinvoke import AsyncDispatcher, EventInvokeConfig, QueuedEvent
from lamina.asyncinvoke.redis_store import RedisEventStore
from lamina.asyncinvoke.sqlite_store import SqliteEventStore
from lamina_runtime.protocol import InvocationResult


def start_redis(workdir: Path, fsync: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", "",
         "--appendonly", "yes", "--appendfsync", fsync],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


async def enqueue_all(
    enqueue: Callable[[int], Awaitable[None]], n: int, concurrency: int, started: list[float]
) -> list[float]:
    latencies: list[float] = []
    next_i = 0

    async def worker() -> None:
        nonlocal next_i
        while next_i < n:
            i = next_i
            next_i += 1
            t = time.perf_counter()
            started[i] = t
            await enqueue(i)
            latencies.append((time.perf_counter() - t) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def bench_enqueue(store, n: int, concurrency: int) -> tuple[float, list[float]]:
    started = [0.0] * n

    async def enqueue(i: int) -> None:
        await store.enqueue(QueuedEvent.new("bench/noop", b'{"i": %d}' % i))

    t0 = time.perf_counter()
    lat = await enqueue_all(enqueue, n, concurrency, started)
    return n / (time.perf_counter() - t0), lat


async def bench_end_to_end(
    store, n: int, concurrency: int, server_pid: int | None = None
) -> tuple[float, list[float]]:
    started = [0.0] * n
    handled = [0.0] * n
    count = 0
    done = asyncio.Event()

    async def noop(fn: str, payload: bytes, request_id: str | None = None) -> InvocationResult:
        nonlocal count
        i = int(payload[6:-1])
        handled[i] = time.perf_counter()
        count += 1
        if count == n:
            done.set()
        return InvocationResult("r", b"null")

    cfg = EventInvokeConfig()
    d = AsyncDispatcher(store, noop, lambda key: cfg, max_in_flight=64, poll_interval=0.05)
    await d.start()
    cpu0 = cpu_seconds(None), cpu_seconds(server_pid) if server_pid else 0.0
    try:
        t0 = time.perf_counter()
        await enqueue_all(lambda i: d.enqueue("bench/noop", b'{"i": %d}' % i), n, concurrency, started)
        await asyncio.wait_for(done.wait(), 600)
        elapsed = max(handled) - t0
        cpu = cpu_seconds(None) - cpu0[0], (cpu_seconds(server_pid) - cpu0[1]) if server_pid else 0.0
    finally:
        await d.stop()
    print(f"    dispatcher stats: {dict(d.stats)}")
    load = os.getloadavg()[0]
    server = f", redis-server {cpu[1] / n * 1e6:.0f} us" if server_pid else ""
    print(f"    CPU per event: this process {cpu[0] / n * 1e6:.0f} us{server} (load average {load:.1f})")
    if await store.pending_count() != 0:
        raise RuntimeError("events left in the store after the run")
    return n / elapsed, [(h - s) * 1000 for h, s in zip(handled, started, strict=True)]


async def run_store(
    label: str, make: Callable[[], object], n: int, concurrency: int, server_pid: int | None = None
) -> None:
    store = make()
    rate, lat = await bench_enqueue(store, n, concurrency)
    print(f"{label:28} enqueue     {rate:9.0f} events/s")
    print("  " + summary(f"{label} enqueue latency", lat))
    await store.close()
    store = make()
    rate, lat = await bench_end_to_end(store, n, concurrency, server_pid)
    print(f"{label:28} end to end  {rate:9.0f} events/s")
    print("  " + summary(f"{label} enqueue->handler", lat))
    await store.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--stores", default="sqlite,redis")
    ap.add_argument("--fsync", default="everysec,always", help="Redis appendfsync settings to run")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each store")
    args = ap.parse_args()
    stores = args.stores.split(",")
    print(f"{args.events} events, {args.concurrency} concurrent enqueuers, no-op invoker")
    with tempfile.TemporaryDirectory(prefix="lamina-async-bench-") as tmp:
        if "sqlite" in stores:
            await run_store(
                "sqlite (WAL, FULL)",
                lambda: SqliteEventStore(Path(tmp) / f"sqlite-{uuid.uuid4().hex[:6]}"),
                args.events,
                args.concurrency,
            )
        if "redis" in stores:
            if shutil.which("redis-server") is None:
                print("redis-server not installed: skipping the Redis store")
                return
            for fsync in [f for f in args.fsync.split(",") for _ in range(args.repeat)]:
                workdir = Path(tempfile.mkdtemp(prefix=f"redis-{fsync}-", dir=tmp))
                proc, url = start_redis(workdir, fsync)
                try:
                    await run_store(
                        f"redis (appendfsync {fsync})",
                        lambda url=url: RedisEventStore(url, prefix=f"{{bench-{uuid.uuid4().hex[:6]}}}"),
                        args.events,
                        args.concurrency,
                        proc.pid,
                    )
                finally:
                    proc.terminate()
                    proc.wait(10)


if __name__ == "__main__":
    asyncio.run(main())
