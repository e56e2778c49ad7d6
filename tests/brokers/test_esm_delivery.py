"""EventSourceMapping workers against real Redis, NATS JetStream, RabbitMQ and Kafka servers."""

from __future__ import annotations

import asyncio
import json

import pytest

from lamina.eventsources.status import FUNCTION_FAILED, NO_DESTINATION, OK

from .conftest import Kit, TestFunction, eventually

pytestmark = pytest.mark.brokers


async def test_batches_respect_batch_size_and_carry_the_event_shape(kit: Kit, function, running):
    src = kit.name("orders")
    bodies = [json.dumps({"n": i}) for i in range(25)]
    await kit.publish(src, bodies)
    worker = running(kit.worker(function, src, batch_size=10, maximum_batching_window_seconds=1))

    await eventually(lambda: len(function.succeeded) >= 25, what="25 records processed")
    await eventually(lambda: worker.status.records_succeeded == 25, what="25 acknowledged")

    sizes = [len(b) for b in function.batches]
    assert max(sizes) == 10 and sum(sizes) == 25, sizes
    assert sorted(function.succeeded) == sorted(bodies)
    if kit.ordered:  # streams keep their order
        assert function.succeeded == bodies
    record = function.batches[0][0]
    assert record["eventSourceARN"].startswith(f"lamina:{kit.kind}:")
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert int(record["attributes"]["SentTimestamp"]) > 0
    if kit.kind == "kafka":  # Lambda's Kafka shape (tests/brokers/test_kafka.py has the rest)
        assert record["eventSource"] == "SelfManagedKafka" and record["offset"] >= 0
    else:
        assert record["eventSource"] == f"lamina:{kit.kind}"
        assert record["messageId"] and kit.kind in record
    assert worker.status.last_processing_result == OK
    await worker.stop()
    assert await kit.unacknowledged(src, worker.config.name) == 0


async def test_poison_record_is_bisected_retried_and_dead_lettered(kit: Kit, function, running):
    src, dlq = kit.name("in"), kit.name("dlq")
    bodies = [f"good-{i}" for i in range(8)]
    bodies[5] = "poison-5"
    await kit.publish(src, bodies)
    worker = running(
        kit.worker(
            function,
            src,
            dlq=dlq,
            batch_size=8,
            maximum_batching_window_seconds=2,
            bisect_batch_on_function_error=True,
            maximum_retry_attempts=2,
        )
    )

    await eventually(lambda: worker.status.records_dead_lettered == 1, what="the poison record dead-lettered")
    await eventually(lambda: len(function.succeeded) == 7, what="the 7 good records processed")
    letters = await kit.dead_letters(dlq)
    assert len(letters) == 1
    letter = letters[0]
    assert letter["record"]["body"] == "poison-5"
    assert letter["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert letter["requestContext"]["functionName"] == "fn"
    assert letter["requestContext"]["esm"] == worker.config.name
    # 8-batch, 4-batch, 2-batch, then alone: first try + 2 retries.
    assert letter["requestContext"]["approximateInvokeCount"] == 6
    assert letter["responseContext"]["functionError"] == "Unhandled"
    assert letter["responsePayload"]["errorMessage"] == "poison record"
    assert letter["version"] == "1.0"
    assert [b for b in function.batches if len(b) == 1 and b[0]["body"] == "poison-5"], "never bisected to 1"
    assert sorted(function.succeeded) == sorted(b for b in bodies if b != "poison-5")
    if kit.ordered:
        assert function.succeeded == [b for b in bodies if b != "poison-5"]
    await worker.stop()
    assert await kit.unacknowledged(src, worker.config.name) == 0


async def test_retries_without_bisect_then_dead_letters_whole_batch(kit: Kit, function, running):
    src, dlq = kit.name("in"), kit.name("dlq")
    await kit.publish(src, ["a", "poison", "b"])
    worker = running(
        kit.worker(
            function, src, dlq=dlq, batch_size=3, maximum_batching_window_seconds=2, maximum_retry_attempts=1
        )
    )
    await eventually(lambda: worker.status.records_dead_lettered == 3, what="the failed batch dead-lettered")
    letters = await kit.dead_letters(dlq)
    assert sorted(x["record"]["body"] for x in letters) == ["a", "b", "poison"]
    assert {x["requestContext"]["approximateInvokeCount"] for x in letters} == {2}
    assert function.succeeded == []


async def test_partial_batch_failure(kit: Kit, running):
    function = TestFunction(report_failures=True)
    src = kit.name("in")
    await kit.publish(src, ["a", "bad-1", "c", "d"])
    worker = running(
        kit.worker(
            function, src, batch_size=4, maximum_batching_window_seconds=2, report_batch_item_failures=True
        )
    )
    await eventually(lambda: worker.status.records_succeeded == 4, what="all 4 acknowledged")
    assert function.bodies(0) == ["a", "bad-1", "c", "d"]
    if kit.kind == "rabbitmq":
        assert function.bodies(1) == ["bad-1"]  # only the failed record again
    else:
        assert function.bodies(1) == ["bad-1", "c", "d"]  # from the first failure on, in order
    assert len(function.batches) == 2
    assert function.batches[1][0]["attributes"]["ApproximateReceiveCount"] == "1"
    await worker.stop()
    assert await kit.unacknowledged(src, worker.config.name) == 0


async def test_invalid_batch_item_failures_fail_the_whole_batch(kit: Kit, running):
    function = TestFunction(report_failures=True)
    function.invalid_response_once = True
    src = kit.name("in")
    await kit.publish(src, ["x", "y", "z"])
    worker = running(
        kit.worker(
            function, src, batch_size=3, maximum_batching_window_seconds=2, report_batch_item_failures=True
        )
    )
    await eventually(lambda: worker.status.records_succeeded == 3, what="all acknowledged")
    assert len(function.batches) == 2
    assert sorted(function.bodies(1)) == ["x", "y", "z"]
    assert function.succeeded == function.bodies(1)


async def test_throttles_do_not_consume_retries(kit: Kit, function, running):
    src, dlq = kit.name("in"), kit.name("dlq")
    function.throttle = 4
    function.poison_failures = 1
    await kit.publish(src, ["poison-once"])
    worker = running(kit.worker(function, src, dlq=dlq, batch_size=1, maximum_retry_attempts=1))
    await eventually(lambda: function.succeeded == ["poison-once"], what="processed after throttles, 1 error")
    assert worker.status.throttles == 4
    assert worker.status.function_errors == 1
    assert worker.status.records_dead_lettered == 0
    assert await kit.dead_letters(dlq) == []


async def test_without_destination_nothing_is_dropped(kit: Kit, function, running):
    src = kit.name("in")
    await kit.publish(src, ["poison-keep"])
    worker = running(kit.worker(function, src, batch_size=1, maximum_retry_attempts=0))
    await eventually(lambda: worker.status.last_processing_result == NO_DESTINATION, what="PROBLEM reported")
    assert function.succeeded == []
    # The function is fixed: the kept record goes through.
    function.poison_active = False
    await eventually(lambda: function.succeeded == ["poison-keep"], what="the kept record processed")
    await worker.stop()
    assert await kit.unacknowledged(src, worker.config.name) == 0


async def test_filtered_records_are_acknowledged_and_dropped(kit: Kit, function, running):
    src = kit.name("in")
    bodies = [
        json.dumps({"type": "order", "amount": 5}),
        json.dumps({"type": "refund", "amount": 5}),
        "not json",
        json.dumps({"type": "order", "amount": 500}),
    ]
    await kit.publish(src, bodies)
    field = "value" if kit.kind == "kafka" else "body"  # Lambda filters a Kafka record on its value
    pattern = json.dumps({field: {"type": ["order"], "amount": [{"numeric": ["<", 100]}]}})
    worker = running(
        kit.worker(function, src, batch_size=10, maximum_batching_window_seconds=1, filter_patterns=[pattern])
    )
    await eventually(lambda: worker.status.records_filtered == 3, what="3 records filtered out")
    await eventually(lambda: function.succeeded == [bodies[0]], what="the matching record processed")
    await worker.stop()
    assert await kit.unacknowledged(src, worker.config.name) == 0


async def test_disable_stops_and_enable_resumes_from_the_same_position(kit: Kit, function, running):
    src = kit.name("in")
    await kit.publish(src, ["first-1", "first-2"])
    worker = running(kit.worker(function, src, batch_size=10))
    await eventually(lambda: len(function.succeeded) == 2, what="first records")

    worker.set_enabled(False)
    await eventually(lambda: worker.status.state == "Disabled", what="Disabled")
    await kit.publish(src, ["second-1", "second-2", "second-3"])
    await eventually(
        lambda: kit.unacknowledged(src, worker.config.name),
        what="records waiting in the broker",
    )
    assert len(function.succeeded) == 2
    assert await kit.unacknowledged(src, worker.config.name) == 3

    worker.set_enabled(True)
    await eventually(lambda: len(function.succeeded) == 5, what="resumed")
    assert sorted(function.succeeded[2:]) == ["second-1", "second-2", "second-3"]
    assert worker.status.state == "Enabled"


async def test_disable_while_retrying_gives_the_batch_back(kit: Kit, function, running):
    src = kit.name("in")
    await kit.publish(src, ["poison-held"])
    worker = running(kit.worker(function, src, batch_size=1))  # retries forever
    await eventually(lambda: worker.status.retries >= 2, what="retrying")
    assert worker.status.last_processing_result == FUNCTION_FAILED
    worker.set_enabled(False)
    await eventually(lambda: worker.status.state == "Disabled", what="Disabled")
    assert await kit.unacknowledged(src, worker.config.name) == 1
    function.poison_active = False
    worker.set_enabled(True)
    await eventually(lambda: function.succeeded == ["poison-held"], what="processed after re-enabling")
    await worker.stop()
    assert await kit.unacknowledged(src, worker.config.name) == 0


async def test_records_older_than_the_age_limit_go_to_the_destination(kit: Kit, function, running):
    src, dlq = kit.name("in"), kit.name("dlq")
    await kit.publish(src, ["poison-aging"])
    # The spec's minimum is 60 s; the worker itself takes any limit, which keeps the test short.
    worker = running(
        kit.worker(
            function, src, dlq=dlq, batch_size=1, maximum_record_age_seconds=1, maximum_retry_attempts=-1
        )
    )
    await eventually(lambda: worker.status.records_dead_lettered == 1, what="the aged record dead-lettered")
    await kit.publish(src, ["fine"])
    await eventually(lambda: function.succeeded == ["fine"], what="the next record processed")
    (letter,) = await kit.dead_letters(dlq)
    assert letter["requestContext"]["condition"] == "MaximumRecordAgeExceeded"
    assert letter["requestContext"]["approximateInvokeCount"] >= 1
    assert letter["record"]["body"] == "poison-aging"
    assert letter["responsePayload"]["errorMessage"] == "poison record"


async def test_a_record_already_too_old_is_dead_lettered_uninvoked(redis_server, function, running):
    import redis.asyncio as aioredis

    kit = Kit("redis", redis_server)
    src, dlq = kit.name("in"), kit.name("dlq")
    client = aioredis.Redis.from_url(kit.url)
    await client.xadd(src, {"body": "ancient"}, id="1000-0")  # an entry id is its arrival time (1970)
    await client.aclose()
    worker = running(kit.worker(function, src, dlq=dlq, batch_size=1, maximum_record_age_seconds=60))
    await eventually(lambda: worker.status.records_dead_lettered == 1, what="dead-lettered")
    (letter,) = await kit.dead_letters(dlq)
    assert letter["requestContext"]["condition"] == "MaximumRecordAgeExceeded"
    assert letter["requestContext"]["approximateInvokeCount"] == 0
    assert letter["responseContext"]["functionError"] is None
    assert function.batches == []


@pytest.mark.parametrize("kind", ["redis", "nats", "kafka"])
async def test_latest_starts_after_what_is_already_there(kind, request, function, running):
    kit = Kit(kind, request.getfixturevalue(f"{kind}_server"))
    src = kit.name("in")
    await kit.publish(src, ["old-1", "old-2"])
    worker = running(kit.worker(function, src, batch_size=10, starting_position="LATEST"))
    await eventually(lambda: worker.status.state == "Enabled", what="Enabled")
    await kit.publish(src, ["new-1"])
    await eventually(lambda: function.succeeded, what="a record processed")
    assert function.succeeded == ["new-1"]


@pytest.mark.parametrize("heartbeat", [True, False])
async def test_nats_records_held_longer_than_ack_wait_stay_with_the_worker(
    nats_server, function, running, heartbeat
):
    """The worker's in-progress acks keep its batch from going to another consumer of the durable."""
    import nats
    import nats.errors

    kit = Kit("nats", nats_server)
    src = kit.name("in")
    await kit.publish(src, ["slow-1", "slow-2"])
    function.hold = asyncio.Event()
    worker = kit.worker(function, src, batch_size=2, maximum_batching_window_seconds=1)  # ack_wait 3 s
    if not heartbeat:
        worker.source.heartbeat_interval = None  # what the test must be able to catch
    running(worker)
    await eventually(lambda: function.batches, what="the batch in the function")

    nc = await nats.connect(kit.url)
    try:
        js = nc.jetstream()
        stream = await js.find_stream_name_by_subject(src)
        rival = await js.pull_subscribe_bind(durable=f"lamina-{worker.config.name}", stream=stream)
        try:
            stolen = await rival.fetch(2, timeout=7)  # more than twice the consumer's ack_wait
        except nats.errors.TimeoutError:
            stolen = []
    finally:
        await nc.close()
    function.hold.set()
    await eventually(lambda: worker.status.records_succeeded == 2, what="acknowledged")
    if heartbeat:
        assert stolen == []
    else:
        assert [m.data for m in stolen] == [b"slow-1", b"slow-2"]
