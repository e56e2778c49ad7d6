"""The cluster gateway's async queue is wired as local mode's is: a destination whose broker URL comes
from a Secret (``urlFrom``) is delivered, and the async metrics move.

A Function with reserved concurrency 0 sends each Event invocation straight to ``onFailure``
(``RetriesExhausted``, no invocation), so no pod needs to run: the gateway, its Redis-backed queue and
the API server's Secret are what is tested.
"""

from __future__ import annotations

import base64
import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis
from botocore.exceptions import EndpointConnectionError
from kubernetes import client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_operator_reconcile import Cluster, function

from tests.cluster.stack import Gateway, LaminaStack


@pytest.fixture
def gateway(private_redis: Any, lamina_stack: LaminaStack) -> Gateway:
    """A gateway whose queue of Event invocations is ``private_redis`` (which outlives it)."""
    return lamina_stack.gateway("--redis-url", private_redis.url)


def metric(gateway: Gateway, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{gateway.port}/metrics", timeout=5).read().decode()
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and line.split("{", 1)[1].split("}", 1)[0] == wanted:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_an_on_failure_destination_from_a_secret_gets_the_record_and_metrics_move(
    gateway: Gateway, k8s_api: client.ApiClient, namespace: str, private_redis: Any, wait_until: Any
) -> None:
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "failures"},
            "data": {"url": base64.b64encode(private_redis.url.encode()).decode()},
        },
    )
    destination = {
        "redis": {"urlFrom": {"secretKeyRef": {"name": "failures", "key": "url"}}, "stream": "dlq"}
    }
    Cluster(k8s_api, namespace).create(
        "functions",
        function("closed", reservedConcurrency=0, **{"async": {"onFailure": destination}}),
    )
    lam = gateway.lambda_client()

    def accepted() -> dict[str, Any] | None:
        try:
            return lam.invoke(FunctionName="closed", InvocationType="Event", Payload=b'{"order": 7}')
        except (lam.exceptions.ResourceNotFoundException, EndpointConnectionError):
            return None  # the gateway is starting, or has not seen the Function yet

    response = wait_until(accepted, timeout=60, message="the gateway accepted the Event invocation")
    assert response["StatusCode"] == 202

    records = redis.Redis.from_url(private_redis.url)
    entries = wait_until(lambda: records.xrange("dlq"), timeout=30, message="a record on the dlq stream")
    [(_, fields)] = entries
    assert fields[b"lamina-condition"] == b"RetriesExhausted"
    body = json.loads(fields[b"body"])
    assert body["requestContext"]["condition"] == "RetriesExhausted"
    assert body["requestContext"]["approximateInvokeCount"] == 0
    assert body["requestPayload"] == {"order": 7}
    assert body["responsePayload"]["errorType"] == "TooManyRequestsException"

    dropped = {"function": "closed", "condition": "RetriesExhausted"}
    wait_until(
        lambda: metric(gateway, "lamina_async_events_dropped_total", **dropped) == 1,
        timeout=10,
        message="lamina_async_events_dropped_total counted the event",
    )
    assert metric(gateway, "lamina_async_events_received_total", function="closed") == 1
