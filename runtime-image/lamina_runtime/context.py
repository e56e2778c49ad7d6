"""The `context` object handed to a handler, with the attributes of Lambda's Python runtime.

Plain classes with __slots__ rather than dataclasses: importing dataclasses pulls in inspect, which
would cost every cold start a few milliseconds.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing at cold start
if TYPE_CHECKING:
    from typing import Any


class CognitoIdentity:
    __slots__ = ("cognito_identity_id", "cognito_identity_pool_id")

    def __init__(self, identity_id: str | None = None, pool_id: str | None = None) -> None:
        self.cognito_identity_id = identity_id
        self.cognito_identity_pool_id = pool_id

    def __repr__(self) -> str:
        return f"CognitoIdentity(id={self.cognito_identity_id!r}, pool={self.cognito_identity_pool_id!r})"


class Client:
    """The mobile client that sent the request (ClientContext.client)."""

    __slots__ = ("app_package_name", "app_title", "app_version_code", "app_version_name", "installation_id")

    def __init__(self, data: dict[str, Any]) -> None:
        self.installation_id = data.get("installation_id")
        self.app_title = data.get("app_title")
        self.app_version_name = data.get("app_version_name")
        self.app_version_code = data.get("app_version_code")
        self.app_package_name = data.get("app_package_name")


class ClientContext:
    __slots__ = ("client", "custom", "env")

    def __init__(self, data: dict[str, Any]) -> None:
        client = data.get("client")
        self.client = Client(client) if isinstance(client, dict) else None
        self.custom = data.get("custom")
        self.env = data.get("env")


#: W3C trace-context fields ``context.w3c()`` returns, as Lambda's runtime allows them.
W3C_FIELDS = ("traceparent", "tracestate", "baggage")


def decode_client_context(encoded: str | None) -> tuple[ClientContext | None, dict[str, str]]:
    """Decode X-Amz-Client-Context (base64 JSON); anything unreadable becomes None, as in Lambda.

    Also returns the W3C trace context carried under its ``w3c`` key, which Lambda's runtime takes
    out of the client context and serves as ``context.w3c()``."""
    if not encoded:
        return None, {}
    import base64
    import json

    try:
        data = json.loads(base64.b64decode(encoded))
    except (ValueError, RecursionError):
        return None, {}
    if not isinstance(data, dict):
        return None, {}
    raw = data.pop("w3c", None)
    w3c = {k: raw[k] for k in W3C_FIELDS if isinstance(raw, dict) and isinstance(raw.get(k), str)}
    return ClientContext(data), w3c


def decode_identity(data: dict[str, Any] | None) -> CognitoIdentity:
    data = data or {}
    return CognitoIdentity(data.get("cognitoIdentityId"), data.get("cognitoIdentityPoolId"))


class LambdaContext:
    __slots__ = (
        "_deadline_ms",
        "_w3c",
        "aws_request_id",
        "client_context",
        "function_name",
        "function_version",
        "identity",
        "invoked_function_arn",
        "log_group_name",
        "log_stream_name",
        "memory_limit_in_mb",
        "tenant_id",
    )

    def __init__(
        self,
        request_id: str,
        deadline_ms: int,
        invoked_function_arn: str,
        client_context: ClientContext | None,
        identity: CognitoIdentity,
        w3c: dict[str, str] | None = None,
        tenant_id: str | None = None,
    ) -> None:
        env = os.environ
        self.aws_request_id = request_id
        self._deadline_ms = deadline_ms
        self.invoked_function_arn = invoked_function_arn
        self.client_context = client_context
        self.identity = identity
        self.tenant_id = tenant_id
        self._w3c = w3c or {}
        self.function_name = env.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = env.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.memory_limit_in_mb = env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")  # a string, like the RIC
        self.log_group_name = env.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = env.get("AWS_LAMBDA_LOG_STREAM_NAME", "")

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))

    def w3c(self) -> dict[str, str]:
        """The W3C trace context (traceparent, tracestate) of the call that invoked the function."""
        return dict(self._w3c)

    def log(self, msg: object) -> None:
        """Write to the function's log, as the runtime's ``context.log`` does."""
        import sys

        sys.stdout.write(str(msg))

    def __repr__(self) -> str:
        return (
            f"LambdaContext(function_name={self.function_name!r}, aws_request_id={self.aws_request_id!r}, "
            f"remaining_ms={self.get_remaining_time_in_millis()})"
        )
