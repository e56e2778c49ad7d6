"""`lamina gateway`: the front door in a cluster.

Functions come from the API server (watched), environments are the ready pods of each function
(`KubernetesEndpointSource` + `HttpEnvironmentPool`), and Event invocations go to a Redis-backed
durable queue whose dispatcher runs here too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from lamina.api import Function, ManifestError, parse_object
from lamina.api.versions import Route, plan
from lamina.asyncinvoke.redis_store import RedisEventStore
from lamina.cluster.access import (
    cluster_access,
    credentials_for,
    destination_check,
    secret_for,
    with_credentials,
)
from lamina.cluster.handover import HandoverBuilder
from lamina.cluster.leases import FunctionLeases
from lamina.cluster.peers import PeerRouter, add_peer_routes
from lamina.cluster.settings import GatewaySettings
from lamina.environments.base import FunctionConfig, function_config, version_of
from lamina.environments.http_pool import HttpEnvironmentPool
from lamina.environments.kubernetes_source import KubernetesEndpointSource
from lamina.environments.pool_claims import PoolClaims
from lamina.gateway.app import build_app
from lamina.gateway.async_queue import AsyncInvocations
from lamina.gateway.auth import GatewayAuth
from lamina.gateway.concurrency import ConcurrencyLimiter
from lamina.gateway.drain import Drain, drain_and_stop
from lamina.gateway.front import FrontSite
from lamina.gateway.loop import run_async
from lamina.gateway.registry import FunctionRegistry
from lamina.gateway.service import InvocationService
from lamina.invocation.reservations import DEFAULT_MIN_UNRESERVED, Reservation, refused_reservations
from lamina.kubeapi import SecretValues, ThreadedWatch, api_client, list_functions_fn, watched
from lamina.resources.pool import POOL_PATH, pool_key
from lamina.resources.settings import Settings

log = logging.getLogger(__name__)


def with_versions(config: FunctionConfig, fn: Function, status: Mapping[str, Any]) -> FunctionConfig:
    """``config`` ($LATEST) carrying the published versions and the aliases' routing in effect, as the
    operator wrote them into the status (during a rollout, the current step's weights)."""
    routes = {a: Route.from_status(doc) for a, doc in (status.get("aliases") or {}).items() if doc}
    wanted = plan(fn.spec, routes)
    config.versions = {
        str(doc["version"]): version_of(
            config,
            doc,
            provisioned_concurrency=wanted.provisioned.get(str(doc["version"]), 0),
            routed=str(doc["version"]) in wanted.routed,
        )
        for doc in sorted(status.get("versions") or [], key=lambda d: int(d["version"]))
    }
    config.routes = routes
    return config


class FunctionCatalog:
    """Functions as the API server has them, applied to the registry, limiter and pool on change."""

    def __init__(
        self,
        service: InvocationService,
        pool: HttpEnvironmentPool,
        models: dict[str, Function] | None = None,
        min_unreserved: int = DEFAULT_MIN_UNRESERVED,
    ) -> None:
        self.service = service
        self.pool = pool
        self.min_unreserved = min_unreserved
        self.functions: dict[str, FunctionConfig] = {}
        #: creationTimestamp by key: older reservations are granted first (lamina.invocation.reservations).
        self.created: dict[str, str] = {}
        #: Functions on the pool path, by key: what a claimed pool pod is handed.
        self.models: dict[str, Function] = {} if models is None else models
        self.accounts: dict[str, str] = {}

    def account_of(self, namespace: str, name: str) -> str | None:
        """The ServiceAccount a function runs as now (None: no such function): what execution
        credentials are checked against."""
        return self.accounts.get(f"{namespace}/{name}")

    def on_event(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = f"{meta.get('namespace')}/{meta.get('name')}"
        if kind == "DELETED":
            self.functions.pop(key, None)
            self.models.pop(key, None)
            self.created.pop(key, None)
        else:
            try:
                # The spec alone: the status is the operator's, and only read below.
                fn = parse_object({k: v for k, v in obj.items() if k != "status"})
                # The operator's digest of code, layers and configuration (GetFunction's CodeSha256).
                revision = (obj.get("status") or {}).get("codeDigest") or str(fn.metadata.generation or "")
                config = function_config(fn, revision=revision)  # type: ignore[arg-type]
                status = obj.get("status") or {}
                if status.get("coldStartPath") == POOL_PATH and isinstance(fn, Function):
                    config.pool = pool_key(fn).label  # the operator keeps that pool for it
                    self.models[key] = fn
                self.functions[key] = with_versions(config, fn, status)  # type: ignore[arg-type]
                self.created[key] = str(meta.get("creationTimestamp") or "")
            except ManifestError as exc:  # the CRD schema should have refused it; never serve it
                log.warning("ignoring Function %s: %s", key, exc)
                self.functions.pop(key, None)
        configs = self._granted(list(self.functions.values()))
        self.accounts = {k: f.execution_account for k, f in self.functions.items()}
        self.service.replace_functions(configs)
        asyncio.get_running_loop().create_task(self.pool.update(self.service.environment_configs()))

    def _granted(self, configs: list[FunctionConfig]) -> list[FunctionConfig]:
        """``configs`` with the reservations that would overdraw the unreserved pool taken away: such
        a function is served as unreserved (its status says why: the operator decides the same)."""
        asked = [
            Reservation(c.key, self.created.get(c.key, ""), c.reserved_concurrency)
            for c in configs
            if c.reserved_concurrency is not None
        ]
        refused = refused_reservations(asked, self.service.limiter.total_limit, self.min_unreserved)
        out = []
        for config in configs:
            if config.key in refused:
                log.warning("function %s: %s", config.key, refused[config.key])
                config = dataclasses.replace(
                    config,
                    reserved_concurrency=None,
                    versions={
                        v: dataclasses.replace(c, reserved_concurrency=None)
                        for v, c in config.versions.items()
                    },
                )
            out.append(config)
        return out


async def start_http(
    service: InvocationService,
    host: str,
    port: int,
    peers: tuple[FunctionLeases, str] | None = None,
    auth: GatewayAuth | None = None,
    drain: Drain | None = None,
) -> web.AppRunner:
    """The Invoke API on ``host:port``, as `lamina gateway` serves it (benchmarks start it the same way);
    ``peers`` (leases, token): also the endpoint other replicas forward calls to (authenticated by the
    peer token: the caller was authenticated and authorized by the replica that forwards); ``drain``:
    what a stopping gateway still runs (:func:`stop`)."""
    # A caller that hangs up while its request waits for an environment stops waiting (and frees its
    # concurrency slot); once the request reached a pod, the pool lets it finish (see HttpEnvironmentPool).
    app = build_app(service, auth, drain)
    if peers is not None:
        add_peer_routes(app, service, *peers, drain=drain)
    # The drain answered every call before the runner's cleanup: what it still waits for is a stuck one.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    await FrontSite(runner, host, port).start()
    return runner


def watch_functions(api: Any, namespaces: Sequence[str] | None, handler: Any) -> list[ThreadedWatch]:
    """One watch of Functions per namespace (or one of the whole cluster)."""
    loop = asyncio.get_running_loop()
    return [ThreadedWatch(list_functions_fn(api, ns), handler, loop) for ns in watched(namespaces)]


async def serve(settings: GatewaySettings) -> int:
    api = await asyncio.to_thread(api_client, settings.kubeconfig)
    namespaces = list(settings.namespace) if settings.namespace else None
    source = KubernetesEndpointSource(api, namespaces)
    models: dict[str, Function] = {}
    handover = HandoverBuilder(
        api,
        Settings(region=settings.region),
        models.get,
        secret_for=secret_for(settings.auth_key),
        credentials_for=credentials_for(settings.auth_key),
    )
    limiter = ConcurrencyLimiter(settings.concurrency_limit)
    leases = router = None
    # One identity per process (Leases and pool holds name it): two gateways on one host never share.
    identity = f"{socket.gethostname()}-{os.getpid()}"
    if settings.replicated:
        assert settings.advertise and settings.peer_token
        leases = FunctionLeases(
            api,
            identity,
            settings.advertise,
            settings.lease_seconds,
            namespace=settings.namespace,
            on_replicas=limiter.set_replicas,
        )
        router = PeerRouter(leases, settings.peer_token, settings.cold_start_timeout)
    claims = PoolClaims(api, namespaces, handover, gateway_id=identity, holds=settings.pool_holds)
    pool = HttpEnvironmentPool(
        source,
        [],
        cold_start_timeout=settings.cold_start_timeout,
        claims=claims,
        owns=leases.holds if leases is not None else None,
        secret_for=secret_for(settings.auth_key),
    )
    service = InvocationService(
        FunctionRegistry([], default_namespace=settings.default_namespace),
        pool,
        limiter=limiter,
        router=router,
    )
    catalog = FunctionCatalog(service, pool, models, settings.min_unreserved)
    loop = asyncio.get_running_loop()
    functions = watch_functions(api, namespaces, catalog.on_event)
    for watch in functions:
        watch.start()
    for watch in functions:
        await asyncio.to_thread(watch.synced.wait, 30)
    await claims.start()
    if leases is not None:
        await leases.start()
    await pool.start()
    access = None
    if settings.auth:
        access = cluster_access(
            api,
            region=settings.region,
            audience=settings.token_audience,
            key_namespace=settings.access_key_namespace,
            key=settings.auth_key,
            current_account=catalog.account_of,
            allowed_ttl=settings.cache_allowed_seconds,
            denied_ttl=settings.cache_denied_seconds,
        )
        await access.start()
    queue = None
    if settings.redis_url:
        # The same wiring as local mode's (store aside): Secrets come from the API server.
        store = RedisEventStore(
            with_credentials(settings.redis_url, None, settings.redis_password),
            max_per_function=settings.async_queue_limit or None,
        )
        may_invoke = destination_check(access.authorizer, service.lookup) if access is not None else None
        queue = AsyncInvocations(
            service,
            store,
            SecretValues(api),
            lease_seconds=settings.async_lease_seconds,
            may_invoke=may_invoke,
        )
        await queue.start()
    peers = (leases, settings.peer_token) if leases is not None and settings.peer_token else None
    drain = Drain()
    runner = await start_http(
        service, settings.host, settings.port, peers, access.auth if access else None, drain
    )
    where = ", ".join(namespaces) if namespaces else "every namespace"
    replica = f"; a replica among several, reached at {settings.advertise}" if leases is not None else ""
    print(
        f"lamina gateway: serving on {settings.host}:{settings.port} ({where}{replica}; "
        f"auth {'on' if access else 'OFF: anyone who reaches the port may call every function'})",
        flush=True,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await stop_serving(runner, drain, settings.drain_seconds, service, pool, leases, router, queue)
    for watch in functions:
        watch.stop()
    if access is not None:
        access.stop()
    await pool.close()
    await claims.close()  # its holds go back to the pools at once
    service.tracer.shutdown()  # flush the spans still batched
    return 0


#: After the grace, how long the async dispatcher's events still running get before it cancels them:
#: the calls are cut first (PodClients abandoned), so its cancellations do not wait for environments.
QUEUE_CUT_MARGIN_S = 0.5


async def stop_serving(
    runner: web.AppRunner,
    drain: Drain,
    grace: float,
    service: InvocationService,
    pool: HttpEnvironmentPool,
    leases: FunctionLeases | None,
    router: PeerRouter | None,
    queue: AsyncInvocations | None,
) -> None:
    """SIGTERM: take no more calls, let those in flight run for ``grace`` seconds while the Leases of
    functions no call runs for are given back (their calls move to another replica at once), answer
    what still runs with ServiceException, then give back every Lease. Async events still running at
    the end are handed back to the store, due at once: another replica's dispatcher runs them (an
    accepted event is in Redis before its 202, so none is lost)."""
    limiter = service.limiter

    async def give_back_idle() -> None:
        if leases is not None:
            await leases.drain(limiter.busy)

    async def stop_queue(grace: float) -> None:
        assert queue is not None  # stops taking events now; those running get the same grace
        await queue.stop(drain_seconds=grace + QUEUE_CUT_MARGIN_S)

    # What runs after the grace is cut without waiting for its environment's (or holder's) reply.
    abandon = [pool.abandon] + ([router.abandon] if router is not None else [])
    await drain_and_stop(
        runner, drain, grace, beside=[stop_queue] if queue else [], tick=give_back_idle, abandon=abandon
    )
    if leases is not None:
        await leases.close()  # the functions this replica served move at once to the next caller's


def run_gateway(argv: list[str]) -> int:
    settings = GatewaySettings.from_args(argv, os.environ)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_async(serve(settings))
