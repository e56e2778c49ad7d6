"""A function that outgrows its memory size fails as on Lambda: Runtime.OutOfMemory, new environment."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

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


@pytest.fixture
def memory_cgroup() -> Iterator[Callable[[int, int], Path]]:
    """memory_cgroup(pid, limit_mb): a memory cgroup of its own for ``pid``, limited as a pod's
    container is; its OOM counter file is returned. Removed after the test."""
    made: list[Path] = []

    def move(pid: int, limit_mb: int) -> Path:
        name = f"lamina-test-{uuid.uuid4().hex[:8]}"
        v2, v1 = Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/memory")
        if (v2 / "cgroup.controllers").exists() and "memory" in (v2 / "cgroup.subtree_control").read_text():
            group, limits, counter = (
                v2 / name,
                {"memory.max": limit_mb << 20, "memory.swap.max": 0},
                "memory.events",
            )
        elif (v1 / "memory.oom_control").exists():
            group, limits, counter = (
                v1 / name,
                {"memory.limit_in_bytes": limit_mb << 20},
                "memory.oom_control",
            )
        else:
            pytest.skip("no memory cgroup controller on this machine")
        try:
            group.mkdir()
        except PermissionError:
            pytest.skip("memory cgroups are not writable here (not root)")
        made.append(group)
        for file, value in limits.items():
            if (group / file).exists():
                (group / file).write_text(str(value))
        (group / "cgroup.procs").write_text(str(pid))
        return group / counter

    yield move
    for group in made:
        for _ in range(50):  # the killed process leaves the group when it is reaped
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


async def test_the_kernel_oom_killer_getting_there_first_is_still_out_of_memory(
    write_code, make_worker, monkeypatch, memory_cgroup
):
    """An allocation past the container's limit within one memory check: the kernel kills the
    worker, and the answer is Lambda's Runtime.OutOfMemory, not a bare exit."""
    monkeypatch.setattr(host, "MEMORY_POLL_S", 60.0)  # only the kernel can catch it
    worker = make_worker(write_code(GROWING), memory_mb=128, timeout_s=30)
    await worker.start()
    counter = memory_cgroup(worker.pid, 128 + 64)
    monkeypatch.setattr(host, "OOM_KILL_COUNTERS", (str(counter),))
    worker._oom_kills = host.oom_kill_count()  # the baseline of the group it was moved into
    first = worker.pid
    result, body = await call(worker, {"spike": 600})
    rid = result.request_id
    assert body == {
        "errorType": "Runtime.OutOfMemory",
        "errorMessage": f"RequestId: {rid} Error: Runtime exited with error: signal: killed",
    }
    assert host.oom_kill_count() >= 1
    assert result.max_memory_mb == 128  # Lambda reports the memory size for an OOM kill
    assert result.log.splitlines()[-1].endswith("Status: error\tError Type: Runtime.OutOfMemory")
    after, out = await call(worker, {"spike": 1})
    assert after.function_error is None and out == "survived" and worker.pid != first


async def test_a_sigkill_that_is_not_the_oom_killer_stays_an_exit_error(write_code, make_worker):
    worker = make_worker(
        write_code("import os, signal\ndef handler(e, c):\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    )
    _, body = await call(worker, {})
    assert body["errorType"] == "Runtime.ExitError"
    assert body["errorMessage"].endswith("Runtime exited with error: signal: killed")
