"""The cluster gateway's serving stack (`lamina gateway`: InvocationService, HttpEnvironmentPool, the
same aiohttp app and event loop) in front of fixed runtime servers instead of pods found through the
Kubernetes API, for the benchmarks. Everything on the invocation path is the code `lamina gateway`
runs; only where the endpoints come from differs (`StaticEndpointSource`).

Usage: python benchmarks/_cluster_gateway.py --port 9000 NAME=HOST:PORT[,HOST:PORT...] ...
"""

from __future__ import annotations

import argparse
import asyncio

from lamina.cluster.gateway import start_http
from lamina.environments.base import FunctionConfig
from lamina.environments.endpoints import StaticEndpointSource
from lamina.environments.http_pool import HttpEnvironmentPool
from lamina.gateway.concurrency import ConcurrencyLimiter
from lamina.gateway.loop import run_async
from lamina.gateway.registry import FunctionRegistry
from lamina.gateway.service import InvocationService


async def serve(port: int, functions: dict[str, list[str]]) -> None:
    configs = [FunctionConfig(name=name, provisioned_concurrency=len(eps)) for name, eps in functions.items()]
    source = StaticEndpointSource({fn.key: functions[fn.name] for fn in configs})
    pool = HttpEnvironmentPool(source, configs)
    service = InvocationService(FunctionRegistry(configs), pool, limiter=ConcurrencyLimiter(1000))
    await pool.start()
    runner = await start_http(service, "127.0.0.1", port)
    print(f"cluster gateway stack: serving on 127.0.0.1:{port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await pool.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("functions", nargs="+", help="NAME=HOST:PORT[,HOST:PORT...]")
    args = parser.parse_args()
    functions = {}
    for item in args.functions:
        name, _, endpoints = item.partition("=")
        functions[name] = endpoints.split(",")
    return run_async(serve(args.port, functions))


if __name__ == "__main__":
    raise SystemExit(main())
