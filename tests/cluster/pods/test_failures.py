"""Environments that cannot start on a real node: the Function's status names why (Ready=False), and
an invoke fails at once with Lambda's error instead of hanging until a timeout."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import yaml
from botocore.exceptions import ClientError

from tests.cluster.pods.conftest import FileServer, Lamina, function_yaml, unique, wait_for
from tests.support.archives import make_zip

#: Well under the gateway's cold-start limit (120 s): an answer within it is not a hang.
PROMPT = 60


def not_ready_because(lamina: Lamina, name: str, *reasons: str) -> dict[str, Any] | None:
    cond = lamina.condition("functions", name)
    if cond and cond.get("status") == "False" and cond.get("reason") in reasons:
        return cond
    return None


def invoke_error(lamina: Lamina, name: str) -> dict[str, Any]:
    """The error of an invoke that must fail; a read timeout (a hang) fails the test."""
    with pytest.raises(ClientError) as failed:
        lamina.lambda_client(read_timeout=PROMPT).invoke(FunctionName=name, Payload=b"{}")
    return failed.value.response


def test_a_missing_image_is_in_the_status_and_the_invoke_error(lamina: Lamina) -> None:
    """python3.13 has no image on the node (the tier builds python3.12 only): ErrImageNeverPull."""
    name = unique("noimage")
    code = "def handler(e, c):\n    return 1\n"
    lamina.apply(function_yaml(name, code, runtime="python3.13", provisionedConcurrency=1))
    cond = wait_for(
        lambda: not_ready_because(lamina, name, "ErrImageNeverPull"),
        120,
        f"{name} Ready=False for its missing image",
    )
    assert "python3.13" in cond["message"], cond
    error = invoke_error(lamina, name)
    assert error["Error"]["Code"] == "ResourceNotReadyException", error
    assert "ErrImageNeverPull" in error["Error"]["Message"], error


def test_a_pod_failing_at_start_is_in_the_status_and_the_invoke_error(
    lamina: Lamina, file_server: FileServer
) -> None:
    """url code whose digest does not match: the fetching init container exits non-zero, again and
    again, and the environment never starts."""
    name = unique("badzip")
    url = file_server.put(f"{name}.zip", make_zip({"index.py": "def handler(e, c):\n    return 1\n"}))
    wrong = hashlib.sha256(b"something else").hexdigest()
    lamina.apply(
        yaml.safe_dump(
            {
                "apiVersion": "lamina.dev/v1alpha1",
                "kind": "Function",
                "metadata": {"name": name},
                "spec": {
                    "handler": "index.handler",
                    "provisionedConcurrency": 1,
                    "code": {"url": url, "sha256": wrong},
                },
            }
        )
    )
    cond = wait_for(
        lambda: not_ready_because(lamina, name, "InitContainerFailed", "CrashLoopBackOff"),
        180,
        f"{name} Ready=False for its failing init container",
    )
    assert "fetch-code" in cond["message"], cond
    error = invoke_error(lamina, name)
    assert error["Error"]["Code"] == "ResourceNotReadyException", error


def test_a_crash_during_init_answers_at_once_with_lambdas_error(lamina: Lamina) -> None:
    """As on Lambda: INIT that exits is Runtime.ExitError for the invocation, every time, at once."""
    name = unique("initexit")
    code = "import os\nos._exit(3)  # dies during INIT\ndef handler(e, c):\n    return 1\n"
    lamina.apply(function_yaml(name, code, provisionedConcurrency=0))
    lamina.wait_ready(name)
    for _ in range(2):
        r, body = lamina.invoke(name, {}, read_timeout=PROMPT + 90)  # a cold start, then a warm pod
        assert r["FunctionError"] == "Unhandled", body
        assert body["errorType"] == "Runtime.ExitError", body


def test_a_provisioned_environment_whose_init_fails_is_not_ready(lamina: Lamina) -> None:
    """Lambda fails a provisioned environment whose INIT fails instead of serving with it: the pod
    is not Ready, the Function's status names the function's error, and an invoke fails at once with
    it (ResourceNotReadyException) instead of waiting for an environment that cannot come."""
    name = unique("provfail")
    code = "raise RuntimeError('no config')\ndef handler(e, c):\n    return 1\n"
    lamina.apply(function_yaml(name, code, provisionedConcurrency=1))
    cond = wait_for(
        lambda: not_ready_because(lamina, name, "FunctionInitFailed"),
        180,
        f"{name} Ready=False for its failed INIT",
    )
    assert "RuntimeError: no config" in cond["message"], cond
    pods = lamina.pods(name)
    assert pods and not any(c.ready for p in pods for c in p.status.container_statuses or [])
    error = invoke_error(lamina, name)
    assert error["Error"]["Code"] == "ResourceNotReadyException", error
    assert "no config" in error["Error"]["Message"], error
