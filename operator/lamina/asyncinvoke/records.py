"""Lambda's asynchronous invocation record, the JSON document destinations receive."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from lamina_runtime.environment import ACCOUNT_ID, installation_region
from lamina_runtime.protocol import InvocationResult

SUCCESS = "Success"
RETRIES_EXHAUSTED = "RetriesExhausted"
EVENT_AGE_EXCEEDED = "EventAgeExceeded"

ACCOUNT = ACCOUNT_ID


def function_arn(name: str, *, region: str | None = None, account: str = ACCOUNT) -> str:
    return f"arn:aws:lambda:{region or installation_region()}:{account}:function:{name}:$LATEST"


def iso_timestamp(epoch: float) -> str:
    t = datetime.fromtimestamp(epoch, tz=UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def parse_payload(data: bytes | str | None) -> Any:
    """JSON when it is JSON, else the text (an event or response need not be JSON)."""
    if data is None:
        return None
    if isinstance(data, bytes | bytearray):
        if not data:
            return None
        try:
            return json.loads(data)
        except ValueError:
            return bytes(data).decode("utf-8", errors="replace")
    try:
        return json.loads(data)
    except ValueError:
        return data


def response_from_result(result: InvocationResult) -> dict[str, Any]:
    """What is kept of an attempt (in ``QueuedEvent.last_error``) to build the record later."""
    out: dict[str, Any] = {"statusCode": 200, "responsePayload": parse_payload(result.payload)}
    if result.function_error:
        out["functionError"] = result.function_error
    return out


def throttled_response(message: str, reason: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"errorType": "TooManyRequestsException", "errorMessage": message}
    if reason:
        body["reason"] = reason
    return {"statusCode": 429, "responsePayload": body}


def service_error_response(error: BaseException) -> dict[str, Any]:
    return {
        "statusCode": 500,
        "responsePayload": {
            "errorType": "ServiceException",
            "errorMessage": str(error) or type(error).__name__,
        },
    }


def invocation_record(
    *,
    request_id: str,
    function_name: str,
    condition: str,
    invoke_count: int,
    request_payload: bytes,
    response: dict[str, Any] | None,
    now: float,
    region: str | None = None,
    account: str = ACCOUNT,
) -> dict[str, Any]:
    """The record: ``version``, ``timestamp``, ``requestContext``, ``requestPayload``,
    ``responseContext`` and ``responsePayload`` (absent when the function never answered)."""
    response = response or {}
    ctx: dict[str, Any] = {"statusCode": response.get("statusCode", 200), "executedVersion": "$LATEST"}
    if response.get("functionError"):
        ctx["functionError"] = response["functionError"]
    record: dict[str, Any] = {
        "version": "1.0",
        "timestamp": iso_timestamp(now),
        "requestContext": {
            "requestId": request_id,
            "functionArn": function_arn(function_name, region=region, account=account),
            "condition": condition,
            "approximateInvokeCount": invoke_count,
        },
        "requestPayload": parse_payload(request_payload),
        "responseContext": ctx,
    }
    if "responsePayload" in response:
        record["responsePayload"] = response["responsePayload"]
    return record
