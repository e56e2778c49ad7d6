"""Lambda's service errors: names, HTTP statuses and body shapes that boto3 maps to exceptions."""

from __future__ import annotations

import json
from typing import Any

SYNC_PAYLOAD_LIMIT = 6 * 1024 * 1024  # 6291456 bytes, RequestResponse
ASYNC_PAYLOAD_LIMIT = 1024 * 1024  # 1 MB, Event


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
    status = 404
    code = "ResourceNotFoundException"
    message_key = "Message"
    error_type = "User"


class InvalidRequestContent(LambdaServiceError):
    status = 400
    code = "InvalidRequestContentException"
    error_type = "User"


class InvalidParameterValue(LambdaServiceError):
    status = 400
    code = "InvalidParameterValueException"
    error_type = "User"


class RequestTooLarge(LambdaServiceError):
    status = 413
    code = "RequestTooLargeException"
    error_type = "User"


class ThrottledError(LambdaServiceError):
    """Over the function's reserved concurrency (or the unreserved pool): 429 with a Reason."""

    status = 429
    code = "TooManyRequestsException"
    error_type = "User"

    def __init__(self, reason: str, retry_after: int = 1) -> None:
        super().__init__("Rate Exceeded.", Reason=reason)
        self.reason = reason
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "Retry-After": str(self.retry_after)}


class ServiceError(LambdaServiceError):
    """Something inside lamina failed before the function could answer (Lambda's ServiceException)."""

    status = 500
    code = "ServiceException"
