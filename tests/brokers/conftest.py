"""Fixtures for event-source tests: real brokers (shared per session, or private for restarts),
a scripted test function standing in for the Invoker, and a helper to run a mapping worker."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lamina.api import Endpoint  # noqa: E402
from lamina.eventsources.config import MappingConfig  # noqa: E402
from lamina.eventsources.factory import consumer_name, make_sink, make_source  # noqa: E402
from lamina.eventsources.mapping import MappingWorker  # noqa: E402
from lamina.eventsources.timing import Backoff, Timing  # noqa: E402
from lamina_runtime.protocol import InvocationResult  # noqa: E402
from tests.support import brokers  # noqa: E402
from tests.support.brokers import endpoint_of, normalized_records  # noqa: E402

KINDS = ("redis", "nats", "rabbitmq", "kafka")

FAST = Timing(
    poll_wait=0.2,
    function_error=Backoff(0.02, 0.2),
    throttle=Backoff(0.02, 0.2),
    broker=Backoff(0.2, 1.0),
)


def _server(kind: str, tmp_path_factory: pytest.TempPathFactory):
    if not brokers.available(kind):
        pytest.skip(f"{brokers.BINARIES[kind]} is not installed")
    server = brokers.server_for(kind, tmp_path_factory.mktemp(kind))
    server.start()
    return server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = _server("redis", tmp_path_factory)
    yield server
    server.close()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory):
    server = _server("nats", tmp_path_factory)
    yield server
    server.close()


@pytest.fixture(scope="session")
def rabbitmq_server(tmp_path_factory):
    server = _server("rabbitmq", tmp_path_factory)
    yield server
    server.close()


@pytest.fixture(scope="session")
def sqs_server(tmp_path_factory):
    server = _server("sqs", tmp_path_factory)
    yield server
    server.close()


@pytest.fixture(scope="session")
def kafka_server(tmp_path_factory):
    server = _server("kafka", tmp_path_factory)
    yield server
    server.close()


@pytest.fixture
def private_server(tmp_path_factory):
    """Start a broker of one's own (to restart it without disturbing other tests)."""
    started: list[brokers.BrokerServer] = []

    def start(kind: str) -> brokers.BrokerServer:
        server = _server(kind, tmp_path_factory)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@dataclass
class Kit:
    """One broker kind under test, with fresh names per test."""

    kind: str
    server: brokers.BrokerServer
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def url(self) -> str:
        return self.server.url

    def name(self, what: str) -> str:
        sep = "." if self.kind == "nats" else "-"
        return f"{what}{sep}{self.tag}"

    def endpoint(self, name: str) -> Endpoint:
        return endpoint_of(self.kind, self.url, name)

    @property
    def ordered(self) -> bool:
        return self.kind != "rabbitmq"

    async def publish(self, name: str, bodies: list[str | bytes]) -> None:
        await brokers.publish(
            self.kind, self.url, name, [b if isinstance(b, bytes) else b.encode() for b in bodies]
        )

    async def dead_letters(self, name: str) -> list[dict[str, Any]]:
        letters = [json.loads(body) for body, _ in await brokers.read_all(self.kind, self.url, name)]
        for letter in letters:
            record = letter.get("record") or {}
            if "body" not in record and "value" in record:  # Kafka's shape: the value is the body
                record["body"] = base64.b64decode(record["value"] or "").decode("utf-8", "replace")
        return letters

    async def unacknowledged(self, name: str, esm: str) -> int:
        return await brokers.unacknowledged(self.kind, self.url, name, consumer_name(esm))

    def worker(
        self,
        function: Callable[..., Any],
        source: str,
        *,
        dlq: str | None = None,
        esm: str | None = None,
        timing: Timing = FAST,
        source_options: dict[str, Any] | None = None,
        **config: Any,
    ) -> MappingWorker:
        esm = esm or f"esm-{self.tag}"
        cfg = MappingConfig(name=esm, function_name="fn", **config)
        options = dict(source_options or {})
        if self.kind == "nats":
            options.setdefault("ack_wait_seconds", 3.0)
        src = make_source(
            self.endpoint(source),
            self.url,
            esm_name=esm,
            batch_size=cfg.batch_size,
            starting_position=cfg.starting_position,
            **options,
        )
        sink = make_sink(self.endpoint(dlq), self.url) if dlq else None
        return MappingWorker(cfg, src, function, dlq=sink, timing=timing)


@pytest.fixture(params=KINDS)
def kit(request) -> Kit:
    kind = request.param
    server = request.getfixturevalue(f"{kind}_server")
    return Kit(kind, server)


class TestFunction:
    """Stands in for the Invoker: records every batch, fails the way a test asks.

    * a record whose body contains ``poison`` fails the whole invocation (function error) while
      ``poison_active`` is true, or only ``poison_failures`` times when that is set;
    * with ``report_failures``, records containing ``bad`` are reported in ``batchItemFailures`` the
      first ``bad_times`` times they are seen;
    * ``hold`` (an asyncio.Event) makes the function wait before answering;
    * ``throttle`` raises the throttling error that many times first.
    """

    __test__ = False

    def __init__(self, *, report_failures: bool = False, bad_times: int = 1) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.succeeded: list[str] = []
        self.poison_active = True
        self.poison_failures: int | None = None  # None: poison fails for as long as poison_active
        self.report_failures = report_failures
        self.bad_times = bad_times
        self.bad_seen: dict[str, int] = {}
        self.hold: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.throttle = 0
        self.invalid_response_once = False
        self.calls = 0

    def bodies(self, index: int) -> list[str]:
        return [r["body"] for r in self.batches[index]]

    async def __call__(
        self, function_name: str, payload: bytes, request_id: str | None = None
    ) -> InvocationResult:
        from lamina.invocation.errors import ThrottledError

        self.calls += 1
        if self.throttle > 0:
            self.throttle -= 1
            raise ThrottledError("ReservedFunctionConcurrentInvocationLimitExceeded")
        records = normalized_records(payload)
        self.batches.append(records)
        self.entered.set()
        if self.hold is not None:
            await self.hold.wait()
        rid = f"req-{self.calls}"
        if self.poison_active and any("poison" in r["body"] for r in records):
            if self.poison_failures is not None:
                self.poison_failures -= 1
                self.poison_active = self.poison_failures > 0
            error = {"errorMessage": "poison record", "errorType": "ValueError", "stackTrace": []}
            return InvocationResult(rid, json.dumps(error).encode(), function_error="Unhandled")
        if self.invalid_response_once:
            self.invalid_response_once = False
            return InvocationResult(rid, b'{"batchItemFailures": [{"itemIdentifier": "no-such-id"}]}')
        failures = []
        if self.report_failures:
            for r in records:
                if "bad" in r["body"]:
                    seen = self.bad_seen.get(r["body"], 0)
                    self.bad_seen[r["body"]] = seen + 1
                    if seen < self.bad_times:
                        failures.append({"itemIdentifier": r["messageId"]})
        failed_ids = {f["itemIdentifier"] for f in failures}
        self.succeeded.extend(r["body"] for r in records if r["messageId"] not in failed_ids)
        return InvocationResult(rid, json.dumps({"batchItemFailures": failures}).encode())


@pytest.fixture
def function() -> TestFunction:
    return TestFunction()


async def eventually(predicate: Callable[[], Any], limit: float = 90.0, what: str = "condition") -> None:
    """Wait until ``predicate()`` (sync or async) is true; fail the test if it never becomes true."""
    deadline = asyncio.get_running_loop().time() + limit
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def running() -> AsyncIterator[Callable[[MappingWorker], MappingWorker]]:
    """Start workers and stop them at the end of the test."""
    workers: list[MappingWorker] = []

    def start(worker: MappingWorker) -> MappingWorker:
        workers.append(worker)
        worker.start()
        return worker

    yield start
    for worker in workers:
        await worker.stop(grace_seconds=5)
