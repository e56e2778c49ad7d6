"""An Event invocation over its function's queue quota is a 429 with a clear message (issue 9, item 7)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from lamina.asyncinvoke.sqlite_store import SqliteEventStore
from lamina.environments.base import FunctionConfig
from lamina.environments.endpoints import StaticEndpointSource
from lamina.environments.http_pool import HttpEnvironmentPool
from lamina.gateway.async_queue import AsyncInvocations
from lamina.gateway.registry import FunctionRegistry
from lamina.gateway.service import InvocationService
from tests.support.loopback_gateway import loopback_gateway


async def no_secrets(namespace: str, name: str, key: str) -> str | None:
    return None


async def test_a_full_queue_answers_too_many_requests(tmp_path: Path) -> None:
    fn = FunctionConfig(name="busy")
    pool = HttpEnvironmentPool(StaticEndpointSource({}), [fn])
    service = InvocationService(FunctionRegistry([fn]), pool)
    store = SqliteEventStore(tmp_path / "q", max_per_function=2)
    queue = AsyncInvocations(service, store, no_secrets)
    await queue.dispatcher.store.open()
    service.async_queue = queue.dispatcher.gateway_queue()  # not started: nothing runs, events stay
    try:
        async with loopback_gateway(service) as served:
            lam = served.client()
            for _ in range(2):
                out = await asyncio.to_thread(
                    lam.invoke, FunctionName="busy", InvocationType="Event", Payload=b"{}"
                )
                assert out["StatusCode"] == 202
            with pytest.raises(lam.exceptions.TooManyRequestsException) as info:
                await asyncio.to_thread(
                    lam.invoke, FunctionName="busy", InvocationType="Event", Payload=b"{}"
                )
            error = info.value.response
            assert error["Reason"] == "AsyncEventQueueFull"
            assert (
                "the async queue of function default/busy is full (2 events waiting)"
                in error["Error"]["Message"]
            )
            assert await store.pending_count() == 2
    finally:
        await store.close()
        await pool.close()
