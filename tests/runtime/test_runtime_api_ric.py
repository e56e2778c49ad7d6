"""AWS's own Python runtime interface client (`awslambdaric`, from PyPI) as a custom runtime's bootstrap.

The strongest check that the Runtime API speaks the real protocol: the client that Lambda's container
images use, unmodified, drives the invocations.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

from lamina_runtime.factory import environment_for

from .conftest import call

APP = """
import os
INITS = []
INITS.append(os.getpid())
print("module loaded")

def handler(event, context):
    print("handling", event["n"])
    if event.get("fail"):
        raise ValueError(f"bad input {event['n']}")
    return {
        "n": event["n"],
        "request_id": context.aws_request_id,
        "function_name": context.function_name,
        "memory": context.memory_limit_in_mb,
        "remaining_ok": 0 < context.get_remaining_time_in_millis() <= 5000,
        "inits": len(INITS),
        "pid": os.getpid(),
    }
"""


def ric_function(tmp_path: Path) -> str:
    code = tmp_path / "code"
    code.mkdir()
    (code / "app.py").write_text(textwrap.dedent(APP))
    # As in AWS's Python base image: the bootstrap hands over to the client with the handler name.
    (code / "bootstrap").write_text(f'#!/bin/sh\nexec {sys.executable} -m awslambdaric "$_HANDLER"\n')
    return str(code)


async def test_the_official_runtime_interface_client_runs_invocations(tmp_path: Path) -> None:
    env = environment_for(
        "provided.al2023", "app.handler", ric_function(tmp_path), function_name="ric", timeout_s=5
    )
    try:
        first, body = await call(env, {"n": 1})
        assert first.function_error is None
        assert body["n"] == 1 and body["request_id"] == first.request_id
        assert body["function_name"] == "ric" and body["memory"] == "128" and body["remaining_ok"]
        assert first.init_duration_ms is not None  # cold
        assert "module loaded" in first.log and "handling 1" in first.log
        assert first.log.splitlines()[-1].startswith(f"REPORT RequestId: {first.request_id}")

        failed, error = await call(env, {"n": 2, "fail": True})
        assert failed.function_error == "Unhandled" and failed.error_type == "ValueError"
        assert error["errorType"] == "ValueError" and error["errorMessage"] == "bad input 2"
        assert any("app.py" in line for line in error["stackTrace"])

        again, body3 = await call(env, {"n": 3})
        assert again.function_error is None and again.init_duration_ms is None  # warm
        assert body3["inits"] == 1 and body3["pid"] == body["pid"]  # INIT ran once
        assert json.loads(again.payload)["n"] == 3
    finally:
        await env.stop()
