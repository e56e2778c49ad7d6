"""Added latency of the gateway: the same no-op invocation three ways, in one run.

1. in-process `WorkerProcess.invoke` (the floor: socketpair to a warm worker, no HTTP);
2. HTTP straight to a warm environment (`python -m lamina_runtime serve`, the pod's entrypoint);
3. HTTP through the gateway (`lamina local`, Invoke API) to a warm provisioned environment.

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
from _common import free_port, function_manifest, percentile, start_local, summary, wait_for_port

from lamina_runtime.process import WorkerProcess
from lamina_runtime.protocol import InvocationRequest

NOOP = "def handler(event, context):\n    return None\n"


async def time_http(url: str, calls: int, headers: dict[str, str]) -> list[float]:
    samples = []
    async with aiohttp.ClientSession() as session:
        for i in range(calls + 200):
            started = time.perf_counter()
            async with session.post(url, data=b"{}", headers=headers) as response:
                await response.read()
                assert response.status == 200, response.status
            if i >= 200:  # warm-up calls are not counted
                samples.append((time.perf_counter() - started) * 1000)
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
        try:
            wait_for_port(direct_port, direct)
            floor = await time_in_process(code, args.calls)
            straight = await time_http(
                f"http://127.0.0.1:{direct_port}/invoke", args.calls, {"Lamina-Request-Id": "bench"}
            )
            through = await time_http(
                f"http://127.0.0.1:{gateway_port}/2015-03-31/functions/noop/invocations", args.calls, {}
            )
        finally:
            direct.terminate()
            gateway.terminate()
            direct.wait()
            gateway.wait()
    print(summary("in-process WorkerProcess.invoke", floor))
    print(summary("HTTP straight to a warm environment", straight))
    print(summary("HTTP through the gateway (Invoke API)", through))
    added50 = percentile(through, 50) - percentile(straight, 50)
    added99 = percentile(through, 99) - percentile(straight, 99)
    print(f"gateway added latency: p50 {added50:+.3f} ms, p99 {added99:+.3f} ms (target: < 1 ms at p50)")


if __name__ == "__main__":
    asyncio.run(main())
