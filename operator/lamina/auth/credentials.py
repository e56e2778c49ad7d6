"""Secrets derived from the installation's key: nothing per function is stored, everything is recomputed.

The key (``LAMINA_AUTH_KEY``, from the chart's Secret, shared by the operator and the gateway) is the
only secret; each derivation is an HMAC-SHA256 of the key over a label and the function's identity, so
one function's value tells nothing about another's, and rotating the key changes them all.

- :func:`invoke_secret`: what the gateway sends in ``Lamina-Invoke-Secret`` to a function's pods, and
  what the operator puts into the function's own Secret for the pod (``LAMINA_INVOKE_SECRET``). Pool
  pods claimed for a function get it from this same function.
- :func:`execution_credentials`: the function's AWS-style credentials (access key id, secret access
  key, session token), Lambda's execution role. Signing with them through the gateway acts as the
  function's execution identity (its ServiceAccount); the gateway recomputes the secret key from the
  session token, so no table of credentials exists anywhere.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass

INVOKE_LABEL = b"lamina invoke secret v1"
EXECUTION_LABEL = b"lamina execution credentials v1"
TOKEN_PREFIX = "lamina1."
#: Access key ids of execution credentials start like AWS's temporary ones.
EXECUTION_KEY_PREFIX = "ASIA"


def _mac(key: bytes, label: bytes, *parts: str) -> bytes:
    message = label + b"".join(b"\0" + p.encode() for p in parts)
    return hmac.new(key, message, hashlib.sha256).digest()


def key_id(key: bytes) -> str:
    """A short public name of the key (which key derived a value), safe to put in object names."""
    return _mac(key, b"lamina key id").hex()[:8]


def invoke_secret(key: bytes, namespace: str, name: str) -> str:
    """The secret a function's pods require on /invoke (hex, 64 characters)."""
    return _mac(key, INVOKE_LABEL, namespace, name).hex()


@dataclass(frozen=True, slots=True)
class ExecutionClaims:
    """Who execution credentials act as: a function and the ServiceAccount it runs as."""

    namespace: str
    function: str
    service_account: str
    expires: int | None = None  # epoch seconds; None: valid until the key rotates

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


@dataclass(frozen=True, slots=True)
class ExecutionCredentials:
    access_key_id: str
    secret_access_key: str
    session_token: str

    def environment(self) -> dict[str, str]:
        """As the AWS SDKs read them (Lambda sets the same three variables)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_SESSION_TOKEN": self.session_token,
        }


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def execution_credentials(key: bytes, claims: ExecutionClaims) -> ExecutionCredentials:
    """Credentials that sign as ``claims`` (SigV4 with the session token in X-Amz-Security-Token)."""
    body = {"ns": claims.namespace, "fn": claims.function, "sa": claims.service_account}
    if claims.expires is not None:
        body["exp"] = claims.expires  # type: ignore[assignment]
    payload = _b64(json.dumps(body, separators=(",", ":"), sort_keys=True).encode())
    tag = _b64(_mac(key, EXECUTION_LABEL, "token", payload)[:16])
    token = f"{TOKEN_PREFIX}{payload}.{tag}"
    digest = _mac(key, EXECUTION_LABEL, "access key", token)
    access_key_id = EXECUTION_KEY_PREFIX + base64.b32encode(digest[:10]).decode()  # 4 + 16 characters
    secret = _b64(_mac(key, EXECUTION_LABEL, "secret", token))
    return ExecutionCredentials(access_key_id, secret, token)


def verify_session_token(key: bytes, token: str) -> tuple[ExecutionClaims, ExecutionCredentials] | None:
    """The claims and credentials of a session token this key made, else None (forged or foreign)."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    payload, _, tag = token[len(TOKEN_PREFIX) :].partition(".")
    expected = _b64(_mac(key, EXECUTION_LABEL, "token", payload)[:16])
    if not tag or not hmac.compare_digest(tag, expected):
        return None
    try:
        body = json.loads(_unb64(payload))
        claims = ExecutionClaims(str(body["ns"]), str(body["fn"]), str(body["sa"]), body.get("exp"))
    except (ValueError, KeyError, TypeError):
        return None
    return claims, execution_credentials(key, claims)


def function_secret_values(key: bytes, namespace: str, name: str, service_account: str) -> dict[str, str]:
    """What goes into a function's own Secret (lamina.resources.function.function_secret): the invoke
    secret its pods require and its execution credentials, acting as ``service_account``."""
    creds = execution_credentials(key, ExecutionClaims(namespace, name, service_account))
    return {"invoke-secret": invoke_secret(key, namespace, name), **creds.environment()}
