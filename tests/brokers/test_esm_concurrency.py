"""scalingConfig.maximumConcurrency: several batches of a RabbitMQ queue (a real rabbitmq-server) or an
SQS queue (ElasticMQ) in flight at once; without it, one at a time."""

from __future__ import annotations

import asyncio
import json
import uuid

from lamina.api import EventSourceMapping, parse_object
from lamina.eventsources.runners import BrokerMapping
from lamina_runtime.protocol import InvocationResult
from tests.brokers.conftest import eventually
from tests.support import brokers


class Overlap:
    """The invoker: counts invocations running at once; with ``wait_for`` set, each invocation
    holds until that many run together (so only real concurrency lets the batches finish)."""

    def __init__(self, wait_for: int = 0, hold: float = 0.0) -> None:
        self.wait_for = wait_for
        self.hold = hold
        self.active = 0
        self.most = 0
        self.bodies: list[str] = []
        self._together = asyncio.Event()

    async def __call__(
        self, function_key: str, payload: bytes, request_id: str | None = None
    ) -> InvocationResult:
        self.active += 1
        self.most = max(self.most, self.active)
        try:
            if self.active >= self.wait_for:
                self._together.set()
            if self.wait_for:
                await asyncio.wait_for(self._together.wait(), 20)
            await asyncio.sleep(self.hold)
            self.bodies += [r["body"] for r in json.loads(payload)["Records"]]
            return InvocationResult(request_id=str(uuid.uuid4()), payload=b"null")
        finally:
            self.active -= 1


async def never(*_: object) -> None:
    raise AssertionError("nothing is enqueued here")


def mapping(url: str, queue: str, **spec: object) -> EventSourceMapping:
    esm = parse_object(
        {
            "apiVersion": "lamina.dev/v1alpha1",
            "kind": "EventSourceMapping",
            "metadata": {"name": f"esm-{queue}", "namespace": "default"},
            "spec": {"functionName": "fn", "source": {"rabbitmq": {"url": url, "queue": queue}}, **spec},
        }
    )
    assert isinstance(esm, EventSourceMapping)
    return esm


async def run(esm: EventSourceMapping, invoker: Overlap, url: str, queue: str, count: int) -> BrokerMapping:
    runner = BrokerMapping(esm, invoker, never, lambda target, ns: str(target.url))
    await runner.start()
    try:
        await brokers.publish("rabbitmq", url, queue, [f"m{i}".encode() for i in range(count)])
        await eventually(lambda: len(invoker.bodies) == count, what=f"{count} messages processed")
    finally:
        await runner.stop()
    return runner


async def test_maximum_concurrency_runs_batches_side_by_side(rabbitmq_server) -> None:
    url, queue = rabbitmq_server.url, f"wide-{uuid.uuid4().hex[:8]}"
    esm = mapping(url, queue, batchSize=1, scalingConfig={"maximumConcurrency": 4})
    invoker = Overlap(wait_for=4)  # a batch can only finish once four run together
    runner = await run(esm, invoker, url, queue, 8)
    assert sorted(invoker.bodies) == sorted(f"m{i}" for i in range(8))
    assert invoker.most == 4  # never more than the maximum
    snapshot = runner.snapshot()
    assert snapshot["concurrency"] == 4
    assert snapshot["counters"]["recordsSucceeded"] == 8  # the workers' counters, summed
    assert snapshot["lastProcessingResult"] == "OK"
    assert await brokers.unacknowledged("rabbitmq", url, queue, "") == 0


async def test_without_scaling_config_one_batch_at_a_time(rabbitmq_server) -> None:
    url, queue = rabbitmq_server.url, f"narrow-{uuid.uuid4().hex[:8]}"
    invoker = Overlap(hold=0.1)
    runner = await run(mapping(url, queue, batchSize=1), invoker, url, queue, 5)
    assert invoker.most == 1
    assert runner.snapshot()["concurrency"] == 1


async def test_an_sqs_mapping_with_maximum_concurrency_runs_that_many_batches_and_no_more(sqs_server) -> None:
    """SQS: scalingConfig.maximumConcurrency receives and invokes that many batches side by side (as
    Lambda's pollers scale up to it), never more; every message deleted once processed."""
    client = sqs_server.client()
    url = client.create_queue(
        QueueName=f"wide-{uuid.uuid4().hex[:8]}", Attributes={"VisibilityTimeout": "30"}
    )["QueueUrl"]
    for i in range(12):
        client.send_message(QueueUrl=url, MessageBody=f"m{i}")
    esm = parse_object(
        {
            "apiVersion": "lamina.dev/v1alpha1",
            "kind": "EventSourceMapping",
            "metadata": {"name": "esm-sqs-wide", "namespace": "default"},
            "spec": {
                "functionName": "fn",
                "batchSize": 1,
                "scalingConfig": {"maximumConcurrency": 3},
                "source": {"sqs": {"queueUrl": url}},
            },
        }
    )
    assert isinstance(esm, EventSourceMapping)
    invoker = Overlap(wait_for=3, hold=0.05)  # a batch can only finish once three run together
    runner = BrokerMapping(esm, invoker, never, lambda target, ns: None)
    await runner.start()
    try:
        await eventually(lambda: len(invoker.bodies) == 12, limit=60, what="12 messages processed")
    finally:
        await runner.stop()
    assert sorted(invoker.bodies) == sorted(f"m{i}" for i in range(12))
    assert invoker.most == 3
    assert runner.snapshot()["concurrency"] == 3
    attrs = client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert (attrs["ApproximateNumberOfMessages"], attrs["ApproximateNumberOfMessagesNotVisible"]) == (
        "0",
        "0",
    )
