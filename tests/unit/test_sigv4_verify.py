"""The SigV4 verifier (lamina.auth.sigv4) against requests signed by botocore itself (SigV4Auth,
SigV4QueryAuth) and by lamina's own stdlib signer."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import pytest
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from multidict import CIMultiDict

from lamina.auth import sigv4
from lamina.auth.errors import (
    IncompleteSignature,
    InvalidSignature,
    MissingAuthenticationToken,
    UnrecognizedClient,
)
from lamina.invocation.errors import LambdaServiceError

KEY, SECRET = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
HOST = "127.0.0.1:9000"


def signed(
    path: str = "/2015-03-31/functions/hello/invocations",
    body: bytes = b'{"x": 1}',
    *,
    secret: str = SECRET,
    key: str = KEY,
    region: str = "us-east-1",
    service: str = "lambda",
    token: str | None = None,
    headers: dict[str, str] | None = None,
    presign: int | None = None,
    method: str = "POST",
    unsigned_payload: bool = False,
) -> tuple[str, CIMultiDict[str], bytes]:
    """(raw path with query, headers as sent, body) of a request botocore signed."""
    scheme = "https" if unsigned_payload else "http"
    request = AWSRequest(method=method, url=f"{scheme}://{HOST}{path}", data=body, headers=headers or {})
    request.context["payload_signing_enabled"] = not unsigned_payload
    creds = Credentials(key, secret, token)
    if presign is not None:
        SigV4QueryAuth(creds, service, region, expires=presign).add_auth(request)
    else:
        SigV4Auth(creds, service, region).add_auth(request)
    prepared = request.prepare()
    raw = prepared.url.split(HOST, 1)[1]
    sent: CIMultiDict[str] = CIMultiDict(prepared.headers.items())
    sent.setdefault("Host", HOST)
    return raw, sent, body


def lookup(sig: sigv4.Signature) -> tuple[str, Any] | None:
    return (SECRET, {"user": "alice"}) if sig.access_key == KEY else None


def verify(raw: str, headers: CIMultiDict[str], body: bytes, *, method: str = "POST", **kw: Any) -> Any:
    kw.setdefault("region", "us-east-1")
    kw.setdefault("now", time.time())
    return sigv4.verify(method, raw, headers, body, lookup, **kw)


def refused(error: type[LambdaServiceError], *args: Any, **kw: Any) -> str:
    with pytest.raises(error) as info:
        verify(*args, **kw)
    return info.value.message


def test_a_boto3_signature_verifies_and_names_its_principal() -> None:
    assert verify(*signed()) == {"user": "alice"}


def test_arns_qualifiers_and_odd_paths_canonicalize_as_botocore_does() -> None:
    arn = "arn%3Aaws%3Alambda%3Aus-east-1%3A123456789012%3Afunction%3Ahello%3A%24LATEST"
    for path in (
        f"/2015-03-31/functions/{arn}/invocations?Qualifier=%24LATEST",
        "/2015-03-31/functions/team-b.internal/invocations",
        "/2015-03-31/functions/?MaxItems=3&Marker=6",
        "/url/hello/a%20b/c%2Fd/./x/../y?b=2&a=1&a=0&e=%2F&sp=a%20b",
        "/url/hello/",
    ):
        assert verify(*signed(path)) == {"user": "alice"}, path


def test_client_context_and_other_headers_are_covered() -> None:
    raw, headers, body = signed(headers={"X-Amz-Client-Context": "eyJ9", "X-Amz-Invocation-Type": "Event"})
    assert verify(raw, headers, body)
    headers["X-Amz-Invocation-Type"] = "RequestResponse"
    assert "does not match" in refused(InvalidSignature, raw, headers, body)


def test_a_wrong_secret_is_an_invalid_signature() -> None:
    message = refused(InvalidSignature, *signed(secret="not-the-secret"))
    assert message.startswith("The request signature we calculated does not match")


def test_an_unknown_key_is_an_unrecognized_client() -> None:
    assert refused(UnrecognizedClient, *signed(key="AKIDUNKNOWN")) == (
        "The security token included in the request is invalid."
    )


def test_a_changed_body_or_path_breaks_the_signature() -> None:
    raw, headers, _ = signed()
    refused(InvalidSignature, raw, headers, b'{"x": 2}')
    refused(InvalidSignature, raw.replace("hello", "other"), headers, b'{"x": 1}')
    refused(InvalidSignature, *signed(), method="PUT")


@pytest.mark.parametrize("skew", [-301, 301, -3600, 86400])
def test_a_skewed_clock_is_refused(skew: int) -> None:
    raw, headers, body = signed()
    message = refused(InvalidSignature, raw, headers, body, now=time.time() + skew)
    assert message.startswith("Signature expired" if skew > 0 else "Signature not yet current")


def test_within_five_minutes_is_fine() -> None:
    raw, headers, body = signed()
    assert verify(raw, headers, body, now=time.time() + 290)
    assert verify(raw, headers, body, now=time.time() - 290)


def test_another_region_or_service_is_refused() -> None:
    assert "scoped to a valid region, not 'eu-west-1'" in refused(
        InvalidSignature, *signed(region="eu-west-1")
    )
    assert "scoped to correct service: 'lambda'" in refused(InvalidSignature, *signed(service="s3"))


def test_no_signature_is_a_missing_authentication_token() -> None:
    headers: CIMultiDict[str] = CIMultiDict({"Host": HOST})
    assert refused(MissingAuthenticationToken, "/2015-03-31/functions/x/invocations", headers, b"") == (
        "Missing Authentication Token"
    )


@pytest.mark.parametrize(
    "authorization",
    [
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/lambda/aws4_request",
        "AWS4-HMAC-SHA512 Credential=a/b/c/d/e, SignedHeaders=host, Signature=00",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/x, SignedHeaders=host, Signature=00",
        "Basic dXNlcjpwYXNz",
    ],
)
def test_an_incomplete_signature_is_refused(authorization: str) -> None:
    headers: CIMultiDict[str] = CIMultiDict(
        {"Host": HOST, "Authorization": authorization, "X-Amz-Date": "20260101T000000Z"}
    )
    refused(IncompleteSignature, "/2015-03-31/functions/x/invocations", headers, b"")


def test_host_must_be_signed_and_match() -> None:
    raw, headers, body = signed()
    headers["Host"] = "evil.example"
    refused(InvalidSignature, raw, headers, body)
    auth = headers["Authorization"].replace("SignedHeaders=host;", "SignedHeaders=")
    headers["Authorization"] = auth
    assert "'Host' or ':authority' must be a 'SignedHeader'" in refused(InvalidSignature, raw, headers, body)


def test_a_declared_payload_hash_must_be_the_bodys() -> None:
    body = b'{"x": 1}'
    good = hashlib.sha256(body).hexdigest()
    assert verify(*signed(body=body, headers={"X-Amz-Content-SHA256": good}))
    raw, headers, _ = signed(body=body, headers={"X-Amz-Content-SHA256": good})
    refused(InvalidSignature, raw, headers, b'{"x": 9}')


def test_unsigned_payload_only_where_allowed() -> None:
    request = signed(headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    assert "UNSIGNED-PAYLOAD is not accepted" in refused(InvalidSignature, *request)
    assert verify(*request, allow_unsigned_payload=True)


def test_presigned_urls_verify_until_they_expire() -> None:
    raw, headers, _ = signed("/url/hello/path?x=1", b"", presign=60, method="GET")
    assert "Authorization" not in headers and "X-Amz-Signature=" in raw
    # botocore over plain http signs the body's hash even in a presigned URL
    assert verify(raw, headers, b"", method="GET")
    refused(InvalidSignature, raw, headers, b"another body", method="GET")
    later = time.time() + 61
    assert refused(
        InvalidSignature, raw, headers, b"", method="GET", allow_unsigned_payload=True, now=later
    ) == ("Signature expired")
    tampered = raw.replace("x=1", "x=2")
    refused(InvalidSignature, tampered, headers, b"", method="GET", allow_unsigned_payload=True)


def test_presigned_with_unsigned_payload_as_https_clients_sign() -> None:
    raw, headers, _ = signed("/url/hello/", b"", presign=60, method="GET", unsigned_payload=True)
    assert verify(raw, headers, b"any body", method="GET", allow_unsigned_payload=True)
    refused(InvalidSignature, raw, headers, b"any body", method="GET")


def test_session_tokens_reach_the_lookup() -> None:
    seen: list[str | None] = []

    def with_token(sig: sigv4.Signature) -> tuple[str, Any] | None:
        seen.append(sig.session_token)
        return (SECRET, "session") if sig.session_token == "tok" else None

    raw, headers, body = signed(token="tok")
    assert (
        sigv4.verify("POST", raw, headers, body, with_token, region="us-east-1", now=time.time()) == "session"
    )
    assert seen == ["tok"]
    headers["X-Amz-Security-Token"] = "other"  # signed header changed: the lookup refuses first
    with pytest.raises(UnrecognizedClient):
        sigv4.verify("POST", raw, headers, body, with_token, region="us-east-1", now=time.time())


def test_a_remembered_parse_still_checks_each_signature_and_date() -> None:
    raw, headers, body = signed()
    assert verify(raw, headers, body)  # parsed and remembered
    auth = headers["Authorization"]
    head, _, value = auth.rpartition("Signature=")
    headers["Authorization"] = head + "Signature=" + ("0" if value[0] != "0" else "1") + value[1:]
    assert "does not match" in refused(InvalidSignature, raw, headers, body)
    headers["Authorization"] = auth
    headers["X-Amz-Date"] = "20200101T000000Z"  # another date: parsed anew, and checked
    assert refused(InvalidSignature, raw, headers, body).startswith("Date in Credential scope does not match")
    headers["X-Amz-Date"] = "not a date"
    assert "ISO-8601" in refused(IncompleteSignature, raw, headers, body)


def test_the_signature_anywhere_in_the_header_verifies() -> None:
    raw, headers, body = signed()
    algorithm, _, fields = headers["Authorization"].partition(" ")
    credential, signed_names, value = (f.strip() for f in fields.split(","))
    headers["Authorization"] = f"{algorithm} {value}, {credential}, {signed_names}"
    assert verify(raw, headers, body) == {"user": "alice"}
    headers["Authorization"] = f"{algorithm} {value},{credential},{signed_names} "
    assert verify(raw, headers, body) == {"user": "alice"}


def test_remembered_parses_are_bounded() -> None:
    sigv4._PARSED.clear()
    for i in range(sigv4.PARSED_MAX + 5):  # each another key: another parse (kept before the lookup)
        refused(UnrecognizedClient, *signed(key=f"AKID{i}"))
    assert len(sigv4._PARSED) == sigv4.PARSED_MAX
