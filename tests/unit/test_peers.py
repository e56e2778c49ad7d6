"""A forwarded call's error comes back from the holder as the class this replica would have raised."""

from __future__ import annotations

import json

from lamina.cluster.peers import remote_error
from lamina.invocation.errors import FunctionNotFound, ResourceNotReady, ThrottledError


def answered(exc: Exception) -> tuple[int, dict[str, str], bytes]:
    """What the holder's peer endpoint sends for ``exc`` (header names as the HTTP client gives them)."""
    return exc.status, {k.lower(): v for k, v in exc.headers().items()}, exc.body()  # type: ignore[attr-defined]


def test_a_throttle_stays_a_throttle_with_its_reason() -> None:
    error = remote_error(*answered(ThrottledError("ConcurrentInvocationLimitExceeded")))
    assert isinstance(error, ThrottledError)  # the async dispatcher backs off instead of counting it
    assert error.reason == "ConcurrentInvocationLimitExceeded" and error.status == 429


def test_not_found_stays_not_found() -> None:
    error = remote_error(*answered(FunctionNotFound("Function not found: ns/f:7")))
    assert isinstance(error, FunctionNotFound) and error.message == "Function not found: ns/f:7"


def test_other_errors_keep_status_type_message_and_fields() -> None:
    original = ResourceNotReady("function f cannot start an execution environment (ErrImagePull)", Reason="X")
    error = remote_error(*answered(original))
    assert (error.status, error.code) == (502, "ResourceNotReadyException")
    assert json.loads(error.body()) == json.loads(original.body())
    assert error.headers()["x-amzn-ErrorType"] == "ResourceNotReadyException"
