"""A function that outgrows its memory size fails as on Lambda: Runtime.OutOfMemory, new environment."""

from __future__ import annotations

from lamina_runtime import host

from .conftest import call

GROWING = """
import os, time
hoard = []
def handler(event, context):
    print("growing")
    if event.get("spike"):
        block = b"x" * (event["spike"] * 1024 * 1024)  # every page touched; freed before returning
        del block
        return "survived"
    while True:
        hoard.append(bytearray(8 * 1024 * 1024))
        time.sleep(0.02)
"""


async def test_growing_past_memory_size_is_killed_with_out_of_memory(write_code, make_worker):
    worker = make_worker(write_code(GROWING), memory_mb=128, timeout_s=30)
    _, first_pid = await call(worker, {"spike": 1}), worker.pid
    result, body = await call(worker, {})
    rid = result.request_id
    assert result.function_error == "Unhandled"
    assert body == {
        "errorType": "Runtime.OutOfMemory",
        "errorMessage": f"RequestId: {rid} Error: Runtime exited with error: signal: killed",
    }
    assert 128 < result.max_memory_mb < 1024  # stopped on the way up, long before the 30 s timeout
    lines = result.log.splitlines()
    start = lines.index(f"START RequestId: {rid} Version: $LATEST")
    assert lines[start + 1] == "growing"
    assert lines[-1].startswith(f"REPORT RequestId: {rid}") and "\tStatus: error" in lines[-1]
    assert f"RequestId: {rid} Error: Runtime exited with error: signal: killed" in lines
    assert not worker.alive
    after, _ = await call(worker, {"spike": 1})
    assert after.function_error is None and worker.pid != first_pid


async def test_a_spike_between_checks_is_caught_by_the_peak(write_code, make_worker, monkeypatch):
    monkeypatch.setattr(host, "MEMORY_POLL_S", 60.0)  # no check lands inside the spike
    worker = make_worker(write_code(GROWING), memory_mb=128, timeout_s=30)
    ok, out = await call(worker, {"spike": 16})
    assert ok.function_error is None and out == "survived"
    result, body = await call(worker, {"spike": 300})  # returns, but peaked at 300+ MB
    rid = result.request_id
    assert body["errorType"] == "Runtime.OutOfMemory"
    assert result.max_memory_mb > 300
    lines = result.log.splitlines()
    assert lines.count(f"END RequestId: {rid}") == 1  # the worker's own END/REPORT were replaced
    assert lines[-1].startswith(f"REPORT RequestId: {rid}") and lines[-1].endswith(
        "Status: error\tError Type: Runtime.OutOfMemory"
    )
    assert not worker.alive
