"""The SQS client's own SigV4 signer gives exactly the headers botocore's SigV4Auth gives (it replaced
it for speed: benchmarks/eventsource_throughput.py)."""

from __future__ import annotations

import datetime
from unittest import mock

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from lamina.eventsources.sqs import CONTENT_TYPE, SqsSigner

NOW = datetime.datetime(2026, 11, 30, 8, 5, 7, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("endpoint", "token"),
    [
        ("http://127.0.0.1:9324/", None),
        ("https://sqs.eu-west-1.amazonaws.com/", None),
        ("https://sqs.eu-west-1.amazonaws.com:443/", "session-token"),
        ("http://[::1]:9324/", None),
    ],
)
def test_headers_match_botocores_signature(endpoint: str, token: str | None) -> None:
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    body = b'{"QueueUrl":"http://127.0.0.1:9324/000000000000/q","MaxNumberOfMessages":10}'
    request = AWSRequest(
        method="POST",
        url=endpoint,
        data=body,
        headers={"Content-Type": CONTENT_TYPE, "X-Amz-Target": "AmazonSQS.ReceiveMessage"},
    )
    with mock.patch("botocore.auth.get_current_datetime", return_value=NOW.replace(tzinfo=None)):
        SigV4Auth(credentials, "sqs", "eu-west-1").add_auth(request)
    ours = SqsSigner(credentials, "eu-west-1", endpoint).headers(
        "AmazonSQS.ReceiveMessage", body, now=NOW.timestamp()
    )
    assert ours == dict(request.headers)


def test_the_signing_key_follows_the_day() -> None:
    signer = SqsSigner(Credentials("AK", "SK"), "us-east-1", "http://127.0.0.1:9324/")
    first = signer.headers("AmazonSQS.SendMessage", b"{}", now=NOW.timestamp())
    next_day = signer.headers("AmazonSQS.SendMessage", b"{}", now=NOW.timestamp() + 86_400)
    assert "/20261130/us-east-1/sqs/aws4_request" in first["Authorization"]
    assert "/20261201/us-east-1/sqs/aws4_request" in next_day["Authorization"]
    again = SqsSigner(Credentials("AK", "SK"), "us-east-1", "http://127.0.0.1:9324/")
    assert again.headers("AmazonSQS.SendMessage", b"{}", now=NOW.timestamp() + 86_400) == next_day
