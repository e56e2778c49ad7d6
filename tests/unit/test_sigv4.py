"""lamina_runtime.sigv4 signs exactly as botocore does (same request, same instant, same signature)."""

from __future__ import annotations

import datetime
import hashlib
import hmac
from unittest import mock

import pytest
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from lamina_runtime.sigv4 import Credentials, SigningKey, SigningKeys, sha256_hex, sign, signing_key

NOW = datetime.datetime(2026, 11, 27, 12, 30, 5, tzinfo=datetime.UTC)


def botocore_authorization(auth_cls, method: str, url: str, body: bytes, headers: dict, token=None) -> str:
    creds = BotoCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
    service = "s3" if auth_cls is S3SigV4Auth else "lambda"
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        auth_cls(creds, service, "eu-west-1").add_auth(request)
    return request.headers["Authorization"]


@pytest.mark.parametrize("token", [None, "session-token"])
def test_s3_get_with_version_id_matches_botocore(token) -> None:
    url = "http://127.0.0.1:7070/my-bucket/code/app%20v2.zip?versionId=3%2Fabc&x-id=GetObject"
    empty = hashlib.sha256(b"").hexdigest()
    ours = sign(
        "GET",
        url,
        Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token),
        region="eu-west-1",
        service="s3",
        payload_sha256=empty,
        now=NOW,
    )
    theirs = botocore_authorization(
        S3SigV4Auth,
        "GET",
        url,
        b"",
        {"X-Amz-Content-Sha256": empty, **({"X-Amz-Security-Token": token} if token else {})},
        token,
    )
    assert ours["Authorization"] == theirs


def test_lambda_invoke_with_qualified_name_matches_botocore() -> None:
    url = "http://127.0.0.1:9000/2015-03-31/functions/orders%3Aprod/invocations?Qualifier=prod"
    body = b'{"a": 1}'
    digest = hashlib.sha256(body).hexdigest()
    ours = sign(
        "POST",
        url,
        Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
        region="eu-west-1",
        service="lambda",
        headers={"X-Amz-Invocation-Type": "RequestResponse"},
        payload_sha256=digest,
        now=NOW,
    )
    theirs = botocore_authorization(
        SigV4Auth,
        "POST",
        url,
        body,
        {"X-Amz-Invocation-Type": "RequestResponse", "X-Amz-Content-Sha256": digest},
    )
    assert ours["Authorization"] == theirs


def test_credentials_never_print_the_secret() -> None:
    text = repr(Credentials("AKIDEXAMPLE", "very-secret", "tok"))
    assert "very-secret" not in text and "tok" not in text


def test_query_pairs_sort_as_encoded_as_botocore_sorts_them() -> None:
    # "a/" encodes to "a%2F", which sorts before "a-" once encoded (but after it decoded).
    url = "http://127.0.0.1:7070/my-bucket/k?b=1&a-=3&a%2F=2"
    empty = hashlib.sha256(b"").hexdigest()
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    ours = sign("GET", url, creds, region="eu-west-1", service="s3", payload_sha256=empty, now=NOW)
    theirs = botocore_authorization(S3SigV4Auth, "GET", url, b"", {"X-Amz-Content-Sha256": empty})
    assert ours["Authorization"] == theirs


def test_the_signing_key_is_derived_once_a_day_and_bounded() -> None:
    keys = SigningKeys(size=2)
    first = keys.get("secret", "20261130", "us-east-1", "lambda")
    assert keys.get("secret", "20261130", "us-east-1", "lambda") is first
    assert first.key == signing_key("secret", "20261130", "us-east-1", "lambda")
    assert keys.get("secret", "20261201", "us-east-1", "lambda").key != first.key
    keys.get("other", "20261201", "us-east-1", "lambda")
    assert len(keys._keys) == 2  # the oldest went first
    assert ("secret", "20261130", "us-east-1", "lambda") not in keys._keys


@pytest.mark.parametrize("key", [b"", b"k" * 32, b"k" * 64, b"long key " * 20])
def test_a_signing_key_signs_as_hmac_sha256(key: bytes) -> None:
    for message in ("", "AWS4-HMAC-SHA256\n20261130T000000Z\nscope\n" + "a" * 64, "é" * 300):
        assert SigningKey(key).sign(message) == hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def test_sha256_hex_is_sha256() -> None:
    for data in (b"", b"{}", bytes(range(256)) * 1000):
        assert sha256_hex(data) == hashlib.sha256(data).hexdigest()
