"""Runtime start-up numbers: import time of the worker module, cold start (spawn -> ready), warm invoke.

Run: .venv/bin/python benchmarks/runtime_import.py [--starts 20] [--invokes 200] [--python PATH]

A/B mode, for a change of the runtime on a busy machine: ``--compare DIR`` (another checkout's
``runtime-image``) alternates spawns of this runtime and that one, one after the other, so that load
falls on both alike; ``--sdk`` adds the runtime's boto3 directory to this runtime's import path (as
the image and local mode do) to show that a function that does not import boto3 does not pay for it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

from lamina_runtime.process import RUNTIME_ROOT, WorkerProcess
from lamina_runtime.protocol import InvocationRequest


def import_time_us(runs: int) -> tuple[float, float]:
    """Median cumulative import time (µs) of lamina_runtime.worker, and of the whole interpreter start."""
    env = {**os.environ, "PYTHONPATH": RUNTIME_ROOT}
    imports, totals = [], []
    for _ in range(runs):
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-S", "-X", "importtime", "-c", "import lamina_runtime.worker"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        totals.append((time.perf_counter() - started) * 1e6)
        for line in proc.stderr.splitlines():
            fields = [f.strip() for f in line.removeprefix("import time:").split("|")]
            if len(fields) == 3 and fields[2] == "lamina_runtime.worker":
                imports.append(float(fields[1]))
    return statistics.median(imports), statistics.median(totals)


def p(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def write_handler() -> str:
    code = tempfile.mkdtemp(prefix="lamina-bench-")
    with open(os.path.join(code, "index.py"), "w") as f:
        f.write("def handler(event, context):\n    return event\n")
    return code


async def cold_and_warm(code: str, starts: int, invokes: int) -> None:
    walls, reported = [], []
    for _ in range(starts):
        worker = WorkerProcess("index.handler", code, stdout=subprocess.DEVNULL)
        started = time.perf_counter()
        reported.append(await worker.start())
        walls.append((time.perf_counter() - started) * 1000)
        await worker.stop()
    print(f"cold start (spawn -> ready), {starts} starts: p50 {p(walls, 0.5):.1f} ms", end="")
    print(f"  p90 {p(walls, 0.9):.1f} ms")
    print(f"  Init Duration as reported by the worker: p50 {p(reported, 0.5):.1f} ms")

    worker = WorkerProcess("index.handler", code, stdout=subprocess.DEVNULL)
    await worker.start()
    latencies = []
    payload = b'{"hello": "world"}'
    for _ in range(invokes):
        started = time.perf_counter()
        await worker.invoke(InvocationRequest(request_id=str(uuid.uuid4()), payload=payload))
        latencies.append((time.perf_counter() - started) * 1000)
    await worker.stop()
    rate = invokes / (sum(latencies) / 1000)
    print(
        f"warm invoke via WorkerProcess, {invokes} calls: p50 {p(latencies, 0.5):.3f} ms  "
        f"p99 {p(latencies, 0.99):.3f} ms  ({rate:.0f}/s sequential)"
    )


async def compare(code: str, starts: int, python: str, other: str, sdk: list[str]) -> None:
    """spawn -> ready of this runtime and of ``other``'s, alternated, ``starts`` each."""
    from lamina_runtime import process

    ours = process.RUNTIME_ROOT
    runs = {"this runtime": (ours, sdk), f"runtime at {other}": (other, [])}
    walls: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(starts):
        for label, (root, packages) in runs.items():
            process.RUNTIME_ROOT = root  # the worker's PYTHONPATH: which lamina_runtime it imports
            worker = WorkerProcess(
                "index.handler", code, stdout=subprocess.DEVNULL, python=python, runtime_packages=packages
            )
            started = time.perf_counter()
            await worker.start()
            walls[label].append((time.perf_counter() - started) * 1000)
            await worker.stop()
    process.RUNTIME_ROOT = ours
    for label, samples in walls.items():
        print(f"spawn -> ready, {label}, {starts} starts: ", end="")
        print(f"p50 {p(samples, 0.5):.1f} ms  p90 {p(samples, 0.9):.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument("--invokes", type=int, default=200)
    parser.add_argument("--import-runs", type=int, default=10)
    parser.add_argument("--python", default=sys.executable, help="the interpreter of the workers")
    parser.add_argument("--compare", help="another runtime-image directory: alternate spawns (A/B)")
    parser.add_argument("--sdk", action="store_true", help="this runtime with boto3's directory on its path")
    args = parser.parse_args()
    if args.compare:
        sdk = []
        if args.sdk:
            from lamina.local.sdk import sdk_dir

            sdk = [str(sdk_dir())]
        asyncio.run(compare(write_handler(), args.starts, args.python, args.compare, sdk))
        return
    worker_us, total_us = import_time_us(args.import_runs)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus")
    print(f"import lamina_runtime.worker (python -S -X importtime, median of {args.import_runs}): ", end="")
    print(f"{worker_us / 1000:.2f} ms")
    print(f"  whole interpreter run incl. that import: {total_us / 1000:.1f} ms")
    asyncio.run(cold_and_warm(write_handler(), args.starts, args.invokes))


if __name__ == "__main__":
    main()
