"""Authentication failures, as AWS's front end answers them before the service sees the request;
botocore maps them by the x-amzn-ErrorType header like any other code. (AccessDeniedException, the
authorization failure, is an invocation error: :mod:`lamina.invocation.errors`.)"""

from __future__ import annotations

from lamina.invocation.errors import LambdaServiceError


class MissingAuthenticationToken(LambdaServiceError):
    """No Authorization header and no presigned query: AWS's answer to an unsigned request."""

    status = 403
    code = "MissingAuthenticationTokenException"
    error_type = "User"

    def __init__(self, message: str = "Missing Authentication Token") -> None:
        super().__init__(message)


class IncompleteSignature(LambdaServiceError):
    """An Authorization header (or presigned query) that is not a complete SigV4 signature."""

    status = 400
    code = "IncompleteSignatureException"
    error_type = "User"


class InvalidSignature(LambdaServiceError):
    """A well-formed signature that does not verify: wrong secret, outside the time window, another
    region or service."""

    status = 403
    code = "InvalidSignatureException"
    error_type = "User"


class UnrecognizedClient(LambdaServiceError):
    """An access key id (or bearer token) nobody issued."""

    status = 403
    code = "UnrecognizedClientException"
    error_type = "User"

    def __init__(self, message: str = "The security token included in the request is invalid.") -> None:
        super().__init__(message)


class ExpiredToken(LambdaServiceError):
    status = 403
    code = "ExpiredTokenException"
    error_type = "User"

    def __init__(self, message: str = "The security token included in the request is expired") -> None:
        super().__init__(message)
