"""A gateway told to stop (SIGTERM) answers every call it took: the real answer of a call that ends
within the grace, Lambda's ServiceException for one still running at its end; new connections are
refused at once. In process, with real runtime servers (`python -m lamina_runtime serve`) as the
environments and boto3 as the caller; the replicas' side (Leases, forwarded calls, real processes) is
tests/cluster/test_gateway_replicas.py's."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError

from lamina.cluster.gateway import stop_serving
from lamina.environments.base import FunctionConfig
from lamina.environments.endpoints import StaticEndpointSource
from lamina.environments.http_pool import HttpEnvironmentPool
from lamina.gateway.drain import Drain
from lamina.gateway.registry import FunctionRegistry
from lamina.gateway.service import InvocationService
from tests.support.loopback_gateway import LoopbackGateway, loopback_gateway
from tests.unit.test_http_pool import start_server

CODE = """import time
def handler(event, context):
    time.sleep(event.get("seconds", 0))
    return {"slept": event.get("seconds", 0), "request_id": context.aws_request_id}
"""


class Stack:
    """An in-process gateway (its pool of real runtime servers, its runner and drain)."""

    def __init__(
        self, service: InvocationService, pool: HttpEnvironmentPool, drain: Drain, served: LoopbackGateway
    ) -> None:
        self.service, self.pool, self.drain, self.served = service, pool, drain, served

    async def stop(self, grace: float) -> None:
        await stop_serving(self.served.runner, self.drain, grace, self.service, self.pool, None, None, None)

    def client(self) -> Any:
        # Without retries: boto3 would send a ServiceException again (to a live replica behind a Service).
        return self.served.client(read_timeout=30)


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, environments: int) -> AsyncIterator[tuple[Stack, FunctionConfig]]:
    (tmp_path / "index.py").write_text(CODE)
    started = [await start_server(tmp_path, "slow") for _ in range(environments)]
    fn = FunctionConfig(name="slow", timeout_seconds=30)
    source = StaticEndpointSource({fn.key: [endpoint for endpoint, _ in started]})
    pool = HttpEnvironmentPool(source, [fn], cold_start_timeout=30)
    service = InvocationService(FunctionRegistry([fn]), pool)
    await pool.start()
    drain = Drain()
    try:
        async with loopback_gateway(service, drain) as served:
            yield Stack(service, pool, drain, served), fn
    finally:
        await pool.close()
        for _, proc in started:
            proc.kill()  # one may still run the cut call (lamina_runtime waits for it on SIGTERM)
            await proc.wait()


def call(lam: Any, seconds: float) -> tuple[str, Any]:
    """("ok", payload) or (error code, the error response) of one invocation."""
    try:
        reply = lam.invoke(FunctionName="slow", Payload=json.dumps({"seconds": seconds}).encode())
    except lam.exceptions.ClientError as exc:
        return exc.response["Error"]["Code"], exc.response
    return "ok", json.loads(reply["Payload"].read())


async def until(condition: Any, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_a_call_that_ends_within_the_grace_gets_its_answer_one_that_does_not_gets_service_exception(
    tmp_path: Path,
) -> None:
    async with gateway(tmp_path, environments=2) as (stack, fn):
        lam = stack.client()
        short = asyncio.create_task(asyncio.to_thread(call, lam, 0.8))
        long = asyncio.create_task(asyncio.to_thread(call, lam, 8))
        await until(lambda: stack.service.limiter.in_flight(fn) == 2)

        started = time.monotonic()
        stopping = asyncio.create_task(stack.stop(2.0))
        await until(lambda: stack.drain.draining)
        # Listening no more: a new connection is refused at once (the SDK sends the call again, and
        # behind a Service it reaches a live replica).
        with pytest.raises(EndpointConnectionError):
            await asyncio.to_thread(stack.client().invoke, FunctionName="slow", Payload=b"{}")

        code, body = await short
        assert code == "ok" and body["slept"] == 0.8  # accepted before SIGTERM, ended within the grace
        code, error = await long
        took = time.monotonic() - started
        assert code == "ServiceException", (code, error)
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 500
        headers = error["ResponseMetadata"]["HTTPHeaders"]
        assert headers["x-amzn-errortype"] == "ServiceException"
        assert headers["x-amzn-requestid"]  # the invocation's own id
        assert (
            error["Type"] == "Service" and "shut down before the call finished" in error["Error"]["Message"]
        )
        assert 2.0 <= took < 6, took  # at the end of the grace, not when the 8 s call ends
        await asyncio.wait_for(stopping, 10)
        assert stack.service.limiter.in_flight(fn) == 0


async def test_a_gateway_with_nothing_in_flight_stops_at_once(tmp_path: Path) -> None:
    async with gateway(tmp_path, environments=1) as (stack, _):
        assert (await asyncio.to_thread(call, stack.client(), 0))[0] == "ok"
        started = time.monotonic()
        await stack.stop(20.0)
        assert time.monotonic() - started < 2
