"""Secrets derived from the installation key: invoke secrets and execution credentials."""

from __future__ import annotations

import time

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from multidict import CIMultiDict

from lamina.auth import sigv4
from lamina.auth.credentials import (
    ExecutionClaims,
    execution_credentials,
    invoke_secret,
    key_id,
    verify_session_token,
)

KEY, OTHER = b"k" * 32, b"o" * 32


def test_invoke_secrets_differ_by_function_namespace_and_key() -> None:
    secret = invoke_secret(KEY, "team-a", "hello")
    assert secret == invoke_secret(KEY, "team-a", "hello") and len(secret) == 64
    assert secret != invoke_secret(KEY, "team-b", "hello")
    assert secret != invoke_secret(KEY, "team-a", "hello2")
    assert secret != invoke_secret(KEY, "team-ah", "ello")  # fields are separated, not concatenated
    assert secret != invoke_secret(OTHER, "team-a", "hello")
    assert key_id(KEY) != key_id(OTHER) and len(key_id(KEY)) == 8


def test_execution_credentials_verify_with_their_key_only() -> None:
    claims = ExecutionClaims("team-a", "hello", "runner")
    creds = execution_credentials(KEY, claims)
    assert creds.access_key_id.startswith("ASIA") and len(creds.access_key_id) == 20
    assert verify_session_token(KEY, creds.session_token) == (claims, creds)
    assert verify_session_token(OTHER, creds.session_token) is None
    payload, _tag = creds.session_token.split(".", 2)[1:]
    forged = creds.session_token.replace(payload, payload[:-2] + "AA")
    assert verify_session_token(KEY, forged) is None
    assert verify_session_token(KEY, "not a token") is None
    assert claims.username == "system:serviceaccount:team-a:runner"
    env = creds.environment()
    assert set(env) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}


def test_botocore_signs_with_execution_credentials_and_the_verifier_knows_who() -> None:
    creds = execution_credentials(KEY, ExecutionClaims("team-a", "hello", "default", int(time.time()) + 60))
    request = AWSRequest(method="POST", url="http://gw:9000/2015-03-31/functions/x/invocations", data=b"{}")
    SigV4Auth(
        Credentials(creds.access_key_id, creds.secret_access_key, creds.session_token), "lambda", "us-east-1"
    ).add_auth(request)
    prepared = request.prepare()
    headers: CIMultiDict[str] = CIMultiDict(prepared.headers.items())
    headers.setdefault("Host", "gw:9000")

    def lookup(sig: sigv4.Signature):
        found = verify_session_token(KEY, sig.session_token or "")
        if found is None or found[1].access_key_id != sig.access_key:
            return None
        return found[1].secret_access_key, found[0]

    claims = sigv4.verify(
        "POST",
        "/2015-03-31/functions/x/invocations",
        headers,
        b"{}",
        lookup,
        region="us-east-1",
        now=time.time(),
    )
    assert claims.function == "hello" and claims.namespace == "team-a"
