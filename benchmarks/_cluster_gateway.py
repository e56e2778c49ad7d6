"""The cluster gateway's serving stack (`lamina gateway`: InvocationService, HttpEnvironmentPool, the
same aiohttp app and event loop) in front of fixed runtime servers instead of pods found through the
Kubernetes API, for the benchmarks. Everything on the invocation path is the code `lamina gateway`
runs; only where the endpoints come from differs (`StaticEndpointSource`).

Usage: python benchmarks/_cluster_gateway.py --port 9000 [--auth-kubeconfig K --access-key I:S:U]
       NAME=HOST:PORT[,HOST:PORT...] ...

With ``--kubeconfig`` (and ``LAMINA_GATEWAY_PEER_TOKEN`` set) it is one replica among several, as
`lamina gateway --advertise` is: each function is served by the holder of its Lease on that API server
(namespace ``default``), the other replicas forward to it.

With ``--auth-kubeconfig``, the gateway authenticates and authorizes as `lamina gateway --auth` does:
SigV4 with the access key of ``--access-key ID:SECRET:USER``, bearer tokens through TokenReview, RBAC
through SubjectAccessReview, both cached, against the cluster that kubeconfig names.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from lamina.cluster.gateway import start_http
from lamina.cluster.leases import FunctionLeases
from lamina.cluster.peers import PeerRouter
from lamina.environments.base import FunctionConfig
from lamina.environments.endpoints import StaticEndpointSource
from lamina.environments.http_pool import HttpEnvironmentPool
from lamina.gateway.auth import GatewayAuth
from lamina.gateway.concurrency import ConcurrencyLimiter
from lamina.gateway.loop import run_async
from lamina.gateway.registry import FunctionRegistry
from lamina.gateway.service import InvocationService
from lamina.kubeapi import api_client


def gateway_auth(kubeconfig: str, access_key: str) -> GatewayAuth:
    from lamina.auth.authenticator import Authenticator
    from lamina.auth.authorizer import CachedAuthorizer
    from lamina.auth.identity import Identity
    from lamina.auth.keys import AccessKey, KeyTable
    from lamina.auth.kube import SubjectAccessReviews, TokenReviews

    api = api_client(kubeconfig)
    key_id, secret, user = access_key.split(":", 2)
    keys = KeyTable([AccessKey(key_id, secret, Identity(user=user, groups=("system:authenticated",)))])
    authenticator = Authenticator(keys.lookup, "us-east-1", TokenReviews(api, "lamina"))
    return GatewayAuth(authenticator, CachedAuthorizer(SubjectAccessReviews(api)))


async def serve(
    port: int, functions: dict[str, list[str]], kubeconfig: str | None = None, auth: GatewayAuth | None = None
) -> None:
    configs = [FunctionConfig(name=name, provisioned_concurrency=len(eps)) for name, eps in functions.items()]
    source = StaticEndpointSource({fn.key: functions[fn.name] for fn in configs})
    leases = router = None
    if kubeconfig:
        token = os.environ["LAMINA_GATEWAY_PEER_TOKEN"]
        leases = FunctionLeases(api_client(kubeconfig), f"bench-{os.getpid()}", f"127.0.0.1:{port}")
        router = PeerRouter(leases, token, 60.0)
        await leases.start()
    pool = HttpEnvironmentPool(source, configs, owns=leases.holds if leases else None)
    service = InvocationService(
        FunctionRegistry(configs), pool, limiter=ConcurrencyLimiter(1000), router=router
    )
    await pool.start()
    peers = (leases, os.environ["LAMINA_GATEWAY_PEER_TOKEN"]) if leases else None
    runner = await start_http(service, "127.0.0.1", port, peers, auth)
    print(f"cluster gateway stack: serving on 127.0.0.1:{port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        if leases is not None:
            await leases.close()
        await pool.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--kubeconfig", help="a replica among several: Leases on this API server")
    parser.add_argument("--auth-kubeconfig", default=None)
    parser.add_argument("--access-key", default=None, help="ID:SECRET:USER")
    parser.add_argument("functions", nargs="+", help="NAME=HOST:PORT[,HOST:PORT...]")
    args = parser.parse_args()
    functions = {}
    for item in args.functions:
        name, _, endpoints = item.partition("=")
        functions[name] = endpoints.split(",")
    auth = gateway_auth(args.auth_kubeconfig, args.access_key) if args.auth_kubeconfig else None
    return run_async(serve(args.port, functions, args.kubeconfig, auth))


if __name__ == "__main__":
    raise SystemExit(main())
