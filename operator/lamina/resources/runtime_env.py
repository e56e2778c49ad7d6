"""The variables lamina gives every function on top of Lambda's reserved ones, the same for a pod and for
local mode: one place computes them.

- ``AWS_REGION`` / ``AWS_DEFAULT_REGION``: the installation's one region (the region of every ARN).
- ``AWS_ENDPOINT_URL_LAMBDA``: the gateway. boto3 (1.28+) and the AWS CLI send Lambda calls there,
  so ``boto3.client("lambda").invoke(...)`` inside a function calls another lamina function.
- Credentials for boto3 to sign with: the function's execution credentials (docs/security.md) when
  authentication is on — a pod gets them from its function's Secret (so ``credentials={}`` here), local
  mode passes them as ``credentials`` — else placeholders shaped like AWS's, which identify nobody and
  which a gateway without authentication does not check.
- Lambda's logging variables from ``spec.logging``: ``AWS_LAMBDA_LOG_FORMAT`` / ``AWS_LAMBDA_LOG_LEVEL``
  (JSON only, as Lambda sets them) and ``AWS_LAMBDA_LOG_GROUP_NAME`` for a custom log group.

The function's own ``environment`` is applied after these, so it may replace any of them.
"""

from __future__ import annotations

from collections.abc import Mapping

from lamina.api import LoggingConfig

#: The variables the AWS SDKs sign with; a function that sets any of them gets none of lamina's.
CREDENTIAL_VARIABLES = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"})

#: Shaped like AWS's (a 20-character access key id, a 40-character secret) so that boto3 signs with
#: them; they identify nobody. See the module docstring.
PLACEHOLDER_CREDENTIALS: Mapping[str, str] = {
    "AWS_ACCESS_KEY_ID": "AKIALAMINAEXAMPLEKEY",
    "AWS_SECRET_ACCESS_KEY": "lamina/placeholder/not+a+secret+00000000",
}


def function_environment(
    *,
    region: str,
    gateway_url: str | None,
    logging: LoggingConfig | None = None,
    credentials: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Region, the gateway's endpoint, credentials and logging variables of one function."""
    env = {"AWS_REGION": region, "AWS_DEFAULT_REGION": region}
    if gateway_url:
        env["AWS_ENDPOINT_URL_LAMBDA"] = gateway_url.rstrip("/")
        env.update(PLACEHOLDER_CREDENTIALS if credentials is None else credentials)
    if logging is not None:
        if logging.is_json:
            env["AWS_LAMBDA_LOG_FORMAT"] = "JSON"
            env["AWS_LAMBDA_LOG_LEVEL"] = logging.application_log_level or "INFO"
        if logging.log_group:
            env["AWS_LAMBDA_LOG_GROUP_NAME"] = logging.log_group
    return env


def system_log_level(logging: LoggingConfig | None) -> str:
    """The platform lines kept: LoggingConfig.SystemLogLevel, INFO by default (all of them)."""
    return (logging.system_log_level if logging is not None else None) or "INFO"
