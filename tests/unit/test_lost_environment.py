"""A pod that drops the connection after receiving an invocation (its kernel OOM kill) is a function
error, Runtime.ExitError, so an async event counts it against maximumRetryAttempts instead of being
retried as a platform error until its maximum age (issue 9, item 7)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lamina.asyncinvoke import AsyncDispatcher, EventInvokeConfig
from lamina.asyncinvoke.sqlite_store import SqliteEventStore
from lamina.environments.base import FunctionConfig
from lamina.environments.endpoints import StaticEndpointSource
from lamina.environments.http_pool import HttpEnvironmentPool
from lamina_runtime.protocol import InvocationRequest


@pytest.fixture
async def dying_pod() -> AsyncIterator[tuple[str, list[bytes]]]:
    """An endpoint that reads each request whole, then drops the connection without answering."""
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        received.append(await reader.readexactly(length))
        writer.transport.abort()  # as a killed process's socket: no response, the connection reset

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"127.0.0.1:{port}", received
    server.close()


async def test_a_dropped_invocation_is_runtime_exit_error(dying_pod) -> None:
    endpoint, received = dying_pod
    fn = FunctionConfig(name="oom")
    pool = HttpEnvironmentPool(StaticEndpointSource({fn.key: [endpoint]}), [fn])
    await pool.start()
    try:
        result = await pool.invoke(fn, InvocationRequest(request_id="r-1", payload=b'{"big": true}'))
    finally:
        await pool.close()
    assert received == [b'{"big": true}']  # it reached the environment: it may have run
    assert result.function_error == "Unhandled" and result.error_type == "Runtime.ExitError"
    assert b"Runtime exited without providing a reason" in result.payload


async def test_an_async_event_that_keeps_killing_its_pod_ends_after_its_retries(
    dying_pod, tmp_path: Path
) -> None:
    endpoint, received = dying_pod
    fn = FunctionConfig(name="oom")
    pool = HttpEnvironmentPool(StaticEndpointSource({fn.key: [endpoint]}), [fn])
    await pool.start()
    store = SqliteEventStore(tmp_path / "q")
    config = EventInvokeConfig(maximum_retry_attempts=1, maximum_event_age_seconds=21600)

    async def invoke(key: str, payload: bytes, request_id: str | None = None):
        return await pool.invoke(fn, InvocationRequest(request_id=str(time.time()), payload=payload))

    dispatcher = AsyncDispatcher(
        store, invoke, lambda key: config, poll_interval=0.05, retry_base_seconds=0.05
    )
    await dispatcher.start()
    try:
        await dispatcher.enqueue(fn.key, b"{}")
        for _ in range(400):  # until the event is done with (up to 20 s)
            if not await store.pending_count():
                break
            await asyncio.sleep(0.05)
        assert await store.pending_count() == 0, "the event was retried beyond maximumRetryAttempts"
    finally:
        await dispatcher.stop(drain_seconds=1)
        await store.close()
        await pool.close()
    assert len(received) == 2  # the first try and one retry, then RetriesExhausted (no onFailure)
    assert dispatcher.stats["RetriesExhausted"] == 1 and dispatcher.stats["function_errors"] == 2
