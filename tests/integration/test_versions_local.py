"""Versions and aliases in local mode, across restarts of `lamina local` on one state directory:
publishVersions publishes on change (only on change), `name:N` keeps running what N was, aliases route
by weight, retention collects what nothing names, and boto3 describes all of it."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.support.local_mode import LocalServer

CODE = """
import json, os, pathlib

def handler(event, context):
    result = {{"code": "{tag}", "version": os.environ["AWS_LAMBDA_FUNCTION_VERSION"],
               "arn": context.invoked_function_arn}}
    if "path" in event:
        pathlib.Path(event["path"]).write_text(json.dumps(result))
    return result
"""


def manifest(tag: str, aliases: str = "", retain: int = 10, extra: str = "") -> str:
    body = "\n".join("      " + line for line in CODE.format(tag=tag).strip().splitlines())
    return f"""
apiVersion: lamina.dev/v1alpha1
kind: Function
metadata:
  name: vf
spec:
  handler: index.handler
  publishVersions: true
  retainVersions: {retain}
  aliases: {aliases or "{}"}
  code:
    inline: |
{body}
{extra}"""


class Runs:
    """`lamina local` started again and again on the same state directory, as a user would."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.state = tmp / "state"
        self.server: LocalServer | None = None

    def start(self, text: str) -> LocalServer:
        self.stop()
        path = self.tmp / "vf.yaml"
        path.write_text(text)
        self.server = LocalServer(
            [path], self.state, extra_args=["--async-retry-base-seconds", "0.2"]
        ).start()
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture
def runs(tmp_path: Path):
    r = Runs(tmp_path)
    yield r
    r.stop()


def call(client, name: str, payload: dict | None = None, **kw) -> tuple[dict, str]:
    response = client.invoke(FunctionName=name, Payload=json.dumps(payload or {}), **kw)
    assert "FunctionError" not in response, response["Payload"].read()
    return json.loads(response["Payload"].read()), response["ExecutedVersion"]


def test_versions_survive_restarts_and_run_their_own_snapshot(runs: Runs) -> None:
    server = runs.start(manifest("one", "{live: {functionVersion: $LATEST.PUBLISHED}}"))
    assert "published vf version 1" in server.output()
    client = server.lambda_client()
    body, executed = call(client, "vf:1")
    assert (body["code"], body["version"], executed) == ("one", "1", "1")

    server = runs.start(manifest("two", "{live: {functionVersion: $LATEST.PUBLISHED}}"))
    assert "published vf version 2" in server.output()
    client = server.lambda_client()
    assert call(client, "vf:1")[0]["code"] == "one"  # exactly that snapshot, after $LATEST changed
    assert call(client, "vf", Qualifier="2")[0]["code"] == "two"
    body, executed = call(client, "vf")
    assert (body["code"], body["version"], executed) == ("two", "$LATEST", "$LATEST")
    body, executed = call(client, "vf:live")
    assert (body["code"], executed) == ("two", "2")
    assert body["arn"].endswith(":function:vf:live")  # the ARN the caller used
    arn = "arn:aws:lambda:us-east-1:000000000000:function:vf:1"
    assert call(client, arn)[1] == "1"

    versions = client.list_versions_by_function(FunctionName="vf")["Versions"]
    assert [v["Version"] for v in versions] == ["$LATEST", "1", "2"]
    assert versions[1]["FunctionArn"].endswith(":function:vf:1")
    config = client.get_function(FunctionName="vf", Qualifier="1")["Configuration"]
    assert config["Version"] == "1" and config["CodeSha256"] != versions[2]["CodeSha256"]
    assert client.get_function(FunctionName="vf", Qualifier="live")["Configuration"]["Version"] == "2"
    alias = client.get_alias(FunctionName="vf", Name="live")
    assert alias["FunctionVersion"] == "2" and alias["AliasArn"].endswith(":function:vf:live")
    assert [a["Name"] for a in client.list_aliases(FunctionName="vf")["Aliases"]] == ["live"]

    server = runs.start(manifest("two", "{live: {functionVersion: $LATEST.PUBLISHED}}"))
    assert "published" not in server.output()  # nothing changed: no version 3
    assert [
        v["Version"] for v in server.lambda_client().list_versions_by_function(FunctionName="vf")["Versions"]
    ] == [
        "$LATEST",
        "1",
        "2",
    ]


def test_unknown_qualifier_and_alias_are_resource_not_found(runs: Runs) -> None:
    client = runs.start(manifest("one", "{live: {functionVersion: '1'}}")).lambda_client()
    for kwargs in ({"FunctionName": "vf:7"}, {"FunctionName": "vf", "Qualifier": "nope"}):
        with pytest.raises(ClientError) as err:
            client.invoke(Payload=b"{}", **kwargs)
        assert err.value.response["Error"]["Code"] == "ResourceNotFoundException"
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as err:
        client.get_alias(FunctionName="vf", Name="nope")
    assert err.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_alias_naming_a_missing_version_is_refused_with_the_field(runs: Runs) -> None:
    runs.start(manifest("one"))
    runs.stop()
    bad = LocalServer([runs.tmp / "vf.yaml"], runs.state)
    (runs.tmp / "vf.yaml").write_text(manifest("one", "{prod: {functionVersion: '9'}}"))
    with pytest.raises(RuntimeError) as err:
        bad.start()
    assert "Function vf: spec.aliases.prod.functionVersion: version 9 does not exist (published: 1)" in str(
        err.value
    )


def test_weighted_alias_splits_traffic_and_events_run_the_alias(runs: Runs, tmp_path: Path) -> None:
    runs.start(manifest("one"))
    weighted = "{canary: {functionVersion: '1', additionalVersionWeights: {'2': 0.3}}}"
    client = runs.start(manifest("two", weighted)).lambda_client()
    seen = Counter(call(client, "vf:canary")[1] for _ in range(400))
    assert set(seen) == {"1", "2"}
    assert 0.2 < seen["2"] / 400 < 0.4, seen  # 0.3 +- 4.4 standard deviations
    assert client.get_alias(FunctionName="vf", Name="canary")["RoutingConfig"] == {
        "AdditionalVersionWeights": {"2": 0.3}
    }
    out = tmp_path / "event.json"
    response = client.invoke(
        FunctionName="vf", Qualifier="1", InvocationType="Event", Payload=json.dumps({"path": str(out)})
    )
    assert response["StatusCode"] == 202
    deadline = time.monotonic() + 30
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert json.loads(out.read_text())["version"] == "1"


def test_retention_keeps_aliased_versions_and_collects_the_rest(runs: Runs) -> None:
    for tag in ("one", "two", "three"):
        runs.start(manifest(tag, "{old: {functionVersion: '1'}}", retain=1))
    client = runs.server.lambda_client()
    versions = [v["Version"] for v in client.list_versions_by_function(FunctionName="vf")["Versions"]]
    assert versions == ["$LATEST", "1", "3"]  # 1 is named by an alias, 3 is the newest; 2 is gone
    client = runs.start(manifest("four", "{old: {functionVersion: '4'}}", retain=1)).lambda_client()
    versions = [v["Version"] for v in client.list_versions_by_function(FunctionName="vf")["Versions"]]
    assert versions == ["$LATEST", "4"]  # numbers are never reused
    with pytest.raises(ClientError):
        client.invoke(FunctionName="vf:1", Payload=b"{}")


def test_mapping_targets_an_alias(runs: Runs, tmp_path: Path) -> None:
    out = tmp_path / "tick.json"
    schedule = f"""---
apiVersion: lamina.dev/v1alpha1
kind: EventSourceMapping
metadata:
  name: tick
spec:
  functionName: vf:live
  source:
    schedule:
      expression: rate(1 minute)
      input: {{"path": "{out}"}}
"""
    runs.start(manifest("one"))
    runs.start(manifest("two", "{live: {functionVersion: '1'}}", extra=schedule))
    deadline = time.monotonic() + 90
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    result = json.loads(out.read_text())
    assert (result["code"], result["version"]) == ("one", "1")
