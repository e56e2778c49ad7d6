"""`lamina gateway`: the front door in a cluster.

Functions come from the API server (watched), environments are the ready pods of each function
(`KubernetesEndpointSource` + `HttpEnvironmentPool`), and Event invocations go to a Redis-backed
durable queue whose dispatcher runs here too.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

from aiohttp import web

from lamina.api import ManifestError, parse_object
from lamina.environments.base import FunctionConfig, function_config
from lamina.environments.http_pool import HttpEnvironmentPool
from lamina.environments.kubernetes_source import KubernetesEndpointSource
from lamina.gateway.app import build_app
from lamina.gateway.concurrency import ConcurrencyLimiter
from lamina.gateway.loop import run_async
from lamina.gateway.registry import FunctionRegistry
from lamina.gateway.service import InvocationService
from lamina.kubeapi import ThreadedWatch, api_client, list_functions_fn

log = logging.getLogger(__name__)


class FunctionCatalog:
    """Functions as the API server has them, applied to the registry, limiter and pool on change."""

    def __init__(self, service: InvocationService, pool: HttpEnvironmentPool) -> None:
        self.service = service
        self.pool = pool
        self.functions: dict[str, FunctionConfig] = {}

    def on_event(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = f"{meta.get('namespace')}/{meta.get('name')}"
        if kind == "DELETED":
            self.functions.pop(key, None)
        else:
            try:
                fn = parse_object(obj)
                # The operator's digest of code, layers and configuration (GetFunction's CodeSha256).
                revision = (obj.get("status") or {}).get("codeDigest") or str(fn.metadata.generation or "")
                self.functions[key] = function_config(fn, revision=revision)  # type: ignore[arg-type]
            except ManifestError as exc:  # the CRD schema should have refused it; never serve it
                log.warning("ignoring Function %s: %s", key, exc)
                self.functions.pop(key, None)
        configs = list(self.functions.values())
        self.service.replace_functions(configs)
        asyncio.get_running_loop().create_task(self.pool.update(self.service.environment_configs()))


async def start_http(service: InvocationService, host: str, port: int) -> web.AppRunner:
    """The Invoke API on ``host:port``, as `lamina gateway` serves it (benchmarks start it the same way)."""
    # A caller that hangs up while its request waits for an environment stops waiting (and frees its
    # concurrency slot); once the request reached a pod, the pool lets it finish (see HttpEnvironmentPool).
    runner = web.AppRunner(build_app(service), access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def serve(args: argparse.Namespace) -> int:
    api = await asyncio.to_thread(api_client, args.kubeconfig)
    source = KubernetesEndpointSource(api, args.namespace)
    pool = HttpEnvironmentPool(source, [], cold_start_timeout=args.cold_start_timeout)
    service = InvocationService(
        FunctionRegistry([], default_namespace=args.default_namespace),
        pool,
        limiter=ConcurrencyLimiter(args.concurrency_limit),
    )
    catalog = FunctionCatalog(service, pool)
    loop = asyncio.get_running_loop()
    functions = ThreadedWatch(list_functions_fn(api, args.namespace), catalog.on_event, loop)
    functions.start()
    await asyncio.to_thread(functions.synced.wait, 30)
    await pool.start()
    dispatcher = None
    if args.redis_url:
        from lamina.asyncinvoke.dispatcher import AsyncDispatcher
        from lamina.asyncinvoke.redis_store import RedisEventStore

        store = RedisEventStore(args.redis_url)
        dispatcher = AsyncDispatcher(store, service.invoke_key, service.lookup)
        await dispatcher.start()
        service.async_queue = dispatcher.gateway_queue()
    runner = await start_http(service, args.host, args.port)
    print(f"lamina gateway: serving on {args.host}:{args.port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    if dispatcher is not None:
        await dispatcher.stop()
    functions.stop()
    await pool.close()
    return 0


def run_gateway(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lamina gateway", description="the Invoke API in a cluster")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--namespace", default=None, help="watch one namespace (default: all)")
    parser.add_argument(
        "--default-namespace",
        default="default",
        help="namespace of plain function names (others: namespace.name)",
    )
    parser.add_argument("--redis-url", default=None, help="durable queue of Event invocations")
    parser.add_argument("--concurrency-limit", type=int, default=1000)
    parser.add_argument("--cold-start-timeout", type=float, default=120.0)
    parser.add_argument("--kubeconfig", default=None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_async(serve(parser.parse_args(argv)))
