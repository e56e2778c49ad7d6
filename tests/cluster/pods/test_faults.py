"""Killing lamina's own pods: the gateway under load and the operator mid-reconcile. Both come back;
no accepted async event is lost, no object is made twice."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from tests.cluster.pods.conftest import (
    RELEASE,
    SYSTEM_NS,
    Lamina,
    function_yaml,
    unique,
    wait_for,
)


def component_pods(lamina: Lamina, component: str) -> list[Any]:
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component={component}"
    return lamina.core.list_namespaced_pod(SYSTEM_NS, label_selector=selector).items


def kill(lamina: Lamina, component: str) -> str:
    """Delete the component's pod at once (no grace): what a node failure or an OOM kill looks like."""
    pod = component_pods(lamina, component)[0]
    lamina.core.delete_namespaced_pod(pod.metadata.name, SYSTEM_NS, grace_period_seconds=0)
    return pod.metadata.name


def ready_again(lamina: Lamina, component: str, old: str) -> bool:
    pods = [p for p in component_pods(lamina, component) if p.metadata.name != old]
    return any(
        p.status.conditions and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions)
        for p in pods
    )


def test_killing_the_gateway_under_load_loses_no_accepted_async_event(
    lamina: Lamina, chart_redis: Any, redis_in_cluster: str
) -> None:
    name = unique("load")
    done = f"{name}-done"
    destination = {"redis": {"url": redis_in_cluster, "stream": done}}
    code = "def handler(event, context):\n    return event['n']\n"
    lamina.apply(function_yaml(name, code, provisionedConcurrency=2, **{"async": {"onSuccess": destination}}))
    lamina.wait_ready(name)
    accepted: list[int] = []
    refused = 0
    stop = threading.Event()

    def send() -> None:
        nonlocal refused
        client = lamina.lambda_client(read_timeout=10)
        n = 0
        while not stop.is_set() and n < 2000:
            n += 1
            try:
                r = client.invoke(FunctionName=name, InvocationType="Event", Payload=json.dumps({"n": n}))
            except (BotoCoreError, ClientError):
                refused += 1  # the gateway was down: not accepted, so not owed
                time.sleep(0.05)
                continue
            if r["StatusCode"] == 202:
                accepted.append(n)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        wait_for(lambda: len(accepted) >= 50, 60, "50 accepted events before the kill")
        old = kill(lamina, "gateway")
        wait_for(lambda: ready_again(lamina, "gateway", old), 120, "a new gateway pod Ready")
        before = len(accepted)
        wait_for(lambda: len(accepted) >= before + 50, 60, "50 accepted events after the restart")
    finally:
        stop.set()
        sender.join(30)

    def delivered() -> set[int] | None:
        got = {
            int(f["responsePayload"]) for f in (json.loads(x["body"]) for _, x in chart_redis.xrange(done))
        }
        return got if set(accepted) <= got else None

    got = wait_for(delivered, 180, f"every one of {len(accepted)} accepted events delivered")
    assert set(accepted) <= got, sorted(set(accepted) - got)


def test_killing_the_operator_mid_reconcile_of_50_functions_converges_without_duplicates(
    lamina: Lamina,
) -> None:
    prefix = unique("many")
    names = [f"{prefix}-{i}" for i in range(50)]
    code = "def handler(event, context):\n    return 1\n"
    manifests = "---\n".join(function_yaml(n, code, provisionedConcurrency=0) for n in names)
    lamina.apply(manifests)

    def some_reconciled() -> bool:
        deps = lamina.apps.list_namespaced_deployment(lamina.namespace).items
        return len([d for d in deps if d.metadata.name.startswith(f"fn-{prefix}-")]) >= 5

    wait_for(some_reconciled, 120, "the operator under way")
    old = kill(lamina, "operator")
    wait_for(
        lambda: ready_again(lamina, "operator", old) or len(component_pods(lamina, "operator")) == 1,
        120,
        "a new operator pod",
    )
    for n in names:
        lamina.wait_ready(n, timeout=300)
    deps = [
        d
        for d in lamina.apps.list_namespaced_deployment(lamina.namespace).items
        if d.metadata.name.startswith(f"fn-{prefix}-")
    ]
    assert sorted(d.metadata.name for d in deps) == sorted(f"fn-{n}" for n in names)
    services = [
        s
        for s in lamina.core.list_namespaced_service(lamina.namespace).items
        if s.metadata.name.startswith(f"fn-{prefix}-")
    ]
    assert len(services) == 50
    maps = [
        c
        for c in lamina.core.list_namespaced_config_map(lamina.namespace).items
        if c.metadata.name.startswith(f"{prefix}-")
    ]
    assert len(maps) == 50  # one code ConfigMap each, never two
    _, body = lamina.invoke(names[-1], {}, read_timeout=150)
    assert body == 1
