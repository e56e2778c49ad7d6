"""The gateway's own refusals of an HTTP request (size, JSON, parameters) and its platform failure.

The errors an invocation raises wherever it runs (throttled, not found) and their base class are in
:mod:`lamina.invocation.errors`, so that the layers below the gateway catch the same classes.
"""

from __future__ import annotations

from lamina.invocation.errors import LambdaServiceError, ThrottledError

SYNC_PAYLOAD_LIMIT = 6 * 1024 * 1024  # 6291456 bytes, RequestResponse
ASYNC_PAYLOAD_LIMIT = 1024 * 1024  # 1 MB, Event


class InvalidRequestContent(LambdaServiceError):
    status = 400
    code = "InvalidRequestContentException"
    error_type = "User"


class InvalidParameterValue(LambdaServiceError):
    status = 400
    code = "InvalidParameterValueException"
    error_type = "User"


class ValidationError(LambdaServiceError):
    """A request parameter broke the API's constraints (pattern, length): AWS's front end answers
    these before the service sees them, in its own shape."""

    status = 400
    code = "ValidationException"
    error_type = "User"

    def __init__(self, field: str, value: str, constraint: str) -> None:
        shown = value if len(value) <= 256 else value[:256] + "..."
        super().__init__(
            f"1 validation error detected: Value '{shown}' at '{field}' failed to satisfy constraint: "
            f"{constraint}"
        )


class RequestTooLarge(LambdaServiceError):
    status = 413
    code = "RequestTooLargeException"
    error_type = "User"


class ServiceError(LambdaServiceError):
    """Something inside lamina failed before the function could answer (Lambda's ServiceException)."""

    status = 500
    code = "ServiceException"


class AsyncQueueFull(ThrottledError):
    """An Event invocation over the function's quota of queued events: 429, and nothing was queued."""

    REASON = "AsyncEventQueueFull"

    def __init__(self, message: str) -> None:
        super().__init__(self.REASON, retry_after=5)
        self.message = message
        self.args = (message,)
