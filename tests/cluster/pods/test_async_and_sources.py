"""Async invocations, a Redis Streams mapping and a schedule, with the chart's Redis and worker pods."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from tests.cluster.pods.conftest import (
    Lamina,
    function_yaml,
    mapping_yaml,
    unique,
    wait_for,
)

#: How long after a schedule's tick a second firing of it would still show (both replicas fire within
#: the same second of the tick if their claim failed).
DUPLICATE_GRACE_SECONDS = 5


def records(redis: Any, stream: str) -> list[dict[str, Any]]:
    return [json.loads(fields["body"]) for _, fields in redis.xrange(stream)]


def test_an_async_failure_reaches_its_on_failure_destination(
    lamina: Lamina, chart_redis: Any, redis_in_cluster: str
) -> None:
    name = unique("async")
    failed = f"{name}-failed"
    code = "def handler(event, context):\n    raise ValueError(f\"no {event['id']}\")\n"
    destination = {"redis": {"url": redis_in_cluster, "stream": failed}}
    lamina.apply(
        function_yaml(
            name,
            code,
            provisionedConcurrency=1,
            **{"async": {"maximumRetryAttempts": 0, "onFailure": destination}},
        )
    )
    lamina.wait_ready(name)
    r = lamina.lambda_client().invoke(
        FunctionName=name, InvocationType="Event", Payload=json.dumps({"id": 7})
    )
    assert r["StatusCode"] == 202
    got = wait_for(lambda: records(chart_redis, failed), 120, f"a record on {failed}")
    assert len(got) == 1
    assert got[0]["requestPayload"] == {"id": 7}
    assert got[0]["requestContext"]["condition"] == "RetriesExhausted"
    assert got[0]["responsePayload"]["errorType"] == "ValueError"


def test_a_redis_stream_mapping_runs_in_its_worker_pod_and_dead_letters_the_poison(
    lamina: Lamina, chart_redis: Any, redis_in_cluster: str
) -> None:
    name = unique("orders")
    stream, dlq = f"{name}-in", f"{name}-dlq"
    code = """
import json
def handler(event, context):
    for record in event["Records"]:
        order = json.loads(record["body"])
        if order["amount"] < 0:
            raise ValueError(f"order {order['id']}: negative amount")
    return {"ok": len(event["Records"])}
"""
    lamina.apply(function_yaml(name, code, provisionedConcurrency=1))
    lamina.apply(
        mapping_yaml(
            name,
            {"redis": {"url": redis_in_cluster, "stream": stream}},
            batchSize=10,
            maximumBatchingWindowSeconds=1,
            maximumRetryAttempts=1,
            bisectBatchOnFunctionError=True,
            destinationConfig={"onFailure": {"redis": {"url": redis_in_cluster, "stream": dlq}}},
        )
    )
    lamina.wait_ready(name)
    lamina.wait_ready(name, plural="eventsourcemappings")
    workers = lamina.core.list_namespaced_pod(
        lamina.namespace, label_selector=f"lamina.dev/eventsourcemapping={name}"
    ).items
    assert [w.spec.node_name for w in workers] == ["lamina-node"]
    ids = [
        chart_redis.xadd(stream, {"body": json.dumps({"id": i, "amount": -1 if i == 4 else 10})})
        for i in range(9)
    ]
    dead = wait_for(lambda: records(chart_redis, dlq), 180, f"the poison record on {dlq}")
    assert len(dead) == 1, dead
    assert json.loads(dead[0]["record"]["body"])["id"] == 4
    assert dead[0]["requestContext"]["condition"] == "RetryAttemptsExhausted"

    def all_acknowledged() -> bool:  # every record taken by the worker's group and none left pending
        groups = chart_redis.xinfo_groups(stream)
        return bool(groups) and all(g["pending"] == 0 and g["last-delivered-id"] == ids[-1] for g in groups)

    wait_for(all_acknowledged, 120, "all nine records acknowledged, the eight good ones without a DLQ entry")
    assert len(records(chart_redis, dlq)) == 1


def test_a_schedule_fires_once_per_tick_with_two_worker_replicas(
    lamina: Lamina, chart_redis: Any, redis_in_cluster: str
) -> None:
    name = unique("tick")
    done = f"{name}-done"
    code = "def handler(event, context):\n    return event['time']\n"
    destination = {"redis": {"url": redis_in_cluster, "stream": done}}
    lamina.apply(function_yaml(name, code, provisionedConcurrency=1, **{"async": {"onSuccess": destination}}))
    lamina.apply(mapping_yaml(name, {"schedule": {"expression": "rate(1 minute)"}}))
    lamina.wait_ready(name)
    lamina.wait_ready(name, plural="eventsourcemappings")
    lamina.apps.patch_namespaced_deployment_scale(f"esm-{name}", lamina.namespace, {"spec": {"replicas": 2}})

    def two_workers() -> bool:
        pods = lamina.core.list_namespaced_pod(
            lamina.namespace, label_selector=f"lamina.dev/eventsourcemapping={name}"
        ).items
        ready = [
            p
            for p in pods
            if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        ]
        return len(ready) == 2

    wait_for(two_workers, 120, "two worker pods of the schedule")
    both_up = datetime.now(UTC)
    # Both replicas run the ticker, so a tick they both fired would land here twice within moments of
    # each other. The first tick after both are up (at most a minute away: rate(1 minute) ticks on the
    # minute) and a grace after it settle it; each tick's claim is covered with real Redis in
    # tests/brokers as well.
    wait_for(
        lambda: any(
            datetime.fromisoformat(x["responsePayload"]) > both_up for x in records(chart_redis, done)
        ),
        100,
        "a tick after both workers were up",
    )
    time.sleep(DUPLICATE_GRACE_SECONDS)
    ticks = [x["responsePayload"] for x in records(chart_redis, done)]
    assert len(ticks) == len(set(ticks)), f"a tick fired twice: {ticks}"
