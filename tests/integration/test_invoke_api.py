"""boto3's Lambda client against `lamina local`, every Invoke case of the issue."""

from __future__ import annotations

import base64
import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.exceptions import ClientError


def invoke(client, name: str, payload: object = None, **kwargs):
    body = json.dumps(payload if payload is not None else {}).encode()
    return client.invoke(FunctionName=name, Payload=body, **kwargs)


def read(response) -> object:
    return json.loads(response["Payload"].read())


def test_success_returns_result_and_lambda_headers(lambda_client) -> None:
    response = invoke(lambda_client, "hello", {"name": "lamina"})
    assert response["StatusCode"] == 200
    assert response["ExecutedVersion"] == "$LATEST"
    assert "FunctionError" not in response
    body = read(response)
    assert body["message"] == "Hello, lamina!"
    assert body["requestId"] == response["ResponseMetadata"]["RequestId"]


def test_context_and_environment_reach_the_handler(lambda_client) -> None:
    custom = {"custom": {"tenant": "t1"}, "client": {}, "env": {}}
    response = invoke(
        lambda_client,
        "echo",
        {"k": [1, 2]},
        ClientContext=base64.b64encode(json.dumps(custom).encode()).decode(),
    )
    body = read(response)
    assert body["event"] == {"k": [1, 2]}
    assert body["function_name"] == "echo"
    assert body["memory_limit_in_mb"] == "256"
    assert body["color"] == "blue"
    assert body["client_custom"] == {"tenant": "t1"}
    assert 0 < body["remaining_ms"] <= 3000
    assert body["request_id"] == response["ResponseMetadata"]["RequestId"]


def test_module_code_runs_once_per_environment(lambda_client) -> None:
    first, second = read(invoke(lambda_client, "echo")), read(invoke(lambda_client, "echo"))
    assert first["pid"] == second["pid"]
    assert second["inits"] == 1


def test_function_error_comes_back_in_lambdas_shape(lambda_client) -> None:
    response = invoke(lambda_client, "failing", {"card": "4242"})
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    body = read(response)
    assert body["errorType"] == "PaymentDeclined"
    assert body["errorMessage"] == "card 4242 was declined"
    assert any("index.py" in line for line in body["stackTrace"])


def test_timeout_replaces_the_environment(lambda_client) -> None:
    before = read(invoke(lambda_client, "sleeper", {"seconds": 0}))["pid"]
    response = invoke(lambda_client, "sleeper", {"seconds": 10}, LogType="Tail")
    assert response["FunctionError"] == "Unhandled"
    body = read(response)
    assert body["errorType"] == "Sandbox.Timedout"
    assert re.fullmatch(r"RequestId: \S+ Error: Task timed out after 2\.00 seconds", body["errorMessage"])
    # The tail shows what the handler printed before the timeout, then the timeout line.
    tail = base64.b64decode(response["LogResult"]).decode().splitlines()
    printed = tail.index("sleeping 10 s")
    assert tail[printed + 1].endswith("Task timed out after 2.00 seconds")
    after = read(invoke(lambda_client, "sleeper", {"seconds": 0}))["pid"]
    assert after != before


def test_unknown_function_is_resource_not_found(lambda_client) -> None:
    with pytest.raises(lambda_client.exceptions.ResourceNotFoundException) as info:
        invoke(lambda_client, "no-such-function")
    assert "Function not found" in str(info.value)
    assert "function:no-such-function" in str(info.value)


def test_unsupported_qualifier_is_not_found(lambda_client) -> None:
    with pytest.raises(lambda_client.exceptions.ResourceNotFoundException):
        invoke(lambda_client, "hello", Qualifier="7")


def test_oversize_sync_payload_is_refused(lambda_client) -> None:
    big = b'"' + b"x" * (6 * 1024 * 1024) + b'"'
    with pytest.raises(ClientError) as info:
        lambda_client.invoke(FunctionName="echo", Payload=big)
    assert info.value.response["Error"]["Code"] == "RequestTooLargeException"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413


def test_oversize_async_payload_is_refused(lambda_client) -> None:
    big = b'"' + b"x" * (1024 * 1024) + b'"'
    with pytest.raises(ClientError) as info:
        lambda_client.invoke(FunctionName="echo", Payload=big, InvocationType="Event")
    assert info.value.response["Error"]["Code"] == "RequestTooLargeException"
    assert "Event invocation type" in info.value.response["Error"]["Message"]


def test_body_that_is_not_json_is_refused(lambda_client) -> None:
    with pytest.raises(lambda_client.exceptions.InvalidRequestContentException) as info:
        lambda_client.invoke(FunctionName="echo", Payload=b"{not json")
    assert "Could not parse request body into json" in str(info.value)


def test_reserved_concurrency_throttles_the_excess(lambda_client) -> None:
    def call(_: int) -> str:
        try:
            invoke(lambda_client, "sleeper", {"seconds": 1})
            return "ok"
        except lambda_client.exceptions.TooManyRequestsException as exc:
            assert exc.response["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"
            assert exc.response["ResponseMetadata"]["HTTPHeaders"]["retry-after"] == "1"
            return "throttled"

    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(call, range(6)))
    assert outcomes.count("ok") >= 1
    assert outcomes.count("ok") <= 2  # never more than reservedConcurrency in flight
    assert outcomes.count("throttled") >= 4


def test_reserved_concurrency_zero_throttles_everything(lambda_client) -> None:
    with pytest.raises(lambda_client.exceptions.TooManyRequestsException):
        invoke(lambda_client, "throttled")


def test_dry_run_validates_without_running(lambda_client) -> None:
    response = invoke(lambda_client, "hello", InvocationType="DryRun")
    assert response["StatusCode"] == 204
    with pytest.raises(lambda_client.exceptions.ResourceNotFoundException):
        invoke(lambda_client, "missing", InvocationType="DryRun")


def test_tail_returns_the_invocation_log(lambda_client) -> None:
    response = invoke(lambda_client, "echo", {"marker": "tail-me"}, LogType="Tail")
    log = base64.b64decode(response["LogResult"]).decode()
    request_id = response["ResponseMetadata"]["RequestId"]
    assert f"START RequestId: {request_id} Version: $LATEST" in log
    assert "tail-me" in log
    assert f"END RequestId: {request_id}" in log
    assert re.search(
        rf"REPORT RequestId: {request_id}\tDuration: [\d.]+ ms\tBilled Duration: \d+ ms\t"
        r"Memory Size: 256 MB\tMax Memory Used: \d+ MB",
        log,
    )


def test_event_invocation_is_accepted_then_runs(lambda_client, tmp_path) -> None:
    target = tmp_path / "side-effect.json"
    response = invoke(lambda_client, "writer", {"path": str(target)}, InvocationType="Event")
    assert response["StatusCode"] == 202
    request_id = response["ResponseMetadata"]["RequestId"]
    import time

    deadline = time.monotonic() + 30
    while not target.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert json.loads(target.read_text())["request_id"] == request_id


def test_cold_start_reports_init_duration_once(lambda_client) -> None:
    first = invoke(lambda_client, "orders", {"items": [{"price": 10}]}, LogType="Tail")
    second = invoke(lambda_client, "orders", {"items": [{"price": 10}]}, LogType="Tail")
    assert read(first) == {"items": 1, "total": 12.0}
    assert "Init Duration:" in base64.b64decode(first["LogResult"]).decode()
    assert "Init Duration:" not in base64.b64decode(second["LogResult"]).decode()


def test_provisioned_environment_is_warm_before_the_first_call(lambda_client) -> None:
    response = invoke(lambda_client, "warm", LogType="Tail")
    assert read(response)["init_type"] == "provisioned-concurrency"
    assert "Init Duration:" not in base64.b64decode(response["LogResult"]).decode()


def test_error_inside_layered_function(lambda_client) -> None:
    response = invoke(lambda_client, "orders", {"items": []})
    assert response["FunctionError"] == "Unhandled"
    assert read(response)["errorMessage"] == "event.items must be a non-empty list"


def test_outgrowing_memory_size_is_out_of_memory(lambda_client) -> None:
    assert read(invoke(lambda_client, "hog", {"mb": 8})) == 8 * 1024 * 1024
    response = invoke(lambda_client, "hog", {"mb": 400}, LogType="Tail")
    assert response["FunctionError"] == "Unhandled"
    body = read(response)
    assert body["errorType"] == "Runtime.OutOfMemory"
    assert body["errorMessage"].endswith("Error: Runtime exited with error: signal: killed")
    assert "Memory Size: 128 MB" in base64.b64decode(response["LogResult"]).decode()
    assert read(invoke(lambda_client, "hog", {"mb": 8})) == 8 * 1024 * 1024  # a fresh environment
