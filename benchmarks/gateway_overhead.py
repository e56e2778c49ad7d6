"""Added latency of the gateway: the same no-op invocation four ways, in one run.

1. in-process `WorkerProcess.invoke` (the floor: socketpair to a warm worker, no HTTP);
2. HTTP straight to a warm environment (`python -m lamina_runtime serve`, the pod's entrypoint);
3. HTTP through the gateway (`lamina local`, Invoke API) to a warm provisioned environment;
4. HTTP through the cluster gateway's stack (`lamina gateway`: HttpEnvironmentPool, HTTP to the pod's
   runtime server) to the environment of row 2, as a pod would be reached.

The HTTP rows are timed in alternating batches of 100 calls, so a machine whose load changes during
the run skews them alike. The CPU time each process spent per invocation is printed too (it hardly
depends on what else the machine runs): each gateway, and the environment's server and its worker
(which serve rows 2 and 4).

Usage: python benchmarks/gateway_overhead.py [--calls 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from _common import (
    REPO,
    cpu_seconds,
    free_port,
    function_manifest,
    percentile,
    start_local,
    summary,
    wait_for_port,
)

from lamina_runtime.process import WorkerProcess
from lamina_runtime.protocol import InvocationRequest

NOOP = "def handler(event, context):\n    return None\n"


def child_pids(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def time_http_interleaved(
    paths: dict[str, tuple[str, dict[str, str]]], calls: int, batch: int = 100
) -> dict[str, list[float]]:
    """Sequential calls on each path, in alternating batches: a machine that gets busier or quieter
    during the run skews every row alike, so the differences between rows stay meaningful."""
    samples: dict[str, list[float]] = {label: [] for label in paths}
    async with aiohttp.ClientSession() as session:
        for url, headers in paths.values():  # warm-up calls are not counted
            for _ in range(200):
                async with session.post(url, data=b"{}", headers=headers) as response:
                    await response.read()
        while any(len(v) < calls for v in samples.values()):
            for label, (url, headers) in paths.items():
                for _ in range(min(batch, calls - len(samples[label]))):
                    started = time.perf_counter()
                    async with session.post(url, data=b"{}", headers=headers) as response:
                        await response.read()
                        assert response.status == 200, (label, response.status)
                    samples[label].append((time.perf_counter() - started) * 1000)
    return samples


async def time_in_process(code_dir: Path, calls: int) -> list[float]:
    worker = WorkerProcess("index.handler", str(code_dir), stdout=subprocess.DEVNULL)
    await worker.start()
    samples = []
    try:
        for i in range(calls + 200):
            started = time.perf_counter()
            await worker.invoke(InvocationRequest(request_id=str(i), payload=b"{}"))
            if i >= 200:
                samples.append((time.perf_counter() - started) * 1000)
    finally:
        await worker.stop()
    return samples


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        code = root / "code"
        code.mkdir()
        (code / "index.py").write_text(NOOP)
        manifests = root / "manifests"
        manifests.mkdir()
        (manifests / "noop.yaml").write_text(function_manifest("noop", NOOP, provisionedConcurrency=1))

        direct_port = free_port()
        env = {
            **os.environ,
            "_HANDLER": "index.handler",
            "LAMBDA_TASK_ROOT": str(code),
            "AWS_LAMBDA_FUNCTION_NAME": "noop",
        }
        serve = [sys.executable, "-m", "lamina_runtime", "serve", "--port", str(direct_port)]
        direct = subprocess.Popen(  # noqa: ASYNC220 - set-up, before anything is timed
            serve,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=code,
        )
        gateway_port = free_port()
        state = root / "state"
        gateway = start_local(manifests, state, gateway_port)
        cluster_port = free_port()
        cluster = subprocess.Popen(  # noqa: ASYNC220 - set-up, before anything is timed
            [
                sys.executable,
                str(REPO / "benchmarks" / "_cluster_gateway.py"),
                "--port",
                str(cluster_port),
                f"noop=127.0.0.1:{direct_port}",
            ],
            stdout=subprocess.DEVNULL,
            cwd=REPO,
        )
        try:
            wait_for_port(direct_port, direct)
            wait_for_port(cluster_port, cluster)
            floor = await time_in_process(code, args.calls)
            invoke_path = "/2015-03-31/functions/noop/invocations"
            # The environment's server and its worker (spawned by INIT, so there by now).
            (worker,) = child_pids(direct.pid)
            pids = {"local": gateway.pid, "cluster": cluster.pid, "server": direct.pid, "worker": worker}
            cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            timed = await time_http_interleaved(
                {
                    "straight": (f"http://127.0.0.1:{direct_port}/invoke", {"Lamina-Request-Id": "bench"}),
                    "local": (f"http://127.0.0.1:{gateway_port}{invoke_path}", {}),
                    "cluster": (f"http://127.0.0.1:{cluster_port}{invoke_path}", {}),
                },
                args.calls,
            )
            # Warm-up included: both gateways served calls + 200 invocations, the environment twice that.
            served = {"local": 1, "cluster": 1, "server": 2, "worker": 2}
            cpu_us = {
                name: (cpu_seconds(pid) - cpu_before[name]) / (served[name] * (args.calls + 200)) * 1e6
                for name, pid in pids.items()
            }
            straight, through, in_cluster = timed["straight"], timed["local"], timed["cluster"]
        finally:
            for proc in (direct, gateway, cluster):
                proc.terminate()
            for proc in (direct, gateway, cluster):
                proc.wait()
    print(summary("in-process WorkerProcess.invoke", floor))
    print(summary("HTTP straight to a warm environment", straight))
    print(summary("HTTP through the gateway (Invoke API)", through))
    print(summary("HTTP through the cluster gateway to the pod", in_cluster))
    for label, samples in (("local gateway", through), ("cluster gateway", in_cluster)):
        added50 = percentile(samples, 50) - percentile(straight, 50)
        added99 = percentile(samples, 99) - percentile(straight, 99)
        print(f"{label} added latency: p50 {added50:+.3f} ms, p99 {added99:+.3f} ms (target: < 1 ms at p50)")
    print(
        f"gateway CPU per invocation: local {cpu_us['local']:.0f} µs, "
        f"cluster {cpu_us['cluster']:.0f} µs (the gateway process only; its environments are others)"
    )
    print(
        f"environment CPU per invocation (rows 2 and 4): server {cpu_us['server']:.0f} µs, "
        f"worker {cpu_us['worker']:.0f} µs; load average {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
