"""SQS queues (standard and FIFO) as a mapping source against a real SQS-compatible server
(ElasticMQ), with boto3's SQS client as the producer."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from typing import Any

import pytest

from lamina.api import Endpoint
from lamina.eventsources.config import MappingConfig
from lamina.eventsources.factory import make_sink, make_source
from lamina.eventsources.mapping import MappingWorker
from lamina.eventsources.status import FUNCTION_FAILED
from lamina.eventsources.timing import Timing
from lamina_runtime.protocol import InvocationResult
from tests.support import brokers

from .conftest import FAST, TestFunction, eventually

pytestmark = pytest.mark.brokers


def queue(server: brokers.ElasticMQServer, prefix: str, *, fifo: bool = False, **attributes: Any) -> str:
    """A fresh queue (visibility timeout 2 s unless said otherwise); its URL."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}" + (".fifo" if fifo else "")
    attrs = {"VisibilityTimeout": "2", **{k: str(v) for k, v in attributes.items()}}
    if fifo:
        attrs.update(FifoQueue="true", ContentBasedDeduplication="true")
    return server.client().create_queue(QueueName=name, Attributes=attrs)["QueueUrl"]


def arn_of(server: brokers.ElasticMQServer, url: str) -> str:
    attrs = server.client().get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return attrs["Attributes"]["QueueArn"]


def send(
    server: brokers.ElasticMQServer, url: str, bodies: list[str], group: str | None = None, **attrs: str
):
    client = server.client()
    for body in bodies:
        extra: dict[str, Any] = {"MessageGroupId": group} if group else {}
        if attrs:
            extra["MessageAttributes"] = {
                k: {"DataType": "String", "StringValue": v} for k, v in attrs.items()
            }
        client.send_message(QueueUrl=url, MessageBody=body, **extra)


def counts(server: brokers.ElasticMQServer, url: str) -> tuple[int, int]:
    """(visible, in flight) messages of a queue."""
    attrs = server.client().get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])


def drain(server: brokers.ElasticMQServer, url: str) -> list[dict[str, Any]]:
    client, out = server.client(), []
    while True:
        got = client.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"], MessageAttributeNames=["All"]
        ).get("Messages", [])
        if not got:
            return out
        out += got
        for m in got:
            client.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


def sqs_worker(
    url: str,
    function: Any,
    *,
    esm: str | None = None,
    dlq: str | None = None,
    secrets: dict[tuple[str, str], str] | None = None,
    credentials: str | None = None,
    timing: Timing = FAST,
    **config: Any,
) -> MappingWorker:
    esm = esm or f"esm-{uuid.uuid4().hex[:8]}"
    settings: dict[str, Any] = {"queueUrl": url, "region": "us-east-1"}
    if credentials:
        settings["credentials"] = {"secretRef": {"name": credentials}}
    cfg = MappingConfig(name=esm, function_name="fn", **config)
    lookup = lambda name, key: (secrets or {}).get((name, key))  # noqa: E731
    source = make_source(
        Endpoint.model_validate({"sqs": settings}),
        None,
        esm_name=esm,
        batch_size=cfg.batch_size,
        secret=lookup,
    )
    dlq_endpoint = Endpoint.model_validate({"sqs": {"queueUrl": dlq, "region": "us-east-1"}}) if dlq else None
    sink = make_sink(dlq_endpoint, None) if dlq_endpoint is not None else None
    return MappingWorker(cfg, source, function, dlq=sink, timing=timing)


async def test_the_event_has_lambdas_sqs_shape(sqs_server, function, running):
    url = queue(sqs_server, "shape")
    send(sqs_server, url, ["hello", '{"n": 2}'], tenant="acme")
    worker = running(sqs_worker(url, function, batch_size=10, maximum_batching_window_seconds=1))
    await eventually(lambda: len(function.succeeded) == 2, what="two messages")
    record = function.batches[0][0]
    assert set(record) >= {
        "messageId", "receiptHandle", "body", "attributes", "messageAttributes", "md5OfBody",
        "eventSource", "eventSourceARN", "awsRegion",
    }  # fmt: skip
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == arn_of(sqs_server, url)
    assert record["awsRegion"] == "us-east-1"
    assert record["md5OfBody"] == hashlib.md5(record["body"].encode()).hexdigest()
    attrs = record["attributes"]
    assert attrs["ApproximateReceiveCount"] == "1"
    assert int(attrs["SentTimestamp"]) > 0 and int(attrs["ApproximateFirstReceiveTimestamp"]) > 0
    assert "SenderId" in attrs
    assert record["messageAttributes"]["tenant"] == {
        "stringValue": "acme", "stringListValues": [], "binaryListValues": [], "dataType": "String",
    }  # fmt: skip
    await eventually(lambda: worker.status.records_succeeded == 2, what="both acknowledged")
    await eventually(lambda: counts(sqs_server, url) == (0, 0), what="both deleted from the queue")


async def test_batches_over_ten_gather_receives_within_the_window(sqs_server, running):
    url = queue(sqs_server, "big-batch")
    send(sqs_server, url, [f"m{i:03d}" for i in range(120)])
    function = TestFunction()
    worker = running(sqs_worker(url, function, batch_size=50, maximum_batching_window_seconds=1))
    await eventually(lambda: worker.status.records_succeeded == 120, what="120 messages")
    assert max(len(b) for b in function.batches) > 10
    assert all(len(b) <= 50 for b in function.batches)
    assert sorted(function.succeeded) == [f"m{i:03d}" for i in range(120)]
    await eventually(lambda: counts(sqs_server, url) == (0, 0), what="queue empty")


async def test_partial_batch_failure_leaves_failed_messages_to_the_visibility_timeout(sqs_server, running):
    url = queue(sqs_server, "partial")
    send(sqs_server, url, ["a", "bad-1", "c"])
    function = TestFunction(report_failures=True)
    worker = running(
        sqs_worker(
            url, function, batch_size=3, maximum_batching_window_seconds=1, report_batch_item_failures=True
        )
    )
    await eventually(lambda: worker.status.records_succeeded == 3, what="all three done")
    assert sorted(function.bodies(0)) == ["a", "bad-1", "c"]
    assert function.bodies(1) == ["bad-1"], "only the failed message comes back"
    again = function.batches[1][0]
    assert again["attributes"]["ApproximateReceiveCount"] == "2", "the queue counted the receive"
    await eventually(lambda: counts(sqs_server, url) == (0, 0), what="queue empty")


async def test_the_queues_own_redrive_policy_moves_a_poison_message_to_its_dlq(sqs_server, running):
    dead = queue(sqs_server, "redrive-dlq")
    redrive = json.dumps({"deadLetterTargetArn": arn_of(sqs_server, dead), "maxReceiveCount": 2})
    url = queue(sqs_server, "redrive", VisibilityTimeout=1, RedrivePolicy=redrive)
    send(sqs_server, url, ["ok-1", "poison", "ok-2"])
    function = TestFunction(report_failures=False)
    worker = running(sqs_worker(url, function, batch_size=1))
    await eventually(lambda: sorted(function.succeeded) == ["ok-1", "ok-2"], what="the good ones")
    await eventually(lambda: counts(sqs_server, dead)[0] == 1, what="the poison message in the queue's DLQ")
    assert [m["Body"] for m in drain(sqs_server, dead)] == ["poison"]
    assert worker.status.records_dead_lettered == 0, "the queue moved it, not lamina"
    assert worker.status.last_processing_result in (FUNCTION_FAILED, "OK", "No records processed")


async def test_on_failure_destination_after_maximum_retry_attempts(sqs_server, running):
    url = queue(sqs_server, "onfailure", VisibilityTimeout=1)
    dlq = queue(sqs_server, "onfailure-dlq")
    send(sqs_server, url, ["good", "poison-x"])
    function = TestFunction()
    worker = running(sqs_worker(url, function, dlq=dlq, batch_size=1, maximum_retry_attempts=1))
    await eventually(lambda: worker.status.records_dead_lettered == 1, what="dead-lettered by lamina")
    (message,) = drain(sqs_server, dlq)
    letter = json.loads(message["Body"])
    assert letter["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert letter["record"]["body"] == "poison-x"
    assert letter["record"]["attributes"]["ApproximateReceiveCount"] == "2"
    assert message["MessageAttributes"]["lamina-condition"]["StringValue"] == "RetryAttemptsExhausted"
    assert function.succeeded == ["good"]
    await eventually(lambda: counts(sqs_server, url) == (0, 0), what="source queue empty")


class GroupWatcher:
    """A FIFO consumer function: notes which groups are in flight at once, fails one message twice."""

    def __init__(self, fail: str, times: int) -> None:
        self.in_flight: dict[str, int] = {}
        self.overlap = False
        self.order: dict[str, list[str]] = {}
        self.fail, self.left = fail, times
        self.batches = 0

    async def __call__(
        self, function_name: str, payload: bytes, request_id: str | None = None
    ) -> InvocationResult:
        records = json.loads(payload)["Records"]
        groups = {r["attributes"]["MessageGroupId"] for r in records}
        for g in groups:
            if self.in_flight.get(g):
                self.overlap = True
            self.in_flight[g] = self.in_flight.get(g, 0) + 1
        self.batches += 1
        try:
            await asyncio.sleep(0.05)
            failures = []
            for i, r in enumerate(records):
                if r["body"] == self.fail and self.left > 0:
                    self.left -= 1
                    # FIFO: stop at the first failure and report it and everything after it.
                    failures = [{"itemIdentifier": x["messageId"]} for x in records[i:]]
                    break
                self.order.setdefault(r["attributes"]["MessageGroupId"], []).append(r["body"])
            return InvocationResult("r", json.dumps({"batchItemFailures": failures}).encode())
        finally:
            for g in groups:
                self.in_flight[g] -= 1


async def test_fifo_groups_in_order_one_batch_per_group_and_a_failure_blocks_its_group(sqs_server):
    url = queue(sqs_server, "fifo", fifo=True, VisibilityTimeout=1)
    groups = [f"g{i}" for i in range(10)]
    for g in groups:
        send(sqs_server, url, [f"{g}-{n}" for n in range(5)], group=g)
    function = GroupWatcher(fail="g3-1", times=2)
    esm = f"esm-{uuid.uuid4().hex[:8]}"
    workers = [
        sqs_worker(url, function, esm=esm, batch_size=10, report_batch_item_failures=True) for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    try:
        await eventually(
            lambda: sum(len(v) for v in function.order.values()) == 50, limit=180, what="all 50 processed"
        )
    finally:
        for worker in workers:
            await worker.stop()
    assert not function.overlap, "a message group was in two batches at once"
    for g in groups:
        assert function.order[g] == [f"{g}-{n}" for n in range(5)], f"group {g} out of order"
    assert function.left == 0, "the failing message failed twice before it went through"
    assert counts(sqs_server, url) == (0, 0)


async def test_visibility_is_extended_while_a_slow_function_runs(sqs_server):
    url = queue(sqs_server, "slow", VisibilityTimeout=3)
    send(sqs_server, url, ["slow-1"])
    seen: list[str] = []

    async def slow(function_name: str, payload: bytes, request_id: str | None = None) -> InvocationResult:
        seen.extend(r["body"] for r in json.loads(payload)["Records"])
        await asyncio.sleep(8)  # more than two visibility timeouts
        return InvocationResult("r", b"null")

    workers = [sqs_worker(url, slow, esm="esm-slow", batch_size=1) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        await eventually(lambda: sum(w.status.records_succeeded for w in workers) == 1, what="done once")
        await asyncio.sleep(3.5)  # another visibility timeout: nothing comes back
    finally:
        for worker in workers:
            await worker.stop()
    assert seen == ["slow-1"], "the message was not handed to the second worker while the first held it"


async def test_server_restart_mid_stream_loses_nothing(private_server, running):
    server = private_server("sqs")
    url = queue(server, "restart")
    first = [f"a{i:02d}" for i in range(15)]
    send(server, url, first)
    function = TestFunction()
    function.hold = asyncio.Event()
    worker = running(sqs_worker(url, function, batch_size=5, timing=Timing(poll_wait=0.2)))
    await eventually(lambda: function.batches, what="a batch in flight")
    await server.arestart()
    function.hold.set()
    second = [f"b{i:02d}" for i in range(15)]
    send(server, url, second)
    await eventually(lambda: set(function.succeeded) >= set(first + second), limit=180, what="everything")
    await eventually(lambda: worker.status.state == "Enabled", what="Enabled again")
    await eventually(lambda: counts(server, url) == (0, 0), what="queue empty")


@pytest.mark.parametrize("fifo", [False, True], ids=["standard", "fifo"])
async def test_a_worker_killed_mid_batch_loses_nothing_and_its_batch_returns_after_the_visibility(
    sqs_server, running, tmp_path, fifo
):
    """SIGKILL of the worker process while its function holds a batch: the messages stay in flight
    until their visibility timeout, then come back (receive count 2) to the next worker; a FIFO group
    stays blocked meanwhile and keeps its order."""
    import sys
    from pathlib import Path

    url = queue(sqs_server, "killed", fifo=fifo, VisibilityTimeout=3)
    bodies = [f"k{i:02d}" for i in range(12)]
    send(sqs_server, url, bodies, group="g" if fifo else None)
    marker = tmp_path / "in-flight.json"
    script = Path(__file__).with_name("esm_worker_proc.py")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), "sqs", "", url, "esm-k", str(marker)
    )
    try:
        await eventually(marker.exists, what="the worker process to receive a batch")
    finally:
        proc.kill()
        await proc.wait()
    in_flight = json.loads(marker.read_text())
    assert len(in_flight) == 5
    if fifo:
        assert in_flight == bodies[:5]

    function = TestFunction()
    running(sqs_worker(url, function, batch_size=5))
    await eventually(lambda: set(function.succeeded) == set(bodies), limit=60, what="every message processed")
    if fifo:
        assert function.succeeded == bodies  # the group waited for the killed batch, then kept its order
    again = [r for batch in function.batches for r in batch if r["body"] in in_flight]
    assert again and all(int(r["attributes"]["ApproximateReceiveCount"]) >= 2 for r in again)
    await eventually(lambda: counts(sqs_server, url) == (0, 0), what="the queue empty")


async def test_server_down_at_start_is_reported_then_everything_is_processed(tmp_path, running):
    if not brokers.available("sqs"):
        pytest.skip("java or the ElasticMQ jars are not available")
    server = brokers.ElasticMQServer(tmp_path / "sqs")
    url = server.queue_url("late")
    try:
        function = TestFunction()
        worker = running(sqs_worker(url, function, batch_size=10))
        await eventually(
            lambda: worker.status.last_processing_result == "PROBLEM: sqs source unavailable",
            what="the server reported unavailable",
        )
        await server.astart()
        server.client().create_queue(QueueName="late")
        send(server, url, [f"late-{i}" for i in range(5)])
        await eventually(lambda: len(function.succeeded) == 5, limit=120, what="processed once it is up")
        await worker.stop()
    finally:
        await asyncio.to_thread(server.close)


async def test_missing_credentials_name_the_secret(sqs_server, running):
    url = queue(sqs_server, "creds")
    function = TestFunction()
    worker = running(
        sqs_worker(
            url, function, credentials="sqs-keys", secrets={("sqs-keys", "accessKeyId"): "AKIAEXAMPLE"}
        )
    )
    await eventually(lambda: worker.status.broker_errors >= 1, what="refused")
    assert worker.status.last_processing_result == (
        "PROBLEM: sqs credentials: Secret sqs-keys is missing or has no key 'secretAccessKey'"
    )


async def test_with_credentials_from_a_secret(sqs_server, running):
    url = queue(sqs_server, "keys")
    send(sqs_server, url, ["signed"])
    function = TestFunction()
    secrets = {("sqs-keys", "accessKeyId"): "AKIAEXAMPLE", ("sqs-keys", "secretAccessKey"): "s3cr3t"}
    running(sqs_worker(url, function, credentials="sqs-keys", secrets=secrets))
    await eventually(lambda: function.succeeded == ["signed"], what="consumed with the Secret's keys")


@pytest.fixture(scope="module")
def iam_sqs(tmp_path_factory):
    """moto's SQS with IAM enforced (ElasticMQ accepts any credentials), one queue with one message,
    and the access key of a user allowed to read it."""
    server = brokers.IamSqsServer(tmp_path_factory.mktemp("sqs-iam")).start()
    try:
        keys = server.user_with_sqs_access("consumer")
        url = server.client().create_queue(QueueName="signed", Attributes={"VisibilityTimeout": "2"})[
            "QueueUrl"
        ]
        server.enforce_auth()
        yield server, url, keys
    finally:
        server.close()


def iam_worker(url: str, function: Any, key_id: str, secret: str) -> MappingWorker:
    secrets = {("sqs-keys", "accessKeyId"): key_id, ("sqs-keys", "secretAccessKey"): secret}
    return sqs_worker(url, function, credentials="sqs-keys", secrets=secrets)


async def test_a_server_that_checks_signatures_accepts_the_workers_requests(iam_sqs, running):
    """lamina signs SQS requests itself (SqsSigner): here an independent SigV4 verifier checks them."""
    server, url, keys = iam_sqs
    server.client(key=keys).send_message(QueueUrl=url, MessageBody="signed by lamina")
    function = TestFunction()
    worker = running(iam_worker(url, function, *keys))
    await eventually(
        lambda: function.succeeded == ["signed by lamina"], what="consumed with the Secret's keys"
    )
    consumer = server.client(key=keys)

    def left() -> int:
        attrs = consumer.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])

    await eventually(lambda: left() == 0, what="deleted after success")
    assert worker.status.broker_errors == 0


@pytest.mark.parametrize(
    ("wrong", "code"),
    [("secret", "SignatureDoesNotMatch"), ("key id", "InvalidClientTokenId")],
)
async def test_wrong_credentials_show_in_the_status_with_the_secrets_name_never_its_value(
    iam_sqs, running, wrong, code
):
    _, url, (key_id, secret) = iam_sqs
    bad_secret = "not-" + secret if wrong == "secret" else secret
    bad_key = "AKIA" + "X" * 16 if wrong == "key id" else key_id
    function = TestFunction()
    worker = running(iam_worker(url, function, bad_key, bad_secret))
    await eventually(lambda: worker.status.broker_errors >= 1, what="refused")
    assert worker.status.last_processing_result == (
        f"PROBLEM: sqs credentials: SQS refused the credentials from Secret sqs-keys ({code})"
    )
    reported = json.dumps([worker.status.last_processing_result, worker.status.last_error])
    assert bad_secret not in reported and secret not in reported
    assert function.batches == []


async def test_a_record_over_the_payload_limit_goes_to_on_failure(sqs_server, running):
    url = queue(sqs_server, "large")
    dlq = queue(sqs_server, "large-dlq")
    send(sqs_server, url, ["small", "L" * 150_000])
    function = TestFunction()
    # SQS messages stop at 256 KiB, under Lambda's 6 MB: a smaller limit stands in for it here.
    timing = Timing(poll_wait=0.2, payload_limit=100_000)
    worker = running(
        sqs_worker(url, function, dlq=dlq, batch_size=10, maximum_batching_window_seconds=1, timing=timing)
    )
    await eventually(lambda: worker.status.records_dead_lettered == 1, what="the large one dead-lettered")
    await eventually(lambda: function.succeeded == ["small"], what="the small one processed")
    (message,) = drain(sqs_server, dlq)
    letter = json.loads(message["Body"])
    assert letter["requestContext"]["condition"] == "RecordTooLarge"
    assert "payload limit of 100000 bytes" in letter["responsePayload"]["errorMessage"]
    await eventually(lambda: counts(sqs_server, url) == (0, 0), what="source queue empty")


async def test_receiving_ahead_delivers_each_message_once_and_gives_back_what_it_held(sqs_server):
    # With a visibility timeout of 10 s or more the source receives the next batch while the function
    # runs; on stop, what it received ahead goes back to the queue at once, not after 10 s.
    url = queue(sqs_server, "ahead", VisibilityTimeout=10)
    send(sqs_server, url, [f"m{i:02d}" for i in range(40)])
    function = TestFunction()
    worker = sqs_worker(url, function, batch_size=5)
    worker.start()
    try:
        await eventually(lambda: len(function.succeeded) >= 10, what="a few batches")
    finally:
        await worker.stop()
    done = len(function.succeeded)
    await eventually(
        lambda: counts(sqs_server, url) == (40 - done, 0), limit=5, what="the rest visible again"
    )
    second = TestFunction()
    worker = sqs_worker(url, second, batch_size=5)
    worker.start()
    try:
        await eventually(lambda: len(function.succeeded) + len(second.succeeded) >= 40, what="all 40")
    finally:
        await worker.stop()
    assert sorted(function.succeeded + second.succeeded) == [f"m{i:02d}" for i in range(40)], "each once"
