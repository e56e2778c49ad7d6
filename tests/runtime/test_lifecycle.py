"""Environment lifecycle: one invocation at a time, timeouts, crashes, restarts, layers."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from lamina_runtime.host import WorkerBusy
from lamina_runtime.process import WorkerProcess

from .conftest import call

BLOCKING = """
import os, time
def handler(event, context):
    open(event["entered"], "w").close()
    while not os.path.exists(event["release"]):
        time.sleep(0.01)
    return "released"
"""


async def _wait_for_file(path: Path) -> None:
    for _ in range(3000):
        if path.exists():  # noqa: ASYNC240 - a stat per 10 ms poll is fine in a test
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} never appeared")


def _running(pid: int) -> bool:
    """True while `pid` runs; a killed process waiting for its (re)parent to reap it counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def _wait_gone(pid: int) -> None:
    for _ in range(500):
        if not _running(pid):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"process {pid} still running")


async def test_one_invocation_at_a_time(write_code, make_worker, tmp_path):
    worker = make_worker(write_code(BLOCKING), timeout_s=60)
    event = {"entered": str(tmp_path / "entered"), "release": str(tmp_path / "release")}
    first = asyncio.create_task(call(worker, event))
    await _wait_for_file(tmp_path / "entered")
    assert worker.busy
    with pytest.raises(WorkerBusy):
        await call(worker, {})
    (tmp_path / "release").write_text("")
    _, out = await first
    assert out == "released" and not worker.busy


async def test_timeout_kills_and_next_invoke_is_cold(write_code, make_worker, tmp_path):
    code = write_code(
        """
        import os, subprocess, time
        def handler(event, context):
            if event.get("hang"):
                child = subprocess.Popen(["sleep", "600"])
                open(event["child_pid"], "w").write(str(child.pid))
                time.sleep(600)
            return os.getpid()
        """
    )
    worker = make_worker(code, timeout_s=1)
    _, first_pid = await call(worker, {})
    pid_file = str(tmp_path / "child_pid")
    result, body = await call(worker, {"hang": True, "child_pid": pid_file})
    rid = result.request_id
    assert result.function_error == "Unhandled"
    assert result.error_type == "Sandbox.Timedout"
    assert body == {
        "errorType": "Sandbox.Timedout",
        "errorMessage": f"RequestId: {rid} Error: Task timed out after 1.00 seconds",
    }
    lines = result.log.splitlines()
    assert lines[0] == f"START RequestId: {rid} Version: $LATEST"
    assert lines[1].endswith(f" {rid} Task timed out after 1.00 seconds")
    assert lines[2] == f"END RequestId: {rid}"
    assert lines[3].startswith(f"REPORT RequestId: {rid}\tDuration: 1000.00 ms") and lines[3].endswith(
        "\tStatus: timeout"
    )
    assert worker.needs_restart and not worker.alive
    child_pid = int(Path(pid_file).read_text())  # noqa: ASYNC240
    await _wait_gone(child_pid)  # the handler's own child went with it (process group kill)
    after, new_pid = await call(worker, {})
    assert after.function_error is None
    assert new_pid != first_pid
    assert after.init_duration_ms is not None  # a fresh INIT: a cold start


async def test_timeout_log_keeps_what_the_handler_printed(write_code, make_worker):
    code = write_code(
        """
        import time
        def handler(event, context):
            print("step 1 done")
            print("waiting on the slow thing")
            time.sleep(600)
        """
    )
    worker = make_worker(code, timeout_s=1)
    result, _ = await call(worker, {})
    rid = result.request_id
    lines = result.log.splitlines()
    start = lines.index(f"START RequestId: {rid} Version: $LATEST")
    assert lines[start + 1 : start + 3] == ["step 1 done", "waiting on the slow thing"]
    assert lines[start + 3].endswith(f" {rid} Task timed out after 1.00 seconds")
    assert lines[start + 4] == f"END RequestId: {rid}"
    assert lines[start + 5].startswith(f"REPORT RequestId: {rid}") and lines[start + 5].endswith("timeout")
    assert len(lines) == start + 6
    assert not worker.alive


async def test_timeout_in_native_code_still_reports_without_the_partial_log(write_code, make_worker):
    code = write_code(
        """
        import signal, time
        def handler(event, context):
            print("about to block")
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})  # as if stuck where no signal lands
            time.sleep(600)
        """
    )
    worker = make_worker(code, timeout_s=1)
    result, body = await call(worker, {})
    rid = result.request_id
    assert body["errorType"] == "Sandbox.Timedout"
    lines = result.log.splitlines()
    start = lines.index(f"START RequestId: {rid} Version: $LATEST")
    assert lines[start + 1].endswith(f" {rid} Task timed out after 1.00 seconds")
    assert lines[start + 2] == f"END RequestId: {rid}"


@pytest.mark.parametrize(
    ("crash", "expected"),
    [
        ("os._exit(3)", "exit status 3"),
        ("os.kill(os.getpid(), signal.SIGSEGV)", "signal: segmentation fault"),
    ],
)
async def test_crash_is_exit_error_then_recovers(write_code, make_worker, crash, expected):
    code = write_code(
        f"""
        import os, signal
        def handler(event, context):
            if event.get("crash"):
                {crash}
            return os.getpid()
        """
    )
    worker = make_worker(code)
    _, pid = await call(worker, {})
    result, body = await call(worker, {"crash": True})
    rid = result.request_id
    assert result.function_error == "Unhandled"
    assert body == {
        "errorType": "Runtime.ExitError",
        "errorMessage": f"RequestId: {rid} Error: Runtime exited with error: {expected}",
    }
    assert f"RequestId: {rid} Error: Runtime exited with error: {expected}\nRuntime.ExitError\n" in result.log
    assert "\tStatus: error" in result.log
    again, new_pid = await call(worker, {})
    assert again.function_error is None and new_pid != pid


async def test_sys_exit_in_init_is_reported(write_code, make_worker):
    worker = make_worker(write_code("import sys\nsys.exit(7)\n"))
    _, body = await call(worker)
    assert body["errorType"] == "Runtime.ExitError"
    assert body["errorMessage"].endswith("Runtime exited with error: exit status 7")


async def test_start_reports_init_and_stop_ends_process(write_code, make_worker):
    worker: WorkerProcess = make_worker(write_code("import time\ndef handler(e, c):\n    return 1\n"))
    assert worker.needs_restart and worker.pid is None
    init_ms = await worker.start()
    assert init_ms > 0 and worker.init_duration_ms == init_ms
    pid = worker.pid
    assert worker.alive and not worker.needs_restart
    await worker.stop()
    assert not worker.alive
    assert not _running(pid)


async def test_later_layer_overrides_earlier(write_code, make_worker, tmp_path):
    code = write_code(
        "import shared, only_first\ndef handler(e, c):\n    return [shared.VALUE, only_first.VALUE]\n"
    )
    first = tmp_path / "layer1" / "python"
    second = (
        tmp_path
        / "layer2"
        / "python"
        / "lib"
        / f"python{os.sys.version_info[0]}.{os.sys.version_info[1]}"
        / "site-packages"
    )
    first.mkdir(parents=True)
    second.mkdir(parents=True)
    (first / "shared.py").write_text("VALUE = 'first'\n")
    (first / "only_first.py").write_text("VALUE = 'from layer1'\n")
    (second / "shared.py").write_text("VALUE = 'second'\n")
    worker = make_worker(code, layers=[str(tmp_path / "layer1"), str(tmp_path / "layer2")])
    _, out = await call(worker)
    assert out == ["second", "from layer1"]
    reverse = make_worker(code, layers=[str(tmp_path / "layer2"), str(tmp_path / "layer1")])
    _, out = await call(reverse)
    assert out == ["first", "from layer1"]


async def test_layer_without_python_dir_and_code_wins(write_code, make_worker, tmp_path):
    code = write_code("import shared\ndef handler(e, c):\n    return shared.VALUE\n")
    layer = tmp_path / "flat"
    layer.mkdir()
    (layer / "shared.py").write_text("VALUE = 'flat layer'\n")
    worker = make_worker(code, layers=[str(layer)])
    _, out = await call(worker)
    assert out == "flat layer"
    write_code("VALUE = 'task root'\n", name="shared.py")
    shadow = make_worker(code, layers=[str(layer)])
    _, out = await call(shadow)
    assert out == "task root"  # the function's own code comes before any layer, as in Lambda


async def test_last_used_and_invocations(write_code, make_worker):
    worker = make_worker(write_code("def handler(e, c):\n    return 1\n"))
    before = worker.last_used
    await call(worker)
    assert worker.invocations == 1 and worker.last_used > before


def test_signal_name_format():
    from lamina_runtime.host import exit_description

    assert exit_description(2) == "exit status 2"
    assert exit_description(-signal.SIGKILL) == "signal: killed"
