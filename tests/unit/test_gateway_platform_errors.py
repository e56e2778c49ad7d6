"""When the platform, not the function, fails, boto3 gets Lambda's ServiceException (500), not a crash."""

from __future__ import annotations

import asyncio

import boto3
import pytest
from aiohttp import web
from botocore.config import Config

from lamina.environments.base import FunctionConfig
from lamina.environments.endpoints import StaticEndpointSource
from lamina.environments.http_pool import HttpEnvironmentPool
from lamina.gateway.app import build_app
from lamina.gateway.registry import FunctionRegistry
from lamina.gateway.service import InvocationService
from tests.support.local_mode import free_port


async def test_no_environment_in_time_is_a_service_exception() -> None:
    fn = FunctionConfig(name="stuck")
    pool = HttpEnvironmentPool(StaticEndpointSource({}), [fn], cold_start_timeout=0.2)
    service = InvocationService(FunctionRegistry([fn]), pool)
    await pool.start()
    runner = web.AppRunner(build_app(service))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    client = boto3.client(
        "lambda",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=Config(retries={"max_attempts": 0, "mode": "standard"}),
    )
    try:
        with pytest.raises(client.exceptions.ServiceException) as info:
            await asyncio.to_thread(client.invoke, FunctionName="stuck", Payload=b"{}")
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
        assert "no environment of stuck became ready" in str(info.value)
        assert service.limiter.in_flight(fn) == 0  # the slot was given back
    finally:
        await runner.cleanup()
        await pool.close()
