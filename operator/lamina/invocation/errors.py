"""Lambda's errors that an invocation itself can raise, whoever invokes: names, HTTP statuses and body
shapes that boto3 maps to exceptions.

The gateway answers them as they are; the async dispatcher and the mapping workers catch
:class:`ThrottledError` (back off, not an attempt) and :class:`FunctionNotFound` (wait for the
function). Errors about the HTTP request itself (size, bad JSON, bad parameters) are the gateway's
own, in :mod:`lamina.gateway.errors`.
"""

from __future__ import annotations

import json
from typing import Any

#: Why a call is throttled (``Reason`` of the 429): the function's reserved concurrency is used up...
RESERVED_LIMIT = "ReservedFunctionConcurrentInvocationLimitExceeded"
#: ... or the unreserved pool that functions without a reservation share.
ACCOUNT_LIMIT = "ConcurrentInvocationLimitExceeded"


class LambdaServiceError(Exception):
    """An error that stops the function from running; answered with a non-2xx status."""

    status = 500
    code = "ServiceException"
    message_key = "message"
    error_type = "Service"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def body(self) -> bytes:
        doc: dict[str, Any] = {"Type": self.error_type, self.message_key: self.message}
        doc.update(self.extra)
        return json.dumps(doc).encode()

    def headers(self) -> dict[str, str]:
        return {"x-amzn-ErrorType": self.code, "Content-Type": "application/json"}


class FunctionNotFound(LambdaServiceError):
    """The function does not exist (any more, or not yet for this process)."""

    status = 404
    code = "ResourceNotFoundException"
    message_key = "Message"
    error_type = "User"


class ThrottledError(LambdaServiceError):
    """Over the function's reserved concurrency (or the unreserved pool): 429 with a Reason."""

    status = 429
    code = "TooManyRequestsException"
    error_type = "User"

    def __init__(self, reason: str = RESERVED_LIMIT, retry_after: int = 1) -> None:
        super().__init__("Rate Exceeded.", Reason=reason)
        self.reason = reason
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "Retry-After": str(self.retry_after)}


class ResourceNotReady(LambdaServiceError):
    """The function's execution environments cannot start (Lambda's 502 for environment problems):
    the message names the cause, e.g. the image that cannot be pulled or the init container's error."""

    status = 502
    code = "ResourceNotReadyException"


class AccessDenied(LambdaServiceError):
    """Authenticated, but RBAC (or the local keys file) does not allow this action on this function."""

    status = 403
    code = "AccessDeniedException"
    error_type = "User"
