"""Kafka as a mapping source against a real Apache Kafka broker (KRaft), beyond the generic delivery
tests every broker runs (tests/brokers/test_esm_delivery.py, test_esm_crashes.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from lamina.api import Endpoint
from lamina.eventsources.config import MappingConfig
from lamina.eventsources.factory import consumer_name, make_sink, make_source
from lamina.eventsources.mapping import MappingWorker
from lamina.eventsources.status import OK
from lamina.eventsources.timing import Timing
from lamina_runtime.protocol import InvocationResult
from tests.support import brokers

from .conftest import FAST, Kit, TestFunction, eventually

pytestmark = pytest.mark.brokers


class Recorder:
    """A function that keeps every raw event it gets and succeeds (or answers what ``answer`` says)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.hold: asyncio.Event | None = None
        self.answer: Any = None

    async def __call__(
        self, function_name: str, payload: bytes, request_id: str | None = None
    ) -> InvocationResult:
        event = json.loads(payload)
        self.events.append(event)
        if self.hold is not None:
            await self.hold.wait()
        answer = self.answer(event) if callable(self.answer) else self.answer
        return InvocationResult("req", json.dumps(answer).encode())

    def values(self) -> list[str]:
        return [
            base64.b64decode(r["value"]).decode("utf-8", "replace")
            for e in self.events
            for records in e["records"].values()
            for r in records
        ]


def kafka_worker(
    url: str | list[str],
    topic: str,
    function: Any,
    *,
    esm: str,
    dlq: str | None = None,
    endpoint: dict[str, Any] | None = None,
    secrets: dict[tuple[str, str], str] | None = None,
    timing: Timing = FAST,
    starting_timestamp: float | None = None,
    **config: Any,
) -> MappingWorker:
    endpoint = endpoint or {
        "kafka": {"bootstrapServers": [url] if isinstance(url, str) else url, "topic": topic}
    }
    source_endpoint = Endpoint.model_validate(endpoint)
    cfg = MappingConfig(name=esm, function_name="fn", **config)
    lookup = lambda name, key: (secrets or {}).get((name, key))  # noqa: E731
    source = make_source(
        source_endpoint,
        None,
        esm_name=esm,
        batch_size=cfg.batch_size,
        starting_position=cfg.starting_position,
        starting_timestamp=starting_timestamp,
        secret=lookup,
    )
    sink = (
        make_sink(Endpoint.model_validate({"kafka": {**endpoint["kafka"], "topic": dlq}}), None, lookup)
        if dlq
        else None
    )
    return MappingWorker(cfg, source, function, dlq=sink, timing=timing)


async def produce(url: str, topic: str, items: list[tuple[bytes | None, bytes]], **headers: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=url, acks="all", max_request_size=16 << 20)
    await producer.start()
    try:
        header_list = [(k, v.encode()) for k, v in headers.items()]
        for key, value in items:
            await producer.send_and_wait(topic, value, key=key, headers=header_list)
    finally:
        await producer.stop()


async def test_the_event_has_lambdas_kafka_shape(kafka_server, running):
    kit = Kit("kafka", kafka_server)
    topic = kit.name("shape")
    await produce(kit.url, topic, [(b"k1", b'{"n": 1}'), (None, b"\xff\x00")], tenant="acme")
    function = Recorder()
    running(
        kafka_worker(
            kit.url, topic, function, esm=f"esm-{kit.tag}", batch_size=10, maximum_batching_window_seconds=1
        )
    )
    await eventually(lambda: len(function.values()) == 2 if function.events else False, what="both records")

    event = function.events[0]
    assert event["eventSource"] == "SelfManagedKafka"
    assert event["bootstrapServers"] == kit.url
    assert event["eventSourceArn"] == f"lamina:kafka:{kit.url}/{topic}"
    (key,) = event["records"]
    assert key == f"{topic}-0"
    first, second = event["records"][key]
    assert first["topic"] == topic and first["partition"] == 0 and first["offset"] == 0
    assert base64.b64decode(first["key"]) == b"k1"
    assert base64.b64decode(first["value"]) == b'{"n": 1}'
    assert first["timestampType"] == "CREATE_TIME" and abs(first["timestamp"] / 1000 - time.time()) < 120
    assert first["headers"] == [{"tenant": list(b"acme")}]
    assert second["key"] is None and base64.b64decode(second["value"]) == b"\xff\x00"


async def test_batches_hold_one_partition_each_and_keep_its_order(kafka_server, running):
    kit = Kit("kafka", kafka_server)
    topic = kit.name("parts")
    await brokers.kafka_topic(kit.url, topic, partitions=3)
    items = [(f"key-{i % 3}".encode(), f"{i % 3}:{i:03d}".encode()) for i in range(60)]
    await produce(kit.url, topic, items)
    function = Recorder()
    worker = running(
        kafka_worker(
            kit.url, topic, function, esm=f"esm-{kit.tag}", batch_size=7, maximum_batching_window_seconds=1
        )
    )
    await eventually(lambda: worker.status.records_succeeded == 60, what="60 records")

    for event in function.events:
        assert len(event["records"]) == 1, "a batch holds one partition"
        (records,) = event["records"].values()
        assert len(records) <= 7
        assert [r["offset"] for r in records] == sorted(r["offset"] for r in records)
    by_key: dict[str, list[str]] = {}
    for value in function.values():
        by_key.setdefault(value.split(":")[0], []).append(value)
    assert sorted(by_key) == ["0", "1", "2"]
    for values in by_key.values():
        assert values == sorted(values), "partition order kept"
    await worker.stop()
    assert await kit.unacknowledged(topic, worker.config.name) == 0


async def test_offsets_are_committed_only_after_the_batch_succeeded(kafka_server, running):
    kit = Kit("kafka", kafka_server)
    topic, esm = kit.name("commit"), f"esm-{kit.tag}"
    await produce(kit.url, topic, [(None, f"r{i}".encode()) for i in range(5)])
    function = Recorder()
    function.hold = asyncio.Event()
    worker = running(
        kafka_worker(kit.url, topic, function, esm=esm, batch_size=5, maximum_batching_window_seconds=1)
    )
    await eventually(lambda: function.events, what="the batch in the function")
    await asyncio.sleep(1.0)
    assert await kit.unacknowledged(topic, esm) == 5, "nothing committed while the function runs"
    function.hold.set()
    await eventually(lambda: worker.status.records_succeeded == 5, what="acknowledged")
    await eventually(lambda: _is(kit.unacknowledged(topic, esm), 0), what="committed after success")


async def _is(count, expected: int) -> bool:
    return await count == expected


async def test_partial_failures_name_partition_and_offset(kafka_server, running):
    kit = Kit("kafka", kafka_server)
    topic, esm = kit.name("partial"), f"esm-{kit.tag}"
    await produce(kit.url, topic, [(None, f"r{i}".encode()) for i in range(6)])
    function = Recorder()
    first = True

    def answer(event: dict[str, Any]) -> Any:
        nonlocal first
        if first:  # the record at offset 3 failed: {"partition": p, "offset": o}, as a Kafka handler says it
            first = False
            return {"batchItemFailures": [{"itemIdentifier": {"partition": 0, "offset": 3}}]}
        return {"batchItemFailures": []}

    function.answer = answer
    worker = running(
        kafka_worker(
            kit.url,
            topic,
            function,
            esm=esm,
            batch_size=6,
            maximum_batching_window_seconds=1,
            report_batch_item_failures=True,
        )
    )
    await eventually(lambda: worker.status.records_succeeded == 6, what="all six done")
    offsets = [[r["offset"] for r in e["records"][f"{topic}-0"]] for e in function.events]
    assert offsets == [[0, 1, 2, 3, 4, 5], [3, 4, 5]], "retried from the failed record on, in order"
    assert worker.status.last_processing_result == OK


async def test_at_timestamp_starts_at_the_first_record_at_or_after_it(kafka_server, running):
    kit = Kit("kafka", kafka_server)
    topic = kit.name("stamp")
    await produce(kit.url, topic, [(None, b"before-1"), (None, b"before-2")])
    await asyncio.sleep(1.5)
    stamp = time.time()
    await asyncio.sleep(0.2)
    await produce(kit.url, topic, [(None, b"after-1"), (None, b"after-2")])
    function = Recorder()
    running(
        kafka_worker(
            kit.url,
            topic,
            function,
            esm=f"esm-{kit.tag}",
            batch_size=10,
            maximum_batching_window_seconds=1,
            starting_position="AT_TIMESTAMP",
            starting_timestamp=stamp,
        )
    )
    await eventually(lambda: len(function.values()) >= 2 if function.events else False, what="records")
    assert function.values() == ["after-1", "after-2"]


async def test_scaling_config_spreads_partitions_over_group_members(kafka_server):
    kit = Kit("kafka", kafka_server)
    topic, esm = kit.name("spread"), f"esm-{kit.tag}"
    await brokers.kafka_topic(kit.url, topic, partitions=4)
    functions = [Recorder() for _ in range(2)]
    workers = [
        kafka_worker(kit.url, topic, f, esm=esm, batch_size=5, maximum_batching_window_seconds=1)
        for f in functions
    ]
    for worker in workers:
        worker.start()
    try:
        # Records only once both members share the partitions: a member that joins after the first
        # consumed everything would find nothing left to prove the spread with.
        group = consumer_name(esm)

        async def both_joined() -> bool:
            try:
                return await brokers.kafka_group_members(kit.url, group) == ("Stable", 2)
            except Exception:  # the coordinator may not know the group yet
                return False

        await eventually(both_joined, what="both members in the group, partitions assigned")
        await produce(
            kit.url, topic, [(f"k{i % 4}".encode(), f"{i % 4}:{i:03d}".encode()) for i in range(80)]
        )
        await eventually(
            lambda: sum(w.status.records_succeeded for w in workers) == 80, what="80 records over two members"
        )
        seen = [{key for e in f.events for key in e["records"]} for f in functions]
        assert all(seen), "each member of the group got partitions"
        assert not (seen[0] & seen[1]), "a partition belongs to one member"
        values = functions[0].values() + functions[1].values()
        assert sorted(values) == sorted(f"{i % 4}:{i:03d}" for i in range(80))
    finally:
        for worker in workers:
            await worker.stop()
    assert await kit.unacknowledged(topic, esm) == 0


async def test_a_record_larger_than_the_payload_limit_goes_to_the_destination(kafka_server, running):
    kit = Kit("kafka", kafka_server)
    topic, dlq, esm = kit.name("big"), kit.name("big-dlq"), f"esm-{kit.tag}"
    big = b"x" * (7 * 1024 * 1024)  # over Lambda's 6 MB synchronous payload limit
    await produce(kit.url, topic, [(None, b"small-1"), (None, big), (None, b"small-2")])
    function = TestFunction()
    worker = running(
        kafka_worker(
            kit.url,
            topic,
            function,
            esm=esm,
            dlq=dlq,
            batch_size=3,
            maximum_batching_window_seconds=1,
            timing=Timing(poll_wait=0.2),
        )
    )
    await eventually(lambda: worker.status.records_dead_lettered == 1, what="the large record dead-lettered")
    await eventually(lambda: function.succeeded == ["small-1", "small-2"], what="the others processed")
    (letter,) = await kit.dead_letters(dlq)
    assert letter["requestContext"]["condition"] == "RecordTooLarge"
    assert letter["requestContext"]["approximateInvokeCount"] == 0
    assert letter["responsePayload"]["errorType"] == "RequestTooLargeException"
    assert (
        "larger than the function's payload limit of 6291456 bytes"
        in letter["responsePayload"]["errorMessage"]
    )
    assert letter["recordInfo"]["messageId"] == f"{topic}-0:1"
    assert all(len(json.dumps(b)) < 6 * 1024 * 1024 for b in function.batches)
    await eventually(lambda: _is(kit.unacknowledged(topic, esm), 0), what="all committed")


def secure_endpoint(server: brokers.KafkaServer, topic: str) -> dict[str, Any]:
    return {
        "kafka": {
            "bootstrapServers": [server.secure_url],
            "topic": topic,
            "tls": {"caCertificate": {"secretKeyRef": {"name": "kafka-ca", "key": "ca.crt"}}},
            "sasl": {"mechanism": "SCRAM-SHA-512", "secretRef": {"name": "kafka-user"}},
        }
    }


async def test_tls_and_scram_credentials_from_secrets(kafka_server, running):
    kit = Kit("kafka", kafka_server)
    topic, dlq = kit.name("secure"), kit.name("secure-dlq")
    await produce(kit.url, topic, [(None, b"over-tls"), (None, b"poison-secure")])
    secrets = {
        ("kafka-ca", "ca.crt"): kafka_server.tls.ca.read_text(),
        ("kafka-user", "username"): kafka_server.USER,
        ("kafka-user", "password"): kafka_server.PASSWORD,
    }
    function = TestFunction()
    worker = running(
        kafka_worker(
            None,
            topic,
            function,
            esm=f"esm-{kit.tag}",
            endpoint=secure_endpoint(kafka_server, topic),
            secrets=secrets,
            dlq=dlq,
            batch_size=1,
            maximum_retry_attempts=0,
        )
    )
    await eventually(lambda: function.succeeded == ["over-tls"], what="a record read over SASL_SSL")
    await eventually(lambda: worker.status.records_dead_lettered == 1, what="dead-lettered over SASL_SSL")
    (letter,) = await kit.dead_letters(dlq)
    assert letter["record"]["body"] == "poison-secure"


@pytest.mark.parametrize("problem", ["wrong password", "missing Secret"])
async def test_refused_or_missing_credentials_name_the_secret_never_the_value(kafka_server, running, problem):
    kit = Kit("kafka", kafka_server)
    topic = kit.name("creds")
    await produce(kit.url, topic, [(None, b"waits")])
    secrets = {("kafka-ca", "ca.crt"): kafka_server.tls.ca.read_text()}
    if problem == "wrong password":
        secrets.update(
            {("kafka-user", "username"): kafka_server.USER, ("kafka-user", "password"): "hunter2-wrong"}
        )
    function = TestFunction()
    worker = running(
        kafka_worker(
            None,
            topic,
            function,
            esm=f"esm-{kit.tag}",
            endpoint=secure_endpoint(kafka_server, topic),
            secrets=secrets,
            batch_size=1,
        )
    )
    await eventually(lambda: worker.status.broker_errors >= 1, what="the refusal")
    status = worker.status
    if problem == "wrong password":
        expected = "PROBLEM: kafka credentials: Kafka refused the SCRAM-SHA-512 login from Secret kafka-user"
    else:
        expected = (
            "PROBLEM: kafka credentials: Secret kafka-user is missing or has no key 'username' "
            "(SASL SCRAM-SHA-512)"
        )
    assert status.last_processing_result == expected
    assert "hunter2" not in json.dumps(status.to_dict()) and kafka_server.PASSWORD not in (
        status.last_error or ""
    )
    assert function.batches == []


async def test_broker_down_at_start_is_reported_then_everything_is_processed(tmp_path, running):
    if not brokers.available("kafka"):
        pytest.skip("java or the Kafka jars are not available")
    server = brokers.KafkaServer(tmp_path / "kafka")  # not started yet
    try:
        function = TestFunction()
        worker = running(kafka_worker(server.url, "late", function, esm="esm-late", batch_size=10))
        await eventually(
            lambda: worker.status.last_processing_result == "PROBLEM: kafka source unavailable",
            what="the broker reported unavailable",
        )
        assert worker.status.state != "Enabled"
        await server.astart()
        await produce(server.url, "late", [(None, f"late-{i}".encode()) for i in range(5)])
        await eventually(
            lambda: len(function.succeeded) == 5, limit=180, what="records after the broker came up"
        )
        assert function.succeeded == [f"late-{i}" for i in range(5)]
        assert worker.status.state == "Enabled"
        await worker.stop()
    finally:
        await asyncio.to_thread(server.close)


async def test_a_broker_gone_mid_stream_shows_in_the_status_and_nothing_is_lost(private_server, running):
    """aiokafka retries a lost broker by itself, its fetches coming back empty: the worker asks the
    cluster for metadata after a few quiet seconds, so a broker that stays away is reported (and
    the worker reconnects from the last commit once it is back)."""
    server = private_server("kafka")
    topic = f"gone-{uuid.uuid4().hex[:8]}"
    first = [f"a{i:02d}" for i in range(10)]
    await produce(server.url, topic, [(None, b.encode()) for b in first])
    function = TestFunction()
    worker = running(kafka_worker(server.url, topic, function, esm=f"esm-{topic}", batch_size=5))
    await eventually(lambda: function.succeeded == first, limit=120, what="the first records")
    await server.astop()
    await eventually(
        lambda: worker.status.last_processing_result == "PROBLEM: kafka source unavailable",
        limit=120,
        what="the lost broker reported",
    )
    assert "does not answer" in (worker.status.last_error or "") or worker.status.broker_errors >= 1
    await server.astart()
    second = [f"b{i:02d}" for i in range(10)]
    await produce(server.url, topic, [(None, b.encode()) for b in second])
    await eventually(lambda: set(function.succeeded) >= set(second), limit=180, what="the records after it")
    assert function.succeeded[: len(first)] == first and set(function.succeeded) == set(first + second)
    await eventually(lambda: worker.status.last_processing_result == "OK", what="OK again")
    assert worker.status.state == "Enabled"
