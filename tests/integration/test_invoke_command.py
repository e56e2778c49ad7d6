"""`lamina invoke` as a user runs it: against `lamina local`'s gateway, and in-process with --local."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.local_mode import REPO, LocalServer


def lamina_invoke(*args: str, stdin: bytes | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lamina.cli", "invoke", *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        cwd=cwd,
    )


def test_payload_from_an_argument_and_the_log_with_tail(local_server: LocalServer) -> None:
    done = lamina_invoke("echo", '{"n": 1}', "--endpoint", local_server.url, "--tail")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["event"] == {"n": 1}
    log = done.stderr.decode()
    assert "START RequestId:" in log and "REPORT RequestId:" in log
    assert "echo got {'n': 1}" in log


def test_payload_from_a_file_and_from_stdin(local_server: LocalServer, tmp_path: Path) -> None:
    event = tmp_path / "event.json"
    event.write_text('{"from": "file"}')
    done = lamina_invoke("echo", "--file", str(event), "--endpoint", local_server.url)
    assert json.loads(done.stdout)["event"] == {"from": "file"}
    assert "START" not in done.stderr.decode()  # no --tail, no log
    done = lamina_invoke("echo", "-", "--endpoint", local_server.url, stdin=b'{"from": "stdin"}')
    assert json.loads(done.stdout)["event"] == {"from": "stdin"}


def test_function_error_exits_1_and_prints_the_error(local_server: LocalServer) -> None:
    done = lamina_invoke("failing", '{"card": "1234"}', "--endpoint", local_server.url)
    assert done.returncode == 1
    assert json.loads(done.stdout)["errorType"] == "PaymentDeclined"
    assert "function error" in done.stderr.decode()


def test_unknown_function_exits_2_with_lambdas_error(local_server: LocalServer) -> None:
    done = lamina_invoke("no-such-function", "--endpoint", local_server.url)
    assert done.returncode == 2
    assert "ResourceNotFoundException" in done.stderr.decode()
    assert done.stdout == b""


def test_unreachable_gateway_exits_2() -> None:
    done = lamina_invoke("echo", "--endpoint", "http://127.0.0.1:9")
    assert done.returncode == 2
    assert "cannot reach" in done.stderr.decode()


def test_local_runs_from_manifests_without_a_server(tmp_path: Path) -> None:
    state = tmp_path / "state"
    hello = REPO / "examples" / "hello.yaml"
    done = lamina_invoke(
        "hello", '{"name": "cli"}', "--local", str(hello), "--state-dir", str(state), "--tail"
    )
    assert done.returncode == 0, done.stderr
    assert "cli" in done.stdout.decode()
    assert "REPORT RequestId:" in done.stderr.decode()
    failing = REPO / "examples" / "failing.yaml"
    done = lamina_invoke("failing", "--local", str(failing), "--state-dir", str(state))
    assert done.returncode == 1
    assert json.loads(done.stdout)["errorType"] == "PaymentDeclined"
