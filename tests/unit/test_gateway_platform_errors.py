"""When the platform, not the function, fails, boto3 gets Lambda's error (ServiceException 500, or
ResourceNotReadyException 502 naming why environments cannot start), never a hang or a leaked slot."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from botocore.exceptions import ReadTimeoutError

from lamina.environments.base import FunctionConfig
from lamina.environments.endpoints import PodSet, StaticEndpointSource
from lamina.environments.http_pool import HttpEnvironmentPool
from lamina.gateway.registry import FunctionRegistry
from lamina.gateway.service import InvocationService
from lamina.resources.pod_state import PodProblem
from tests.support.loopback_gateway import loopback_gateway


@contextlib.asynccontextmanager
async def gateway(
    fn: FunctionConfig, source: StaticEndpointSource, cold_start_timeout: float
) -> AsyncIterator[tuple[Any, InvocationService]]:
    pool = HttpEnvironmentPool(source, [fn], cold_start_timeout=cold_start_timeout)
    service = InvocationService(FunctionRegistry([fn]), pool)
    await pool.start()
    try:
        async with loopback_gateway(service) as served:
            yield served.client(read_timeout=1), service
    finally:
        await pool.close()


async def test_no_environment_in_time_is_a_service_exception() -> None:
    fn = FunctionConfig(name="stuck")
    async with gateway(fn, StaticEndpointSource({}), 0.2) as (client, service):
        with pytest.raises(client.exceptions.ServiceException) as info:
            await asyncio.to_thread(client.invoke, FunctionName="stuck", Payload=b"{}")
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
        assert "no environment of stuck became ready" in str(info.value)
        assert service.limiter.in_flight(fn) == 0  # the slot was given back


async def test_environments_that_cannot_start_are_a_resource_not_ready_exception_naming_the_cause() -> None:
    fn = FunctionConfig(name="broken", reserved_concurrency=1)
    source = StaticEndpointSource({})
    async with gateway(fn, source, 60) as (client, service):
        call = asyncio.create_task(asyncio.to_thread(client.invoke, FunctionName="broken", Payload=b"{}"))
        await asyncio.sleep(0.3)  # the call waits for the cold start it asked for
        problem = PodProblem(
            "ErrImagePull",
            'pod fn-broken-x: image "registry.example/runtime:nope" of container function cannot be pulled '
            "(ErrImagePull): not found",
            "fn-broken-x",
        )
        source.set_pods(fn.key, PodSet.of([], [], problem))
        with pytest.raises(client.exceptions.ResourceNotReadyException) as info:
            await asyncio.wait_for(call, 5)
        error = info.value.response
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 502
        assert 'image "registry.example/runtime:nope"' in error["Error"]["Message"]
        assert "(ErrImagePull)" in error["Error"]["Message"]
        assert service.limiter.in_flight(fn) == 0
        # reservedConcurrency 1 and the slot is free: the next caller is told the same, not throttled.
        with pytest.raises(client.exceptions.ResourceNotReadyException):
            await asyncio.to_thread(client.invoke, FunctionName="broken", Payload=b"{}")


async def test_a_caller_that_hangs_up_while_waiting_gives_its_slot_back() -> None:
    fn = FunctionConfig(name="slow-start", reserved_concurrency=1)
    async with gateway(fn, StaticEndpointSource({}), 60) as (client, service):
        with pytest.raises(ReadTimeoutError):  # boto3 gives up after its read timeout (1 s here)
            await asyncio.to_thread(client.invoke, FunctionName="slow-start", Payload=b"{}")
        for _ in range(100):
            if service.limiter.in_flight(fn) == 0:
                break
            await asyncio.sleep(0.02)
        assert service.limiter.in_flight(fn) == 0  # not held until the 60 s cold-start limit


async def test_no_room_for_an_environment_is_a_throttle_never_a_5xx() -> None:
    """The pool empty and the node full under a burst: the call that cannot get an environment is
    429 TooManyRequestsException with a Reason, as Lambda throttles when it has no capacity."""
    fn = FunctionConfig(name="crowded")
    source = StaticEndpointSource({})
    async with gateway(fn, source, 60) as (client, service):
        call = asyncio.create_task(asyncio.to_thread(client.invoke, FunctionName="crowded", Payload=b"{}"))
        await asyncio.sleep(0.3)
        problem = PodProblem(
            "Unschedulable",
            "pod fn-crowded-x cannot be scheduled: 0/1 nodes are available: Insufficient cpu",
            "x",
        )
        source.set_pods(fn.key, PodSet.of([], [], problem))
        with pytest.raises(client.exceptions.TooManyRequestsException) as info:
            await asyncio.wait_for(call, 5)
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
        assert info.value.response["Reason"] == "ConcurrentInvocationLimitExceeded"
        assert service.limiter.in_flight(fn) == 0
