"""Progressive rollout of an alias in local mode: a canary of a version that fails at INIT rolls back
by itself on the gateway's error counts; a good version completes; both leave the alias's status and
Events (printed by local mode) behind."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.support.local_mode import LocalServer

GOOD = "def handler(event, context):\n    return {tag!r}\n"
BROKEN_INIT = "raise RuntimeError('cannot start')\n\ndef handler(event, context):\n    return 'never'\n"
ROLLOUT = (
    "{type: Canary, percent: 50, intervalSeconds: 4, errorRateThreshold: 0.2, windowSeconds: 30, "
    "minimumInvocations: 3}"
)


def manifest(code: str) -> str:
    body = "\n".join("      " + line for line in code.splitlines())
    return f"""apiVersion: lamina.dev/v1alpha1
kind: Function
metadata: {{name: rf}}
spec:
  handler: index.handler
  publishVersions: true
  aliases:
    live: {{functionVersion: $LATEST.PUBLISHED, rollout: {ROLLOUT}}}
  code:
    inline: |
{body}
"""


def start(tmp: Path, code: str) -> LocalServer:
    path = tmp / "rf.yaml"
    path.write_text(manifest(code))
    return LocalServer([path], tmp / "state").start()


def executed(client) -> tuple[str, bool]:
    response = client.invoke(FunctionName="rf:live", Payload=b"{}")
    return response["ExecutedVersion"], "FunctionError" in response


def aliases_state(tmp: Path) -> dict:
    return json.loads((tmp / "state" / "versions" / "default" / "rf" / "aliases.json").read_text())


def test_canary_failing_at_init_rolls_back_then_a_good_version_completes(tmp_path: Path) -> None:
    server = start(tmp_path, GOOD.format(tag="v1"))
    try:
        assert executed(server.lambda_client()) == ("1", False)
    finally:
        server.stop()

    server = start(tmp_path, BROKEN_INIT)
    try:
        assert "RolloutStarted" in server.output()
        client = server.lambda_client()
        seen = []
        deadline = time.monotonic() + 30
        while "RolloutRolledBack" not in server.output() and time.monotonic() < deadline:
            seen.append(executed(client))
        assert "RolloutRolledBack" in server.output(), server.output()
        assert ("2", True) in seen  # version 2 ran (and failed at INIT) during the canary
        after = [executed(client) for _ in range(20)]
        assert after == [("1", False)] * 20  # back on version 1, for every call
        state = aliases_state(tmp_path)["live"]
        assert state["functionVersion"] == "1" and state["rollout"]["phase"] == "RolledBack"
        assert "failed" in state["rollout"]["message"]
        alias = client.get_alias(FunctionName="rf", Name="live")
        assert alias["FunctionVersion"] == "1" and alias["RoutingConfig"]["AdditionalVersionWeights"] == {}
    finally:
        server.stop()

    server = start(tmp_path, GOOD.format(tag="v3"))
    try:
        client = server.lambda_client()
        seen = set()
        deadline = time.monotonic() + 30
        while "RolloutSucceeded" not in server.output() and time.monotonic() < deadline:
            seen.add(executed(client))
            time.sleep(0.05)
        assert "RolloutSucceeded" in server.output(), server.output()
        assert ("1", False) in seen and ("3", False) in seen  # both served during the canary
        assert {executed(client) for _ in range(10)} == {("3", False)}
        assert aliases_state(tmp_path)["live"]["rollout"]["phase"] == "Succeeded"
    finally:
        server.stop()
