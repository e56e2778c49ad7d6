"""Powertools for AWS Lambda (Python), from PyPI, unchanged in a function that brings it in its own
code (no layer): Logger lines appear once with the invocation's context, Metrics writes its EMF
document, BatchProcessor reports partial batch failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.packages import installed, link_into

from .conftest import call

POWERTOOLS = "aws-lambda-powertools==3.37.0"

APP = """
import logging
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response

logger = Logger(service="orders")
metrics = Metrics(namespace="Shop", service="orders")
processor = BatchProcessor(event_type=EventType.SQS)
logger.info("cold start")
logging.getLogger("plain").warning("a plain logger still works")


def record_handler(record):
    if record.body == "bad":
        raise ValueError("bad record")
    logger.info("processed", extra={"order": record.body})


@logger.inject_lambda_context
@metrics.log_metrics
def handler(event, context):
    metrics.add_metric(name="Orders", unit=MetricUnit.Count, value=len(event["Records"]))
    logger.info("handling")
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
"""


def sqs(message_id: str, body: str) -> dict:
    return {
        "messageId": message_id,
        "receiptHandle": "rh",
        "body": body,
        "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1545082649183"},
        "messageAttributes": {},
        "md5OfBody": "x",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:orders",
        "awsRegion": "us-east-1",
    }


@pytest.fixture(scope="module")
def powertools() -> Path:
    return installed(POWERTOOLS)


@pytest.mark.parametrize("version", ["system", "3.12"])
async def test_logger_metrics_and_batch_processor_run_unchanged(
    tmp_path: Path, make_worker, powertools: Path, python312: str, version: str
) -> None:
    import sys

    code = tmp_path / "code"
    code.mkdir()
    (code / "app.py").write_text(APP)
    link_into(code, powertools)
    python = python312 if version == "3.12" else sys.executable
    worker = make_worker(str(code), "app.handler", python=python)
    event = {"Records": [sqs("m-1", "ok-1"), sqs("m-2", "bad"), sqs("m-3", "ok-3")]}
    result, body = await call(worker, event)
    assert result.function_error is None, body
    assert body == {"batchItemFailures": [{"itemIdentifier": "m-2"}]}

    lines = result.log.splitlines()
    structured = [json.loads(line) for line in lines if line.startswith("{") and '"level"' in line]
    messages = [r["message"] for r in structured]
    # Each Logger line exactly once: Powertools filters Lambda's root handler, which was in place
    # before the module ran, as on Lambda.
    assert messages.count("cold start") == 1 and messages.count("handling") == 1
    assert messages.count("processed") == 2
    assert not any("\thandling" in line or "\tcold start" in line for line in lines)
    handling = next(r for r in structured if r["message"] == "handling")
    assert handling["service"] == "orders" and handling["function_request_id"] == result.request_id
    assert handling["cold_start"] is True and handling["function_name"] == "function"
    # A plain logger goes through Lambda's handler, in Lambda's text format.
    plain = [line for line in lines if line.endswith("a plain logger still works")]
    assert len(plain) == 1 and plain[0].startswith("[WARNING]\t")
    # Metrics: one EMF document, printed when the handler returns.
    emf = [json.loads(line) for line in lines if '"_aws"' in line]
    assert len(emf) == 1
    assert emf[0]["Orders"] == [3.0] or emf[0]["Orders"] == 3.0
    assert emf[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Shop"
