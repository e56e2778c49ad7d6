"""boto3 against `lamina local`: examples/custom-runtime.yaml, a provided.al2023 Function whose
ConfigMap ships a urllib `bootstrap` speaking the Runtime API."""

from __future__ import annotations

import base64
import json
import re


def invoke(client, payload: object, **kwargs):
    return client.invoke(FunctionName="custom", Payload=json.dumps(payload).encode(), **kwargs)


def tail(response) -> list[str]:
    return base64.b64decode(response["LogResult"]).decode().splitlines()


def test_custom_runtime_answers_with_lambda_logs(lambda_client) -> None:
    first = invoke(lambda_client, {"name": "boto3"}, LogType="Tail")
    assert first["StatusCode"] == 200 and "FunctionError" not in first
    body = json.loads(first["Payload"].read())
    rid = first["ResponseMetadata"]["RequestId"]
    assert body == {"message": "Hello from a custom runtime, boto3!", "requestId": rid}
    lines = tail(first)
    start = lines.index(f"START RequestId: {rid} Version: $LATEST")
    assert lines[start + 1] == "custom runtime got {'name': 'boto3'}"
    assert lines[start + 2] == f"END RequestId: {rid}"
    assert re.match(rf"REPORT RequestId: {rid}\tDuration: .*\tInit Duration: [0-9.]+ ms$", lines[-1])

    second = invoke(lambda_client, {"name": "again"}, LogType="Tail")
    assert "Init Duration" not in tail(second)[-1]  # warm: the same bootstrap process


def test_custom_runtime_error_is_unhandled(lambda_client) -> None:
    response = invoke(lambda_client, {"fail": "no such order"})
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    body = json.loads(response["Payload"].read())
    assert body["errorType"] == "ValueError" and body["errorMessage"] == "no such order"
