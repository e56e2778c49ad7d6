"""The examples, applied as they are, answer boto3 and plain HTTP from real pods."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.pods.conftest import Lamina, wait_for

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
FUNCTIONS = {
    "hello.yaml": ["hello"],
    "orders.yaml": ["orders"],
    "failing.yaml": ["failing"],
    "slow.yaml": ["slow"],
    "custom-runtime.yaml": ["custom"],
}


@pytest.fixture(scope="module")
def examples(lamina_release: Lamina) -> Iterator[Lamina]:
    lam = lamina_release.scoped()
    try:
        for file in FUNCTIONS:
            lam.apply((EXAMPLES / file).read_text())
        for names in FUNCTIONS.values():
            for name in names:
                lam.wait_ready(name)
        yield lam
    finally:
        lam.delete_created()


def test_hello_answers_boto3_from_its_provisioned_pod(examples: Lamina) -> None:
    r, body = examples.invoke("hello", {"name": "you"}, LogType="Tail")
    assert r["StatusCode"] == 200 and "FunctionError" not in r
    assert body["message"] == "Hello, you!"
    assert "greeting you" in base64.b64decode(r["LogResult"]).decode()
    pods = examples.pods("hello")
    assert [p.spec.node_name for p in pods] == ["lamina-node"]
    assert pods[0].status.pod_ip.startswith("10.244.")


def test_the_http_trigger_answers_plain_http_signed_as_a_function_url(examples: Lamina) -> None:
    """With authentication on (the chart's default) the HTTP trigger is a function URL with AuthType
    AWS_IAM: a SigV4-signed request is served, an unsigned one gets 403 {"Message": "Forbidden"}."""
    url = f"{examples.gateway_url}/url/hello/any/path?x=1"
    with examples.urlopen(url) as r:
        assert r.status == 200
        body = json.loads(r.read())
    assert body["message"] == "Hello, world!"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=30)
    assert refused.value.code == 403 and json.loads(refused.value.read()) == {"Message": "Forbidden"}


def test_config_map_code_imports_its_layer(examples: Lamina) -> None:
    _, body = examples.invoke("orders", {"items": [{"price": 10, "quantity": 2}, {"price": 5}]})
    assert body == {"items": 2, "total": 30.0}


def test_an_exception_has_lambdas_error_shape(examples: Lamina) -> None:
    r, body = examples.invoke("failing", {"card": "1234"})
    assert r["FunctionError"] == "Unhandled"
    assert body["errorType"] == "PaymentDeclined"
    assert body["errorMessage"] == "card 1234 was declined"


def test_a_timeout_is_sandbox_timedout_and_the_environment_is_replaced(examples: Lamina) -> None:
    r, body = examples.invoke("slow", {"seconds": 5})
    assert r["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Sandbox.Timedout"
    assert "timed out after 1.00 seconds" in body["errorMessage"]
    r, body = examples.invoke("slow", {"seconds": 0})
    assert "FunctionError" not in r and body == {"slept": 0}


def _container_logs(lam: Lamina, function: str) -> list[str]:
    """The lines `kubectl logs` shows of every pod of ``function``, pod after pod."""
    return [
        line
        for pod in lam.pods(function)
        for line in str(lam.core.read_namespaced_pod_log(pod.metadata.name, lam.namespace)).splitlines()
    ]


def test_the_container_log_has_each_call_in_lambdas_order(examples: Lamina) -> None:
    """`kubectl logs` of the function pods: the pod's server writes START, the handler's output, END
    and REPORT of each call (several calls' lines in one write), and on a timeout what it printed,
    the timeout line, END and REPORT with its status."""
    names = ["ann", "bob", "cy"]
    rids = [examples.invoke("hello", {"name": name})[1]["requestId"] for name in names]
    _, timed_out = examples.invoke("slow", {"seconds": 5})
    slow_rid = timed_out["errorMessage"].split()[1]

    def written(function: str, rid: str) -> list[str] | None:
        lines = _container_logs(examples, function)
        return lines if any(line.startswith(f"REPORT RequestId: {rid}") for line in lines) else None

    lines = wait_for(lambda: written("hello", rids[-1]), 30, "the last call's REPORT in the pod's log")
    for name, rid in zip(names, rids, strict=True):
        at = lines.index(f"START RequestId: {rid} Version: $LATEST")
        assert lines[at + 1 : at + 3] == [f"greeting {name}", f"END RequestId: {rid}"]
        assert lines[at + 3].startswith(f"REPORT RequestId: {rid}\tDuration: ")
    lines = wait_for(lambda: written("slow", slow_rid), 30, "the timed-out call's REPORT in the pod's log")
    at = lines.index(f"START RequestId: {slow_rid} Version: $LATEST")
    assert lines[at + 1] == "sleeping 5 s"
    assert lines[at + 2].endswith(f"{slow_rid} Task timed out after 1.00 seconds")
    assert lines[at + 3] == f"END RequestId: {slow_rid}"
    assert lines[at + 4].startswith(f"REPORT RequestId: {slow_rid}")
    assert lines[at + 4].endswith("Status: timeout")


def test_a_custom_runtime_bootstrap_serves_from_a_pod(examples: Lamina) -> None:
    r, body = examples.invoke("custom", {"name": "pods"})
    assert "FunctionError" not in r
    assert body["message"] == "Hello from a custom runtime, pods!"
    r, body = examples.invoke("custom", {"fail": "no"})
    assert r["FunctionError"] == "Unhandled" and body["errorType"] == "ValueError"
