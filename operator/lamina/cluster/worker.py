"""`lamina worker esm`: one EventSourceMapping's consumer or schedule, as its Deployment runs it.

Its configuration comes from the environment the operator sets (see
lamina.resources.eventsourcemapping): the mapping as JSON, the Secret keys it reads (broker URLs,
credentials) resolved by the kubelet, the gateway to invoke through and the Redis that claims schedule
ticks. Its own use of the Kubernetes API is writing what it does into its own mapping's status, with a
token that may do nothing else (lamina.cluster.mapping_status); without credentials, or when the API
server refuses, it consumes all the same. A Kubernetes source also lists and watches objects, with
the ServiceAccount its mapping names (the pod's), and keeps its resourceVersion in the status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import time
from typing import Any

import aiohttp

from lamina.api import EventSourceMapping, parse_object
from lamina.api.common import secret_env_name
from lamina.cluster.access import with_credentials
from lamina.cluster.mapping_status import MappingStatusWriter, StatusCheckpoint, mapping_reporter
from lamina.cluster.settings import WorkerSettings
from lamina.eventsources.kubernetes import MemoryCheckpoint
from lamina.eventsources.runners import KubernetesAccess, SecretValue, mapping_runner
from lamina.gateway.loop import run_async
from lamina.invocation.errors import FunctionNotFound, ThrottledError
from lamina.kubeapi import api_client
from lamina.schedule.stores import TickStore
from lamina_runtime.protocol import InvocationResult

log = logging.getLogger(__name__)


def invoke_path(function_key: str) -> str:
    namespace, name = function_key.split("/", 1)
    return f"/2015-03-31/functions/{namespace}.{name}/invocations"


class GatewayClient:
    """Invokes through the gateway's Invoke API, so throttling, accounting and authorization are the
    gateway's. With ``token_file`` (the mapping's projected ServiceAccount token, refreshed by the
    kubelet), every call carries it as a bearer token: the mapping's identity."""

    TOKEN_REREAD_SECONDS = 60.0

    def __init__(self, base_url: str, token_file: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token_file = token_file
        self._token: tuple[float, str] | None = None
        self._session: aiohttp.ClientSession | None = None

    def _auth(self) -> dict[str, str]:
        if not self.token_file:
            return {}
        now = time.monotonic()
        if self._token is None or now - self._token[0] > self.TOKEN_REREAD_SECONDS:
            try:
                with open(self.token_file) as f:
                    self._token = (now, f.read().strip())
            except OSError as exc:
                log.warning("cannot read the gateway token %s: %s", self.token_file, exc)
                return {}
        return {"Authorization": f"Bearer {self._token[1]}"}

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=960))
        return self._session

    async def invoke(
        self, function_key: str, payload: bytes, request_id: str | None = None
    ) -> InvocationResult:
        """An :class:`~lamina.invocation.invoker.Invoker`. The gateway names the invocation itself
        (the Invoke API takes no request id), so ``request_id`` is not sent."""
        url = self.base_url + invoke_path(function_key)
        async with self._http().post(url, data=payload, headers=self._auth()) as response:
            body = await response.read()
            if response.status == 429:
                raise ThrottledError(response.headers.get("x-amzn-ErrorType", "TooManyRequestsException"))
            if response.status == 404:
                raise FunctionNotFound(f"Function not found: {function_key}")
            if response.status != 200:
                raise RuntimeError(f"gateway answered {response.status}: {body[:200]!r}")
            return InvocationResult(
                request_id=response.headers.get("x-amzn-RequestId", ""),
                payload=body,
                function_error=response.headers.get("X-Amz-Function-Error"),
            )

    async def enqueue(self, function_key: str, payload: bytes, request_id: str | None = None) -> None:
        url = self.base_url + invoke_path(function_key)
        headers = {"X-Amz-Invocation-Type": "Event", **self._auth()}
        async with self._http().post(url, data=payload, headers=headers) as response:
            if response.status != 202:
                raise RuntimeError(
                    f"gateway refused an Event invocation: {response.status} "
                    f"{(await response.read())[:200]!r}"
                )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def secret_reader(settings: WorkerSettings) -> SecretValue:
    """Secret keys as the kubelet put them in the environment (``LAMINA_SECRET_<hash>``, from the
    optional ``secretKeyRef``s of the worker's Deployment): None when the Secret or key is missing."""

    def read(namespace: str, name: str, key: str) -> str | None:
        return settings.secrets.get(secret_env_name(name, key))

    return read


def kubernetes_access(settings: WorkerSettings, writer: MappingStatusWriter | None) -> KubernetesAccess:
    """A Kubernetes source watches with the pod's own credentials (the mapping's ServiceAccount) and
    keeps its resourceVersion in the mapping's status (in memory when the status cannot be written)."""

    def checkpoint(esm: EventSourceMapping) -> Any:
        if writer is None:
            log.warning("no status writer: a restarted worker watches again from the start")
            return MemoryCheckpoint()
        return StatusCheckpoint(writer)

    environ = {"KUBECONFIG": settings.kubeconfig} if settings.kubeconfig else {}
    return KubernetesAccess(api_client=lambda: api_client(environ=environ), checkpoint=checkpoint)


def tick_store(settings: WorkerSettings) -> TickStore:
    if settings.redis_url:
        from lamina.schedule.redis_store import RedisTickStore

        # The chart's Redis: the "ticks" user (tick keys only), its password from the mapping's Secret.
        url = with_credentials(settings.redis_url, settings.redis_username, settings.redis_password)
        return RedisTickStore.from_url(url, owner=socket.gethostname())
    from lamina.schedule.stores import SqliteTickStore

    log.warning(
        "LAMINA_REDIS_URL is not set: schedule ticks are claimed in a local file, so two "
        "replicas could both fire a tick"
    )
    return SqliteTickStore(os.path.join(settings.tmpdir, "lamina-ticks.sqlite3"))


async def run(settings: WorkerSettings) -> int:
    if not settings.mapping:
        print("lamina worker esm: LAMINA_ESM is not set", flush=True)
        return 2
    esm = parse_object(json.loads(settings.mapping))
    assert isinstance(esm, EventSourceMapping)
    gateway = GatewayClient(settings.gateway_url, settings.gateway_token_file)
    runner: Any = None
    reporting = mapping_reporter(
        lambda: runner.snapshot(), esm.api_version, esm.metadata.namespace, esm.name, settings
    )
    runner = mapping_runner(
        esm,
        gateway.invoke,
        gateway.enqueue,
        secret_reader(settings),
        tick_store(settings),
        kubernetes_access(settings, reporting[1] if reporting is not None else None),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await runner.start()
    if reporting is not None:
        reporting[0].start()
    print(
        f"lamina worker: {esm.metadata.namespace}/{esm.name}: {esm.spec.source.describe()} -> "
        f"{esm.spec.function_name}",
        flush=True,
    )
    await stop.wait()
    await runner.stop()
    if reporting is not None:
        reporter, writer = reporting
        await reporter.stop()  # records the last batch's result
        writer.close()
    await gateway.close()
    return 0


def run_worker(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lamina worker esm")
    parser.add_argument("kind", choices=["esm"])
    parser.add_argument("--namespace", help="informational: the mapping comes from LAMINA_ESM")
    parser.add_argument("--name", help="informational: the mapping comes from LAMINA_ESM")
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # uvloop, as the gateways: a worker's time goes mostly to broker transports (AMQP frames, Kafka
    # fetches), which cost less on it (benchmarks/eventsource_throughput.py --loop).
    return run_async(run(WorkerSettings.from_environ(os.environ)))
