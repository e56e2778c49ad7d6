"""The cluster pool against real runtime servers (`python -m lamina_runtime serve`) on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from lamina.environments.base import FunctionConfig
from lamina.environments.endpoints import StaticEndpointSource
from lamina.environments.http_pool import HttpEnvironmentPool, NoEnvironment
from lamina_runtime.protocol import InvocationRequest
from tests.support.local_mode import free_port

CODE = """import os, time
def handler(event, context):
    time.sleep(event.get("seconds", 0))
    return {
        "pid": os.getpid(),
        "arn": context.invoked_function_arn,
        "request_id": context.aws_request_id,
        "client": context.client_context and context.client_context.custom,
    }
"""


async def start_server(code_dir: Path) -> tuple[str, asyncio.subprocess.Process]:
    port = free_port()
    env = {
        **os.environ,
        "_HANDLER": "index.handler",
        "LAMBDA_TASK_ROOT": str(code_dir),
        "AWS_LAMBDA_FUNCTION_NAME": "fn",
        "LAMINA_TIMEOUT_SECONDS": "5",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lamina_runtime",
        "serve",
        "--port",
        str(port),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            break
        except OSError:
            await asyncio.sleep(0.05)
    return f"127.0.0.1:{port}", proc


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[Callable[[], asyncio.Future]]:
    (tmp_path / "index.py").write_text(CODE)
    procs: list[asyncio.subprocess.Process] = []

    async def start() -> str:
        endpoint, proc = await start_server(tmp_path)
        procs.append(proc)
        return endpoint

    yield start
    for proc in procs:
        proc.terminate()
        await proc.wait()


def request(payload: dict) -> InvocationRequest:
    return InvocationRequest(request_id="r", payload=json.dumps(payload).encode())


async def test_routes_to_an_idle_endpoint_and_maps_the_result(servers) -> None:
    endpoint = await servers()
    fn = FunctionConfig(name="fn", provisioned_concurrency=1)
    source = StaticEndpointSource({fn.key: [endpoint]})
    pool = HttpEnvironmentPool(source, [fn])
    await pool.start()
    try:
        result = await pool.invoke(fn, request({}))
        assert result.function_error is None
        assert "pid" in json.loads(result.payload)
        assert "START RequestId: r" in result.log
        assert pool.environments(fn) == 1
    finally:
        await pool.close()


async def test_the_pod_sees_the_callers_arn_request_id_and_client_context(servers) -> None:
    """What the gateway puts in the request reaches the handler's context in the pod, as in local
    mode: the ARN the caller invoked (with its qualifier), not one the pod makes up."""
    endpoint = await servers()
    fn = FunctionConfig(name="fn", provisioned_concurrency=1)
    pool = HttpEnvironmentPool(StaticEndpointSource({fn.key: [endpoint]}), [fn])
    await pool.start()
    arn = "arn:aws:lambda:local:000000000000:function:fn:live"
    client_context = base64.b64encode(json.dumps({"custom": {"tenant": "a"}}).encode()).decode()
    try:
        result = await pool.invoke(
            fn,
            InvocationRequest(
                request_id="req-7", payload=b"{}", invoked_function_arn=arn, client_context=client_context
            ),
        )
        body = json.loads(result.payload)
        assert body["arn"] == arn
        assert body["request_id"] == "req-7" == result.request_id
        assert body["client"] == {"tenant": "a"}
    finally:
        await pool.close()


async def test_a_busy_pool_asks_for_a_replica_and_holds_the_request(servers) -> None:
    endpoint = await servers()
    fn = FunctionConfig(name="fn", provisioned_concurrency=1, reserved_concurrency=3)
    source = StaticEndpointSource({fn.key: [endpoint]})
    pool = HttpEnvironmentPool(source, [fn], cold_start_timeout=30)
    await pool.start()
    try:
        slow = asyncio.create_task(pool.invoke(fn, request({"seconds": 4})))
        await asyncio.sleep(0.2)
        held = asyncio.create_task(pool.invoke(fn, request({})))
        await asyncio.sleep(0.2)
        assert source.requested[fn.key] == 2  # a cold start was asked for
        assert not held.done()  # and the request waits for it
        second = await servers()
        source.set_endpoints(fn.key, [endpoint, second])
        fast = await asyncio.wait_for(held, 10)
        assert not slow.done()  # served by the new environment, not after the slow one
        assert json.loads(fast.payload)["pid"] != json.loads((await slow).payload)["pid"]
    finally:
        await pool.close()


async def test_idle_endpoints_above_provisioned_are_given_back(servers) -> None:
    first, second = await servers(), await servers()
    fn = FunctionConfig(name="fn", provisioned_concurrency=1, idle_timeout_seconds=0)
    source = StaticEndpointSource({fn.key: [first, second]})
    pool = HttpEnvironmentPool(source, [fn], reap_interval=3600)
    await pool.start()
    try:
        await asyncio.gather(pool.invoke(fn, request({"seconds": 0.2})), pool.invoke(fn, request({})))
        retired = await pool.reap(asyncio.get_running_loop().time() + 10_000)
        assert retired == 1
        assert source.requested[fn.key] == 1
        assert pool.environments(fn) == 1
    finally:
        await pool.close()


async def test_an_endpoint_that_refuses_connections_is_passed_over(servers) -> None:
    live = await servers()
    dead = f"127.0.0.1:{free_port()}"  # Ready in the source, but nothing listens (yet, or any more)
    fn = FunctionConfig(name="fn", provisioned_concurrency=2)
    source = StaticEndpointSource({fn.key: [dead, live]})
    pool = HttpEnvironmentPool(source, [fn], cold_start_timeout=10)
    await pool.start()
    try:
        results = [await pool.invoke(fn, request({})) for _ in range(4)]
        assert all(r.function_error is None for r in results)
        assert len({json.loads(r.payload)["pid"] for r in results}) == 1  # all served by the live one
    finally:
        await pool.close()


async def test_a_request_waits_for_an_endpoint_that_starts_listening(tmp_path: Path) -> None:
    (tmp_path / "index.py").write_text(CODE)
    port = free_port()
    fn = FunctionConfig(name="fn", provisioned_concurrency=1)
    source = StaticEndpointSource({fn.key: [f"127.0.0.1:{port}"]})
    pool = HttpEnvironmentPool(source, [fn], cold_start_timeout=30)
    await pool.start()
    proc = None
    try:
        call = asyncio.create_task(pool.invoke(fn, request({})))
        await asyncio.sleep(0.5)
        assert not call.done()  # refused so far, and retried rather than failed
        env = {**os.environ, "_HANDLER": "index.handler", "LAMBDA_TASK_ROOT": str(tmp_path)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lamina_runtime", "serve", "--port", str(port), env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        result = await asyncio.wait_for(call, 20)
        assert result.function_error is None and json.loads(result.payload)["pid"] != proc.pid
    finally:
        await pool.close()
        if proc is not None:
            proc.terminate()
            await proc.wait()


async def test_refusals_end_in_no_environment_after_the_cold_start_limit() -> None:
    fn = FunctionConfig(name="fn", provisioned_concurrency=1)
    source = StaticEndpointSource({fn.key: [f"127.0.0.1:{free_port()}"]})
    pool = HttpEnvironmentPool(source, [fn], cold_start_timeout=1)
    await pool.start()
    try:
        with pytest.raises(NoEnvironment, match="accepted the request within 1 s"):
            await pool.invoke(fn, request({}))
    finally:
        await pool.close()
