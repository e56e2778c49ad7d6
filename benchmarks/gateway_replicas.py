"""Invocations/s through 1, 2 and 3 gateway replicas, and what their coordination costs per call.

    export LAMINA_TEST_CLUSTER_DIR=/tmp/lamina-bench
    scripts/test-cluster up              # the Leases need an API server (no node needed)
    .venv/bin/python benchmarks/gateway_replicas.py [--functions 6] [--environments 2] [--seconds 10]

Each replica is the cluster gateway's serving stack (benchmarks/_cluster_gateway.py: the code
`lamina gateway` runs on the invocation path) in front of runtime servers on loopback (`python -m
lamina_runtime serve`, a no-op handler), F functions with E environments each. With 2 or 3 replicas
each function is served by the holder of its Lease on the test API server and the other replicas
forward its calls there (lamina.cluster.peers), as in a cluster. The load generator spreads calls
round-robin over the replicas and the functions (so 1/N of the calls reach the holder directly and the
rest take one more hop), runs `--clients` concurrent callers for `--seconds`, and is pinned to the last
CPU (the replicas and environments to the others, as far as the machine's CPUs allow). Reports, per
replica count: invocations/s, latency p50/p99, and the replicas' CPU per invocation. A run with one
replica and no Leases is the baseline; the p50 of one sequential caller through 1 plain and 2
replicated gateways gives the coordination's added latency.
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, free_port, percentile, test_cluster_module, wait_for_port

NOOP = "def handler(event, context):\n    return {}\n"
TOKEN = "bench-peer-token"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pinned(cpus: set[int]) -> list[str]:
    return ["taskset", "-c", ",".join(str(c) for c in sorted(cpus))] if cpus else []


def start_replicas(
    n: int, functions: dict[str, list[str]], kubeconfig: str | None, cpus: set[int]
) -> list[Any]:
    procs = []
    for _ in range(n):
        port = free_port()
        cmd = [
            *pinned(cpus),
            sys.executable,
            str(REPO / "benchmarks" / "_cluster_gateway.py"),
            "--port",
            str(port),
        ]
        if kubeconfig:
            cmd += ["--kubeconfig", kubeconfig]
        cmd += [f"{name}={','.join(eps)}" for name, eps in functions.items()]
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "LAMINA_GATEWAY_PEER_TOKEN": TOKEN},
        )
        proc.port = port  # type: ignore[attr-defined]
        procs.append(proc)
    for proc in procs:
        wait_for_port(proc.port, proc)
    return procs


async def load(ports: list[int], names: list[str], clients: int, seconds: float) -> tuple[int, list[float]]:
    import aiohttp

    latencies: list[float] = []
    ok = 0
    deadline = time.perf_counter() + seconds

    async def caller(i: int, session: Any) -> None:
        nonlocal ok
        n = i
        while time.perf_counter() < deadline:
            port, name = ports[n % len(ports)], names[(n // len(ports)) % len(names)]
            n += clients
            t0 = time.perf_counter()
            async with session.post(
                f"http://127.0.0.1:{port}/2015-03-31/functions/{name}/invocations", data=b"{}"
            ) as r:
                await r.read()
                if r.status == 200:
                    ok += 1
                    latencies.append((time.perf_counter() - t0) * 1000)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(caller(i, session) for i in range(clients)))
    return ok, latencies


async def warm(ports: list[int], names: list[str]) -> None:
    """The first call of function i through replica i mod N (which takes its Lease), then one call of
    every function through every replica."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        for i, name in enumerate(names):
            async with session.post(
                f"http://127.0.0.1:{ports[i % len(ports)]}/2015-03-31/functions/{name}/invocations",
                data=b"{}",
            ) as r:
                assert r.status == 200, await r.text()
        for port in ports:
            for name in names:
                async with session.post(
                    f"http://127.0.0.1:{port}/2015-03-31/functions/{name}/invocations", data=b"{}"
                ) as r:
                    assert r.status == 200, await r.text()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--functions", type=int, default=6)
    parser.add_argument("--environments", type=int, default=2, help="per function")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--sequential-calls", type=int, default=1000)
    args = parser.parse_args()

    cpm = test_cluster_module()
    cp = cpm.running()
    if cp is None:
        print("needs a running control plane: scripts/test-cluster up", file=sys.stderr)
        return 2
    kubeconfig = str(cp.kubeconfig)

    cpus = sorted(os.sched_getaffinity(0))
    loadgen_cpu = {cpus[-1]}
    others = set(cpus[:-1])
    os.sched_setaffinity(0, loadgen_cpu)
    servers: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp)
        (code / "index.py").write_text(NOOP)
        try:
            rows = []
            for n in (1, 2, 3):
                tag = f"{n}-{os.getpid()}"
                functions: dict[str, list[str]] = {}
                for f in range(args.functions):
                    endpoints = []
                    for _ in range(args.environments):
                        port = free_port()
                        servers.append(
                            subprocess.Popen(
                                [
                                    *pinned(others),
                                    sys.executable,
                                    "-m",
                                    "lamina_runtime",
                                    "serve",
                                    "--port",
                                    str(port),
                                ],
                                cwd=code,
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL,
                                env={
                                    **os.environ,
                                    "_HANDLER": "index.handler",
                                    "LAMBDA_TASK_ROOT": str(code),
                                    "AWS_LAMBDA_FUNCTION_NAME": f"r{tag}-f{f}",
                                },
                            )
                        )
                        endpoints.append(f"127.0.0.1:{port}")
                    functions[f"r{tag}-f{f}"] = endpoints
                for eps in functions.values():
                    for ep in eps:
                        wait_for_port(int(ep.rpartition(":")[2]))
                replicas = start_replicas(n, functions, kubeconfig if n > 1 else None, others)
                try:
                    ports = [p.port for p in replicas]
                    names = list(functions)
                    asyncio.run(warm(ports, names))
                    before = sum(cpu_seconds(p.pid) for p in replicas)
                    ok, lat = asyncio.run(load(ports, names, args.clients, args.seconds))
                    cpu_us = (sum(cpu_seconds(p.pid) for p in replicas) - before) / max(ok, 1) * 1e6
                    seq = []
                    if n <= 2:
                        _, seq = asyncio.run(load(ports, names, 1, args.sequential_calls / 1000 * 2))
                    row = {
                        "replicas": n,
                        "per_s": ok / args.seconds,
                        "p50": percentile(lat, 50),
                        "p99": percentile(lat, 99),
                        "cpu_us": cpu_us,
                        "seq_p50": percentile(seq, 50) if seq else None,
                    }
                    rows.append(row)
                    seq_text = f", one caller p50 {row['seq_p50']:.2f} ms" if seq else ""
                    mode = "Leases" if n > 1 else "no Leases"
                    print(
                        f"{n} replica(s) ({mode}): {row['per_s']:7.0f} invocations/s, "
                        f"p50 {row['p50']:.2f} ms, "
                        f"p99 {row['p99']:.2f} ms, replicas' CPU {cpu_us:.0f} us per call{seq_text}",
                        flush=True,
                    )
                finally:
                    for p in replicas:
                        p.terminate()
                    for p in replicas:
                        p.wait()
            if rows[0]["seq_p50"] is not None and rows[1]["seq_p50"] is not None:
                print(f"coordination's added latency at p50 (one caller, 2 replicas vs 1): "
                      f"{rows[1]['seq_p50'] - rows[0]['seq_p50']:+.2f} ms")  # fmt: skip
        finally:
            for s in servers:
                s.terminate()
            for s in servers:
                s.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
