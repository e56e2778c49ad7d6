"""Reserved concurrency as a floor, end to end on the control plane: the operator and `lamina gateway`
refuse the same reservation (the one that would leave the unreserved pool below its minimum), the
Function's status says why, and boto3 sees the function as unreserved; deleting an older reservation
grants it."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError
from kubernetes import client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_operator_reconcile import Cluster, function

from tests.cluster.stack import Gateway, LaminaStack

LIMITS = {"LAMINA_CONCURRENCY_LIMIT": "10", "LAMINA_MIN_UNRESERVED": "4"}


@pytest.fixture
def stack(lamina_stack: LaminaStack, k8s_api: client.ApiClient) -> Iterator[tuple[Cluster, Gateway]]:
    lamina_stack.operator(env={"LAMINA_POOL_SIZE": "0", **LIMITS})
    gw = lamina_stack.gateway("--concurrency-limit", "10", "--min-unreserved", "4")
    yield Cluster(k8s_api, lamina_stack.namespace), gw


def reserved(lam: Any, name: str) -> int | None:
    return lam.get_function_concurrency(FunctionName=name).get("ReservedConcurrentExecutions")


def test_a_reservation_that_overdraws_the_unreserved_pool_is_refused_and_said_so(
    stack: tuple[Cluster, Gateway], wait_until: Callable[..., Any]
) -> None:
    k8s, gw = stack
    lam = gw.lambda_client()
    k8s.create("functions", function("first", reservedConcurrency=4))
    wait_until(lambda: k8s.get("functions", "first").get("status", {}).get("reservation") == "Granted")
    k8s.create("functions", function("second", reservedConcurrency=3))  # 4 + 3 > 10 - 4

    def status(name: str) -> dict[str, Any]:
        return k8s.get("functions", name).get("status") or {}

    wait_until(lambda: status("second").get("reservation") == "Refused", message="second refused")
    assert "would keep 3 of the account's 10, below its minimum of 4" in status("second")["reservationReason"]

    def known(name: str) -> bool:
        try:
            lam.get_function(FunctionName=name)
        except (lam.exceptions.ResourceNotFoundException, EndpointConnectionError):
            return False  # not seen yet, or the gateway is starting
        return True

    wait_until(lambda: known("first") and known("second"), message="the gateway knows both")
    assert reserved(lam, "first") == 4
    assert reserved(lam, "second") is None  # served from the unreserved pool

    # The older reservation goes: the younger one fits now (the gateway at once; the status when the
    # operator looks at the Function again).
    k8s.custom.patch_namespaced_custom_object(
        "lamina.dev", "v1alpha1", k8s.ns, "functions", "first", {"spec": {"reservedConcurrency": None}}
    )
    wait_until(lambda: reserved(lam, "second") == 3, message="granted by the gateway")
    k8s.custom.patch_namespaced_custom_object(
        "lamina.dev", "v1alpha1", k8s.ns, "functions", "second", {"spec": {"memoryMB": 256}}
    )
    wait_until(lambda: status("second").get("reservation") == "Granted", message="the status follows")
    assert status("first").get("reservation") is None
