"""`lamina local --auth`: boto3 with real SigV4 signatures against local mode (issue 9, item 1)."""

from __future__ import annotations

import datetime
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.support.local_mode import LocalServer

HERE = Path(__file__).parent
FULL_KEY, FULL_SECRET = "AKIDLOCALFULLACCESS1", "full-access-secret-of-the-environment"
LIMITED_KEY, LIMITED_SECRET = "AKIDLOCALLIMITED0001", "limited-secret"
KEYS = f"""
keys:
  - accessKeyId: {LIMITED_KEY}
    secretAccessKey: {LIMITED_SECRET}
    name: ci
    functions: [witness]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    state = tmp_path_factory.mktemp("auth")
    keys = state.parent / "keys.yaml"
    keys.write_text(KEYS)
    served = LocalServer(
        [HERE / "hardening"],
        state,
        extra_args=["--auth", "--keys-file", str(keys)],
        env={"AWS_ACCESS_KEY_ID": FULL_KEY, "AWS_SECRET_ACCESS_KEY": FULL_SECRET, "AWS_REGION": "us-east-1"},
    ).start()
    yield served
    served.stop()


def invoke(client, name: str = "witness") -> dict:
    return json.loads(client.invoke(FunctionName=name, Payload=b'{"k": 1}')["Payload"].read())


def refused(client, name: str = "witness") -> tuple[str, int, str]:
    with pytest.raises(ClientError) as info:
        client.invoke(FunctionName=name, Payload=b"{}")
    error = info.value.response
    return error["Error"]["Code"], error["ResponseMetadata"]["HTTPStatusCode"], error["Error"]["Message"]


def test_the_banner_says_whether_auth_is_on(server: LocalServer, tmp_path: Path) -> None:
    assert f"auth: SigV4 in us-east-1, keys: {FULL_KEY} from the environment" in server.output()
    plain = LocalServer([HERE / "hardening"], tmp_path / "state").start()
    try:
        line = [x for x in plain.output().splitlines() if "auth:" in x]
        assert line == [
            "  auth: off: anyone who reaches this port may call every function (--auth to require SigV4)"
        ]
    finally:
        plain.stop()


def test_the_environment_key_may_call_everything(server: LocalServer) -> None:
    client = server.lambda_client(key=FULL_KEY, secret=FULL_SECRET)
    assert invoke(client)["event"] == {"k": 1}
    assert client.invoke(FunctionName="responder", Payload=b'{"rawPath": "/pid"}')["StatusCode"] == 200
    assert {f["FunctionName"] for f in client.list_functions()["Functions"]} == {
        "witness",
        "responder",
        "oddly-failing",
        "caller",
    }


def test_a_wrong_secret_is_an_invalid_signature(server: LocalServer) -> None:
    code, status, message = refused(server.lambda_client(key=FULL_KEY, secret="wrong"))
    assert (code, status) == ("InvalidSignatureException", 403)
    assert message.startswith("The request signature we calculated does not match")


def test_an_unknown_key_is_an_unrecognized_client(server: LocalServer) -> None:
    code, status, message = refused(server.lambda_client(key="AKIDNOBODYHASTHIS001", secret="x"))
    assert (code, status, message) == (
        "UnrecognizedClientException",
        403,
        "The security token included in the request is invalid.",
    )


@pytest.mark.parametrize("minutes", [-10, 10])
def test_a_skewed_clock_is_refused(server: LocalServer, minutes: int) -> None:
    skewed = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) + datetime.timedelta(minutes=minutes)
    client = server.lambda_client(key=FULL_KEY, secret=FULL_SECRET)
    with mock.patch("botocore.auth.get_current_datetime", return_value=skewed):
        code, status, message = refused(client)
    assert (code, status) == ("InvalidSignatureException", 403)
    assert message.startswith("Signature expired" if minutes < 0 else "Signature not yet current")


def test_another_region_is_refused(server: LocalServer) -> None:
    code, status, message = refused(
        server.lambda_client(key=FULL_KEY, secret=FULL_SECRET, region="eu-west-1")
    )
    assert (code, status) == ("InvalidSignatureException", 403)
    assert "scoped to a valid region, not 'eu-west-1'" in message


def test_an_unsigned_request_is_refused_before_anything_is_looked_up(server: LocalServer) -> None:
    for name in ("witness", "does-not-exist"):
        request = urllib.request.Request(
            f"{server.url}/2015-03-31/functions/{name}/invocations", data=b"{}", method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=10)
        assert info.value.code == 403
        assert info.value.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
        assert json.loads(info.value.read())["message"] == "Missing Authentication Token"


def test_a_limited_key_reaches_only_its_functions(server: LocalServer) -> None:
    client = server.lambda_client(key=LIMITED_KEY, secret=LIMITED_SECRET)
    assert invoke(client)["event"] == {"k": 1}
    code, status, message = refused(client, "responder")
    assert (code, status) == ("AccessDeniedException", 403)
    assert "User: lamina-local:ci is not authorized to perform: lambda:InvokeFunction" in message
    # A function that does not exist is denied the same: the key learns nothing about it.
    assert refused(client, "does-not-exist")[0] == "AccessDeniedException"
    assert [f["FunctionName"] for f in client.list_functions()["Functions"]] == ["witness"]
    with pytest.raises(ClientError) as info:
        client.get_function(FunctionName="responder")
    assert info.value.response["Error"]["Code"] == "AccessDeniedException"
    assert client.get_function(FunctionName="witness")["Configuration"]["FunctionName"] == "witness"


def signed_trigger(
    server: LocalServer, path: str, *, presign: bool = False, key: str = FULL_KEY, secret: str = FULL_SECRET
):
    url = f"{server.url}{path}"
    request = AWSRequest(method="GET", url=url)
    creds = Credentials(key, secret)
    if presign:
        SigV4QueryAuth(creds, "lambda", "us-east-1", expires=60).add_auth(request)
    else:
        SigV4Auth(creds, "lambda", "us-east-1").add_auth(request)
    prepared = request.prepare()
    return urllib.request.urlopen(
        urllib.request.Request(prepared.url, headers=dict(prepared.headers)), timeout=10
    )


def test_the_http_trigger_needs_a_signature_like_a_function_url_with_aws_iam(server: LocalServer) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{server.url}/url/responder/pid", timeout=10)
    assert info.value.code == 403 and json.loads(info.value.read()) == {"Message": "Forbidden"}
    assert json.loads(signed_trigger(server, "/url/responder/pid").read())["pid"] > 0
    assert json.loads(signed_trigger(server, "/url/responder/pid", presign=True).read())["pid"] > 0
    with pytest.raises(urllib.error.HTTPError) as info:
        signed_trigger(server, "/url/responder/pid", key=LIMITED_KEY, secret=LIMITED_SECRET)
    assert info.value.code == 403


def test_a_function_calls_another_with_the_execution_credentials_in_its_environment(
    server: LocalServer,
) -> None:
    """With --auth a function's boto3 signs with execution credentials lamina local put in its
    environment (as a Lambda signs with its execution role's), and the gateway accepts them; a
    placeholder or a made-up session token would be refused."""
    client = server.lambda_client(key=FULL_KEY, secret=FULL_SECRET)
    body = json.loads(
        client.invoke(FunctionName="caller", Payload=b'{"target": "witness"}')["Payload"].read()
    )
    assert body["body"]["event"] == {"from": "caller"}
    assert body["key"].startswith("ASIA") and body["key"] != FULL_KEY  # not the operator's own key
    forged = server.lambda_client(key=body["key"], secret="guessed", token="lamina1.e30.AAAA")
    assert refused(forged)[0] == "UnrecognizedClientException"
