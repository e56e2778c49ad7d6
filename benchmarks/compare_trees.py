"""Before/after on a busy machine: the gateway paths of two source trees, timed side by side.

For each tree (a checkout of lamina: ``--before`` and ``--after``) this starts, from that tree's code:
the pod's server (``python -m lamina_runtime serve``), ``lamina local`` with a provisioned no-op
function, and the cluster gateway's stack (``InvocationService`` + ``HttpEnvironmentPool`` to that
tree's pod server). All six endpoints are called in alternating batches, so load that comes and goes
skews both trees alike, and each server's CPU time per invocation is read from /proc: CPU per call
hardly depends on what else the machine runs, which makes it the figure to compare when the
machine is shared.

Usage: python benchmarks/compare_trees.py --before /path/to/old/checkout --after . [--calls 2000]
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
from _common import free_port, function_manifest, percentile, wait_for_port

NOOP = "def handler(event, context):\n    return None\n"
INVOKE = "/2015-03-31/functions/noop/invocations"

#: The cluster gateway's serving stack, from the classes both trees have (not `lamina gateway`, which
#: needs an API server): one function whose only environment is the given pod server.
CLUSTER_STACK = """
import asyncio, sys
from aiohttp import web
from lamina.environments.base import FunctionConfig
from lamina.environments.endpoints import StaticEndpointSource
from lamina.environments.http_pool import HttpEnvironmentPool
from lamina.gateway.app import build_app
from lamina.gateway.registry import FunctionRegistry
from lamina.gateway.service import InvocationService

async def main(port, pod):
    fn = FunctionConfig(name="noop", provisioned_concurrency=1)
    pool = HttpEnvironmentPool(StaticEndpointSource({fn.key: [pod]}), [fn])
    service = InvocationService(FunctionRegistry([fn]), pool)
    await pool.start()
    runner = web.AppRunner(build_app(service), access_log=None, handler_cancellation=True)
    await runner.setup()
    try:  # the front door `lamina gateway` serves with, in a tree that has one
        from lamina.gateway.front import FrontSite as Site
    except ImportError:
        Site = web.TCPSite
    await Site(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()

asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{tree / 'operator'}{os.pathsep}{tree / 'runtime-image'}"}


def start_tree(tree: Path, work: Path) -> dict[str, tuple[str, subprocess.Popen[bytes]]]:
    """The three servers of one tree: label -> (URL to POST to, process)."""
    code = work / "code"
    code.mkdir(parents=True)
    (code / "index.py").write_text(NOOP)
    manifests = work / "manifests"
    manifests.mkdir()
    (manifests / "noop.yaml").write_text(function_manifest("noop", NOOP, provisionedConcurrency=1))
    env = tree_env(tree)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    pod_port, local_port, cluster_port = free_port(), free_port(), free_port()
    pod_env = {
        **env,
        "_HANDLER": "index.handler",
        "LAMBDA_TASK_ROOT": str(code),
        "AWS_LAMBDA_FUNCTION_NAME": "noop",
    }
    pod = subprocess.Popen(
        [sys.executable, "-m", "lamina_runtime", "serve", "--port", str(pod_port)],
        env=pod_env,
        cwd=code,
        **quiet,
    )
    local = subprocess.Popen(
        [sys.executable, "-m", "lamina.cli", "local", str(manifests), "--port", str(local_port),
         "--state-dir", str(work / "state"), "--quiet"],
        env=env, cwd=work, **quiet,
    )  # fmt: skip
    cluster = subprocess.Popen(
        [sys.executable, "-c", CLUSTER_STACK, str(cluster_port), f"127.0.0.1:{pod_port}"],
        env=env,
        cwd=work,
        **quiet,
    )
    for port, proc in ((pod_port, pod), (local_port, local), (cluster_port, cluster)):
        wait_for_port(port, proc)
    return {
        "pod server": (f"http://127.0.0.1:{pod_port}/invoke", pod),
        "local gateway": (f"http://127.0.0.1:{local_port}{INVOKE}", local),
        "cluster stack": (f"http://127.0.0.1:{cluster_port}{INVOKE}", cluster),
    }


async def interleaved(urls: dict[str, str], calls: int, batch: int = 100) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {label: [] for label in urls}
    async with aiohttp.ClientSession() as session:
        for url in urls.values():  # warm-up, not counted
            for _ in range(200):
                async with session.post(url, data=b"{}") as response:
                    await response.read()
        while any(len(v) < calls for v in samples.values()):
            for label, url in urls.items():
                for _ in range(min(batch, calls - len(samples[label]))):
                    started = time.perf_counter()
                    async with session.post(url, data=b"{}") as response:
                        await response.read()
                        assert response.status == 200, (label, response.status)
                    samples[label].append((time.perf_counter() - started) * 1000)
    return samples


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, required=True)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        servers = {
            name: start_tree(tree.resolve(), Path(tmp) / name)
            for name, tree in (("before", args.before), ("after", args.after))
        }
        procs = [proc for tree in servers.values() for _, proc in tree.values()]
        try:
            urls = {
                f"{name} {label}": url for name, tree in servers.items() for label, (url, _) in tree.items()
            }
            cpu = {p.pid: cpu_seconds(p.pid) for p in procs}
            samples = await interleaved(urls, args.calls)
            # The pod servers also serve the cluster stacks' calls: their CPU is per call they served.
            served = {
                "pod server": 2 * (args.calls + 200),
                "local gateway": args.calls + 200,
                "cluster stack": args.calls + 200,
            }
            cpu_us = {
                f"{name} {label}": (cpu_seconds(proc.pid) - cpu[proc.pid]) / served[label] * 1e6
                for name, tree in servers.items()
                for label, (_, proc) in tree.items()
            }
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait()
    print(f"{'path':32} {'p50 ms':>8} {'p99 ms':>8} {'CPU/call µs':>12}")
    for label, values in samples.items():
        print(f"{label:32} {percentile(values, 50):8.3f} {percentile(values, 99):8.3f} {cpu_us[label]:12.0f}")


if __name__ == "__main__":
    asyncio.run(main())
