"""The cluster pool against real runtime servers (`python -m lamina_runtime serve`) on loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lamina.environments.base import FunctionConfig
from lamina.environments.endpoints import PodSet, ScaleTargetMissing, StaticEndpointSource
from lamina.environments.http_pool import EnvironmentFailed, HttpEnvironmentPool, NoEnvironment
from lamina.environments.pod_client import PodClient
from lamina.resources.pod_state import PodProblem
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


async def spawn_server(code_dir: Path, port: int, name: str = "fn") -> asyncio.subprocess.Process:
    """`python -m lamina_runtime serve` of function ``name`` on ``port``, not waiting for it to listen."""
    env = {
        **os.environ,
        "_HANDLER": "index.handler",
        "LAMBDA_TASK_ROOT": str(code_dir),
        "AWS_LAMBDA_FUNCTION_NAME": name,
        "LAMINA_TIMEOUT_SECONDS": "5",
    }
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lamina_runtime", "serve", "--port", str(port), env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


async def start_server(code_dir: Path, name: str = "fn") -> tuple[str, asyncio.subprocess.Process]:
    port = free_port()
    proc = await spawn_server(code_dir, port, name)
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            break
        except OSError:
            await asyncio.sleep(0.05)
    return f"127.0.0.1:{port}", proc


class Servers:
    """Runtime servers of one function's code, stopped when the test ends."""

    def __init__(self, code_dir: Path) -> None:
        self.code_dir = code_dir
        self.procs: list[asyncio.subprocess.Process] = []

    async def __call__(self, name: str = "fn") -> str:
        """A new server of function ``name``, once it listens: its endpoint."""
        endpoint, proc = await start_server(self.code_dir, name)
        self.procs.append(proc)
        return endpoint

    async def listen(self, port: int) -> asyncio.subprocess.Process:
        """A new server on a port handed out before, not waiting for it to listen."""
        self.procs.append(await spawn_server(self.code_dir, port))
        return self.procs[-1]


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[Servers]:
    (tmp_path / "index.py").write_text(CODE)
    started = Servers(tmp_path)
    yield started
    for proc in started.procs:
        proc.terminate()
        await proc.wait()


@contextlib.asynccontextmanager
async def empty_pool(
    fn: FunctionConfig, cold_start_timeout: float
) -> AsyncIterator[tuple[HttpEnvironmentPool, StaticEndpointSource]]:
    """A started pool whose source has no environment of ``fn`` yet (the test publishes them)."""
    source = StaticEndpointSource({})
    pool = HttpEnvironmentPool(source, [fn], cold_start_timeout=cold_start_timeout)
    await pool.start()
    try:
        yield pool, source
    finally:
        await pool.close()


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


class NotMadeYet(StaticEndpointSource):
    """A source whose Deployment appears only after ``missing`` scale requests (the operator is slow)."""

    def __init__(self, missing: int) -> None:
        super().__init__({})
        self.missing = missing
        self.asked: list[int] = []

    async def scale(self, fn: FunctionConfig, replicas: int, retire: str | None = None) -> None:
        self.asked.append(replicas)
        if self.missing > 0:
            self.missing -= 1
            raise ScaleTargetMissing(f"deployment {fn.name} does not exist yet")
        await super().scale(fn, replicas, retire)


async def test_a_scale_the_source_cannot_take_yet_is_asked_again_and_the_held_request_served(servers) -> None:
    fn = FunctionConfig(name="fn", provisioned_concurrency=1)
    source = NotMadeYet(missing=3)
    pool = HttpEnvironmentPool(source, [fn], cold_start_timeout=30)
    await pool.start()  # its scale to the provisioned 1 is refused: the pool starts all the same
    try:
        assert source.asked == [1]
        held = asyncio.create_task(pool.invoke(fn, request({})))
        for _ in range(100):
            if fn.key in source.requested:
                break
            await asyncio.sleep(0.05)
        assert source.requested[fn.key] == 1  # taken once the Deployment exists, asked for by nobody else
        assert source.asked[-1] == 1 and len(source.asked) >= 4
        assert not held.done()
        source.set_endpoints(fn.key, [await servers()])
        result = await asyncio.wait_for(held, 10)
        assert result.function_error is None
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


async def test_a_request_waits_for_an_endpoint_that_starts_listening(servers) -> None:
    port = free_port()
    fn = FunctionConfig(name="fn", provisioned_concurrency=1)
    source = StaticEndpointSource({fn.key: [f"127.0.0.1:{port}"]})
    pool = HttpEnvironmentPool(source, [fn], cold_start_timeout=30)
    await pool.start()
    try:
        call = asyncio.create_task(pool.invoke(fn, request({})))
        await asyncio.sleep(0.5)
        assert not call.done()  # refused so far, and retried rather than failed
        proc = await servers.listen(port)
        result = await asyncio.wait_for(call, 20)
        assert result.function_error is None and json.loads(result.payload)["pid"] != proc.pid
    finally:
        await pool.close()


async def test_refusals_end_in_no_environment_after_the_cold_start_limit() -> None:
    fn = FunctionConfig(name="fn", provisioned_concurrency=1)
    source = StaticEndpointSource({fn.key: [f"127.0.0.1:{free_port()}"]})
    pool = HttpEnvironmentPool(source, [fn], cold_start_timeout=1)
    await pool.start()
    try:
        with pytest.raises(NoEnvironment, match="within 1 s"):
            await pool.invoke(fn, request({}))
    finally:
        await pool.close()


async def test_a_held_request_probes_a_starting_pod_instead_of_waiting_for_its_readiness(
    servers,
) -> None:
    """The source says the pod has an address but is not Ready (the kubelet's probe has not run yet):
    the pool probes it itself and the waiting request is served as soon as INIT is done."""
    port = free_port()
    endpoint = f"127.0.0.1:{port}"
    fn = FunctionConfig(name="fn")
    async with empty_pool(fn, 30) as (pool, source):
        call = asyncio.create_task(pool.invoke(fn, request({})))
        await asyncio.sleep(0.1)
        assert source.requested[fn.key] == 1  # a cold start was asked for
        source.set_pods(fn.key, PodSet.of([], [endpoint]))  # scheduled, has an IP, nothing listens yet
        await asyncio.sleep(0.3)
        assert not call.done()
        await servers.listen(port)
        result = await asyncio.wait_for(call, 20)  # never reported Ready by the source
        assert result.function_error is None and result.init_duration_ms is not None
        assert pool.environments(fn) == 1
        # Once the source reports it Ready, nothing changes; a second call reuses it.
        source.set_pods(fn.key, PodSet.of([endpoint]))
        await asyncio.sleep(0)
        again = await pool.invoke(fn, request({}))
        assert json.loads(again.payload)["pid"] == json.loads(result.payload)["pid"]


async def test_a_held_request_takes_a_starting_pod_whose_init_failed_and_gets_the_error(tmp_path) -> None:
    """An on-demand cold start whose INIT fails is answered with the INIT error (as on Lambda), not
    held until the cold-start limit: the pod's probe says INIT failed, and the request goes to it."""
    (tmp_path / "index.py").write_text("raise RuntimeError('no config')\ndef handler(e, c):\n    return 1\n")
    started = Servers(tmp_path)
    fn = FunctionConfig(name="fn")
    try:
        async with empty_pool(fn, 60) as (pool, source):
            call = asyncio.create_task(pool.invoke(fn, request({})))
            await asyncio.sleep(0.1)
            source.set_pods(fn.key, PodSet.of([], [await started()]))  # never Ready by the kubelet
            result = await asyncio.wait_for(call, 30)
            assert result.function_error == "Unhandled"
            assert json.loads(result.payload)["errorMessage"] == "no config"
    finally:
        for proc in started.procs:
            proc.terminate()
            await proc.wait()


def image_problem(pod: str = "fn-fn-abc") -> PodProblem:
    return PodProblem(
        "ImagePullBackOff",
        f'pod {pod}: image "registry.example/missing:1" cannot be pulled (ImagePullBackOff)',
        pod,
    )


async def test_a_problem_fails_the_waiting_request_at_once_and_the_next_ones_too() -> None:
    fn = FunctionConfig(name="fn")
    async with empty_pool(fn, 60) as (pool, source):
        call = asyncio.create_task(pool.invoke(fn, request({})))
        await asyncio.sleep(0.1)
        assert not call.done()
        source.set_pods(fn.key, PodSet.of([], [], image_problem()))
        # at once: the cold-start limit is 60 s
        with pytest.raises(EnvironmentFailed, match=r"ImagePullBackOff.*registry\.example/missing:1") as info:
            await asyncio.wait_for(call, 5)
        assert info.value.reason == "ImagePullBackOff"
        with pytest.raises(EnvironmentFailed):  # no new wait while nothing can serve
            await asyncio.wait_for(pool.invoke(fn, request({})), 1)
        # A healthy pod starting (the user fixed the image) lets requests wait again.
        source.set_pods(fn.key, PodSet.of([], [f"127.0.0.1:{free_port()}"], image_problem()))
        await asyncio.sleep(0)
        held = asyncio.create_task(pool.invoke(fn, request({})))
        await asyncio.sleep(0.2)
        assert not held.done()
        held.cancel()


async def test_one_pod_that_cannot_start_fails_no_request_while_others_are_coming(servers) -> None:
    """A burst at zero on a full node: one of the pods asked for cannot be scheduled while the others
    are still coming (no address yet). Every waiting request keeps waiting and is served by the pods
    that start; only when nothing is left coming does a waiting request fail, naming the cause."""
    fn = FunctionConfig(name="fn")
    unschedulable = PodProblem(
        "Unschedulable", "pod fn-fn-x cannot be scheduled: 0/1 nodes are available: Insufficient cpu", "x"
    )
    async with empty_pool(fn, 60) as (pool, source):
        calls = [asyncio.create_task(pool.invoke(fn, request({"seconds": 0.2}))) for _ in range(3)]
        await asyncio.sleep(0.1)
        assert source.requested[fn.key] == 3
        source.set_pods(fn.key, PodSet.of([], [], unschedulable, pending=2))
        await asyncio.sleep(0.3)
        assert not any(c.done() for c in calls)  # two pods are coming: nobody fails
        first = await servers()
        source.set_pods(fn.key, PodSet.of([], [first], unschedulable, pending=1))
        second = await servers()
        source.set_pods(fn.key, PodSet.of([first], [second], unschedulable))
        results = await asyncio.wait_for(asyncio.gather(*calls), 30)  # served by those that started
        assert all(r.function_error is None for r in results)
        # Nothing ready, starting or coming, and a problem: a waiting request fails at once.
        source.set_pods(fn.key, PodSet.of([], [], unschedulable))
        await asyncio.sleep(0.05)
        with pytest.raises(EnvironmentFailed, match="Insufficient cpu"):
            await asyncio.wait_for(pool.invoke(fn, request({})), 5)


async def test_a_caller_that_goes_away_while_waiting_leaves_nothing_behind(servers) -> None:
    fn = FunctionConfig(name="fn", reserved_concurrency=2)
    async with empty_pool(fn, 60) as (pool, source):
        call = asyncio.create_task(pool.invoke(fn, request({})))
        await asyncio.sleep(0.1)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        endpoint = await servers()
        source.set_endpoints(fn.key, [endpoint])
        await asyncio.sleep(0.05)
        assert pool.in_flight(fn) == 0  # the environment went idle, not to the caller that left
        result = await asyncio.wait_for(pool.invoke(fn, request({})), 10)
        assert result.function_error is None


async def test_a_caller_that_goes_away_mid_call_keeps_the_environment_busy_until_it_ends(servers) -> None:
    """The pod still runs the invocation: handing it to the next request would get the runtime's
    own 429 (one invocation per environment)."""
    endpoint = await servers()
    fn = FunctionConfig(name="fn", provisioned_concurrency=1)
    source = StaticEndpointSource({fn.key: [endpoint]})
    pool = HttpEnvironmentPool(source, [fn], cold_start_timeout=30)
    await pool.start()
    try:
        slow = asyncio.create_task(pool.invoke(fn, request({"seconds": 1})))
        await asyncio.sleep(0.3)
        slow.cancel()
        await asyncio.sleep(0)
        assert pool.in_flight(fn) == 1
        nxt = await asyncio.wait_for(pool.invoke(fn, request({})), 10)  # waits for the slow one to end
        assert nxt.function_error is None and b"busy" not in nxt.payload
        with pytest.raises(asyncio.CancelledError):
            await slow
    finally:
        await pool.close()


class ServerClaims:
    """Claims over runtime servers already running (the claim's API and hand-over are tested against
    a real API server in tests/cluster/test_pool_cold_starts.py; here: what the pool does with them)."""

    def __init__(self, endpoints: list[str], source: StaticEndpointSource | None = None) -> None:
        self.available = list(endpoints)
        self.released: list[str] = []
        self.source = source  # when set, reports each claimed pod as the API would, before claim returns

    def can_claim(self, fn: FunctionConfig) -> bool:
        return bool(self.available)

    async def claim(self, fn: FunctionConfig) -> str | None:
        if not self.available:
            return None
        endpoint = self.available.pop(0)
        if self.source is not None:  # labelled serving: the watch may beat the claim's return
            self.source.set_pods(fn.key, PodSet.of([endpoint], pooled=[endpoint]))
            await asyncio.sleep(0.05)
        return endpoint

    async def release(self, fn: FunctionConfig, endpoint: str) -> None:
        self.released.append(endpoint)


async def test_a_cold_start_claims_a_pool_pod_and_a_reaped_one_is_deleted_not_scaled(servers) -> None:
    endpoint = await servers()
    fn = FunctionConfig(name="fn", pool="python3.12-128", idle_timeout_seconds=0)
    source = StaticEndpointSource({})
    claims = ServerClaims([endpoint])
    pool = HttpEnvironmentPool(source, [fn], cold_start_timeout=30, claims=claims, reap_interval=3600)
    await pool.start()
    try:
        result = await asyncio.wait_for(pool.invoke(fn, request({})), 20)
        assert result.function_error is None
        assert fn.key not in source.requested  # the Deployment was never scaled
        assert await pool.reap(asyncio.get_running_loop().time() + 10_000) == 1
        await asyncio.sleep(0)
        assert claims.released == [endpoint] and pool.environments(fn) == 0
        assert fn.key not in source.requested
    finally:
        await pool.close()


async def test_a_claimed_pod_reported_by_the_source_first_is_handed_over_once(servers) -> None:
    first, second = await servers(), await servers()
    fn = FunctionConfig(name="fn", pool="python3.12-128", reserved_concurrency=2)
    source = StaticEndpointSource({})
    claims = ServerClaims([first], source)
    pool = HttpEnvironmentPool(source, [fn], cold_start_timeout=30, claims=claims)
    await pool.start()
    try:
        calls = [asyncio.create_task(pool.invoke(fn, request({"seconds": 0.5}))) for _ in range(2)]
        await asyncio.sleep(0.3)
        assert source.requested.get(fn.key) == 1  # the pool had one pod: the other went to the Deployment
        source.set_pods(fn.key, PodSet.of([first, second], pooled=[first]))
        results = await asyncio.wait_for(asyncio.gather(*calls), 20)  # no environment got two (no 429)
        assert len({json.loads(r.payload)["pid"] for r in results}) == 2
    finally:
        await pool.close()


async def test_claimed_pods_of_an_older_revision_are_deleted(servers) -> None:
    endpoint = await servers()
    fn = FunctionConfig(name="fn", pool="python3.12-128", revision="a")
    claims = ServerClaims([endpoint])
    pool = HttpEnvironmentPool(StaticEndpointSource({}), [fn], cold_start_timeout=30, claims=claims)
    await pool.start()
    try:
        await asyncio.wait_for(pool.invoke(fn, request({})), 20)
        await pool.update([FunctionConfig(name="fn", pool="python3.12-128", revision="b")])
        await asyncio.sleep(0)
        assert claims.released == [endpoint] and pool.environments(fn) == 0
    finally:
        await pool.close()


async def test_a_function_another_replica_serves_is_neither_reaped_nor_scaled_here_until_taken_over(
    servers,
) -> None:
    """With several gateway replicas, only the one serving a function (its Lease's holder) scales its
    Deployment and retires its pods; the one that takes it over counts what the Deployment runs."""
    first, second = await servers(), await servers()
    fn = FunctionConfig(name="fn", idle_timeout_seconds=0)
    source = StaticEndpointSource({fn.key: [first, second]})
    served: set[str] = set()
    pool = HttpEnvironmentPool(
        source, [fn], cold_start_timeout=30, reap_interval=3600, owns=lambda f: f.key in served
    )
    await pool.start()
    try:
        await asyncio.sleep(0.05)
        assert await pool.reap(asyncio.get_running_loop().time() + 10_000) == 0
        assert fn.key not in source.requested  # another replica serves it: its Deployment left alone
        served.add(fn.key)  # taken over: both pods are its environments, counted as the Deployment's
        result = await asyncio.wait_for(pool.invoke(fn, request({})), 10)
        assert result.function_error is None and fn.key not in source.requested  # no scaling to 1
        assert await pool.reap(asyncio.get_running_loop().time() + 10_000) == 2
        assert source.requested[fn.key] == 0
    finally:
        await pool.close()


async def test_an_environment_busy_with_a_call_not_sent_here_is_skipped_not_an_error(servers) -> None:
    """A pod still running a call a lost replica sent answers 429: the function did not run there, so
    the request goes to another environment (never the 429 to the caller, never two at once)."""
    busy, free = await servers(), await servers()
    fn = FunctionConfig(name="fn", provisioned_concurrency=2)
    source = StaticEndpointSource({fn.key: [busy, free]})
    pool = HttpEnvironmentPool(source, [fn], cold_start_timeout=30)
    await pool.start()
    client = PodClient()
    try:
        await asyncio.sleep(0.05)
        elsewhere = asyncio.create_task(
            client.request(busy, "POST", "/invoke", {}, json.dumps({"seconds": 2}).encode(), 10)
        )
        await asyncio.sleep(0.5)
        results = await asyncio.wait_for(
            asyncio.gather(*(pool.invoke(fn, request({})) for _ in range(3))), 20
        )
        assert all(r.function_error is None for r in results)
        assert (await elsewhere).status == 200
    finally:
        client.close()
        await pool.close()


async def test_an_address_that_now_serves_another_function_never_answers_for_this_one(servers) -> None:
    """A pod's address given to another function's pod before the watch says so: that pod refuses the
    call (421) without running it, and the request goes to an environment of its own function."""
    other, own = await servers("other"), await servers()
    fn = FunctionConfig(name="fn", provisioned_concurrency=2)
    pool = HttpEnvironmentPool(StaticEndpointSource({fn.key: [own, other]}), [fn], cold_start_timeout=30)
    await pool.start()
    try:
        # Two at once: one of them takes the other function's address.
        results = await asyncio.wait_for(asyncio.gather(*(pool.invoke(fn, request({})) for _ in "ab")), 20)
        results.append(await asyncio.wait_for(pool.invoke(fn, request({})), 20))
        for result in results:
            assert result.function_error is None, result.payload
            answer = json.loads(result.payload)  # the ARN of the function that ran it
            assert answer["request_id"] == "r" and answer["arn"].endswith(":function:fn"), answer
        client = PodClient()
        stats = await client.request(other, "GET", "/stats", {}, b"", 5)
        client.close()
        assert json.loads(stats.body) == {"invocations": 0, "busyRefusals": 0, "misdirected": 1}
    finally:
        await pool.close()


async def test_an_answer_that_is_not_the_requests_result_is_never_its_payload() -> None:
    """A 200 to /invoke that does not name the request (here a health answer, as a server that is no
    runtime's, or a reply meant for another request, would give) fails the call as a lost
    environment: its body is never passed on as the function's result."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b'{"message": "ready"}'
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    endpoint = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    fn = FunctionConfig(name="fn", provisioned_concurrency=1)
    pool = HttpEnvironmentPool(StaticEndpointSource({fn.key: [endpoint]}), [fn], cold_start_timeout=5)
    await pool.start()
    try:
        result = await asyncio.wait_for(pool.invoke(fn, request({})), 10)
        assert result.function_error == "Unhandled" and result.error_type == "Runtime.ExitError"
        assert json.loads(result.payload)["errorType"] == "Runtime.ExitError", result.payload
        assert "names request None" in result.log, result.log
    finally:
        await pool.close()
        server.close()
