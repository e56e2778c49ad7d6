"""The container log: written by the host alone, from the worker's stdout/stderr pipe and its own
platform lines, in Lambda's order, coalesced, and complete on every way an environment ends.

Real worker processes write into a real file (or pipe) through :class:`ContainerLog`. Most tests use a
window far longer than the test (``LATER``): a line that reaches the file then was written because the
path under test flushes at once (a timeout, the memory limit, a crash, a failed INIT, a stop), never
because the window ran out.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lamina_runtime.containerlog import ContainerLog
from lamina_runtime.protocol import InvocationRequest

from .conftest import call
from .test_server import RUNTIME_ROOT

LATER = 3600.0  # a flush window no test waits for

CHATTY = """
import os, subprocess, sys, time
print("init says hi")
def handler(event, context):
    rid = context.aws_request_id
    print("print", rid)
    print("stderr", rid, file=sys.stderr)
    os.write(1, f"fd1 {rid}\\n".encode())
    subprocess.run(["sh", "-c", f"echo subprocess {rid}; echo subprocess-stderr {rid} >&2"], check=True)
    sys.stdout.buffer.write(f"buffer {rid}\\n".encode())
    sys.stdout.buffer.flush()
    if event.get("fail"):
        raise ValueError("nope")
    if event.get("hang"):
        subprocess.Popen(["sh", "-c", f"echo child-before-timeout {rid}"]).wait()
        time.sleep(600)
    if event.get("exit"):
        os._exit(3)
    if event.get("grow"):
        hoard = []
        while True:
            hoard.append(bytearray(8 * 1024 * 1024))
            time.sleep(0.02)
    if event.get("peak"):
        block = b"x" * (event["peak"] * 1024 * 1024)
        del block
    return rid
"""


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


@pytest.fixture
def container(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A file standing for the container's stdout: its path, and an fd open for writing."""
    path = tmp_path / "container.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    yield path, fd
    os.close(fd)


async def _written(path: Path, text: str) -> list[str]:
    """The file's lines once ``text`` is in it (the write runs in a thread: it lands shortly after
    it was started)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30.0
    while text not in path.read_text():  # noqa: ASYNC240
        assert loop.time() < deadline, f"{text!r} never reached the container log:\n{path.read_text()}"  # noqa: ASYNC240
        await asyncio.sleep(0.01)
    return _lines(path)


def _handler_lines(rid: str) -> list[str]:
    """What CHATTY's handler writes, in the order it writes it."""
    return [
        f"print {rid}",
        f"stderr {rid}",
        f"fd1 {rid}",
        f"subprocess {rid}",
        f"subprocess-stderr {rid}",
        f"buffer {rid}",
    ]


def _of(lines: list[str], rid: str) -> list[str]:
    return [line for line in lines if rid in line]


async def test_lambda_order_with_subprocesses_and_raw_fd_writes(write_code, make_worker, container):
    """START, then everything the handler and its subprocesses wrote (stdout, stderr, fd 1, the
    buffer), then END and REPORT; the invocation's log (Tail) is what it was."""
    sink, fd = container
    worker = make_worker(write_code(CHATTY), stdout=fd)
    ok, rid_out = await call(worker)
    failed, _ = await call(worker, {"fail": True})
    await worker.stop()
    lines = _lines(sink)
    assert lines.index("init says hi") < lines.index(f"START RequestId: {ok.request_id} Version: $LATEST")
    rid = ok.request_id
    assert rid_out == rid
    mine = _of(lines, rid)
    assert mine[0] == f"START RequestId: {rid} Version: $LATEST"
    assert mine[1:-2] == _handler_lines(rid)
    assert mine[-2] == f"END RequestId: {rid}"
    assert mine[-1].startswith(f"REPORT RequestId: {rid}\tDuration: ")
    # The handler's own lines that bypass sys.stdout are not in the Tail (as before), the rest is.
    tail = ok.log.splitlines()  # a cold call's: INIT's lines first
    assert "init says hi" in tail[: tail.index(mine[0])] and tail[-2:] == mine[-2:]
    captured = [line for line in tail if line.startswith(("print", "stderr"))]
    assert captured == [f"print {rid}", f"stderr {rid}"]
    frid = failed.request_id
    theirs = lines[lines.index(f"START RequestId: {frid} Version: $LATEST") :]
    assert theirs[1:7] == _handler_lines(frid)
    assert theirs[7] == "[ERROR] ValueError: nope"  # the runtime's error block, before END
    assert theirs.index(f"END RequestId: {frid}") > 7
    assert theirs[-1].startswith(f"REPORT RequestId: {frid}")


async def test_back_to_back_calls_are_coalesced_and_complete(write_code, make_worker, container):
    """Warm calls one after another write nothing until the window ends: then one write carries
    every call's lines, each call's together and in order."""
    sink, fd = container
    log = ContainerLog(fd, flush_after_s=LATER, flush_bytes=1 << 30)
    worker = make_worker(write_code(CHATTY), container_log=log)
    await worker.start()
    await log.flushed()
    writes = log.writes
    assert "init says hi" in sink.read_text()  # INIT's end flushes at once
    ids = [(await call(worker))[0].request_id for _ in range(20)]
    assert log.writes == writes and "START RequestId" not in sink.read_text()  # nothing written yet
    await log.flushed()
    assert log.writes == writes + 1
    await worker.stop()
    lines = _lines(sink)
    for rid in ids:
        mine = _of(lines, rid)
        assert mine[0].startswith("START") and mine[1:-2] == _handler_lines(rid)
        assert mine[-2] == f"END RequestId: {rid}" and mine[-1].startswith(f"REPORT RequestId: {rid}")
    starts = [line for line in lines if line.startswith("START")]
    assert starts == [f"START RequestId: {rid} Version: $LATEST" for rid in ids]


async def test_the_window_writes_on_its_own(write_code, make_worker, container):
    """With nothing forcing it, the buffer is written once the window has passed."""
    sink, fd = container
    log = ContainerLog(fd, flush_after_s=0.05)
    worker = make_worker(write_code(CHATTY), container_log=log)
    result, _ = await call(worker)
    await _written(sink, f"REPORT RequestId: {result.request_id}")
    await worker.stop()


async def test_a_timeout_keeps_everything_written_before_the_kill(write_code, make_worker, container):
    sink, fd = container
    log = ContainerLog(fd, flush_after_s=LATER)
    worker = make_worker(write_code(CHATTY), container_log=log, timeout_s=1.0)
    result, body = await call(worker, {"hang": True})
    rid = result.request_id
    assert body["errorType"] == "Sandbox.Timedout"
    lines = await _written(sink, f"REPORT RequestId: {rid}")  # written at once, not after LATER
    await worker.stop()
    mine = _of(lines, rid)
    assert mine[0] == f"START RequestId: {rid} Version: $LATEST"
    assert mine[1:7] == _handler_lines(rid)
    assert mine[7] == f"child-before-timeout {rid}"
    assert mine[8].endswith(f" {rid} Task timed out after 1.00 seconds")
    assert mine[9] == f"END RequestId: {rid}"
    assert mine[10].startswith(f"REPORT RequestId: {rid}") and mine[10].endswith("Status: timeout")
    assert len(mine) == 11


async def test_memory_past_the_limit_keeps_the_output_and_the_error(write_code, make_worker, container):
    """Killed on the way up (the watcher), and killed after the reply (its peak): both times the
    output is followed by the error and the host's END and REPORT, as in the invocation's log."""
    sink, fd = container
    log = ContainerLog(fd, flush_after_s=LATER)
    worker = make_worker(write_code(CHATTY), container_log=log, memory_mb=128, timeout_s=30)
    grown, body = await call(worker, {"grow": True})
    assert body["errorType"] == "Runtime.OutOfMemory"
    peaked, body = await call(worker, {"peak": 300})
    assert body["errorType"] == "Runtime.OutOfMemory"
    lines = await _written(sink, f"REPORT RequestId: {peaked.request_id}")
    await worker.stop()
    for result in (grown, peaked):
        rid = result.request_id
        mine = _of(lines, rid)
        assert mine[0] == f"START RequestId: {rid} Version: $LATEST"
        assert mine[1:7] == _handler_lines(rid)
        assert mine[7] == f"RequestId: {rid} Error: Runtime exited with error: signal: killed"
        assert mine[8] == f"END RequestId: {rid}"
        assert mine[9].endswith("Status: error\tError Type: Runtime.OutOfMemory")
        assert len(mine) == 10
        assert result.log.endswith(mine[9] + "\n")  # the Tail ends with the same REPORT line
        assert "Runtime.OutOfMemory" in lines[lines.index(mine[7]) + 1]


async def test_a_crash_keeps_its_output_and_the_exit_error(write_code, make_worker, container):
    sink, fd = container
    log = ContainerLog(fd, flush_after_s=LATER)
    worker = make_worker(write_code(CHATTY), container_log=log)
    result, body = await call(worker, {"exit": True})
    rid = result.request_id
    assert body["errorType"] == "Runtime.ExitError"
    lines = await _written(sink, f"REPORT RequestId: {rid}")
    await worker.stop()
    mine = _of(lines, rid)
    assert mine[0].startswith("START") and mine[1:7] == _handler_lines(rid)
    assert mine[7] == f"RequestId: {rid} Error: Runtime exited with error: exit status 3"
    assert mine[8] == f"END RequestId: {rid}"
    assert mine[9].endswith("Status: error\tError Type: Runtime.ExitError")


async def test_a_failed_init_keeps_its_output_then_its_report(write_code, make_worker, container):
    code = write_code(
        """
        import subprocess
        print("importing")
        subprocess.run(["echo", "init subprocess"], check=True)
        raise RuntimeError("no config")
        """
    )
    sink, fd = container
    log = ContainerLog(fd, flush_after_s=LATER)
    worker = make_worker(code, container_log=log)
    await worker.start()
    lines = await _written(sink, "[ERROR] RuntimeError: no config")
    assert lines[0].startswith("INIT_START") and lines[1:3] == ["importing", "init subprocess"]
    result, body = await call(worker)
    assert body["errorType"] == "RuntimeError"
    lines = await _written(sink, f"REPORT RequestId: {result.request_id}")
    await worker.stop()
    report = next(i for i, line in enumerate(lines) if line.startswith("INIT_REPORT"))
    assert lines.index("[ERROR] RuntimeError: no config") < report
    assert lines[report].endswith("Status: error\tError Type: RuntimeError")
    assert lines[report + 1] == f"START RequestId: {result.request_id} Version: $LATEST"
    assert lines[-1].startswith(f"REPORT RequestId: {result.request_id}")


async def test_a_stop_writes_what_is_buffered(write_code, make_worker, container):
    sink, fd = container
    log = ContainerLog(fd, flush_after_s=LATER, flush_bytes=1 << 30)
    worker = make_worker(write_code(CHATTY), container_log=log)
    result, _ = await call(worker)
    assert "END RequestId" not in sink.read_text()
    await worker.stop()  # returns once it is written
    assert _lines(sink)[-1].startswith(f"REPORT RequestId: {result.request_id}")


async def test_json_format_and_system_log_level(write_code, make_worker, container):
    """JSON platform records: the container log's START is the Tail's; with the system log level at
    WARN only the function's own lines are written."""
    code = write_code("def handler(event, context):\n    print('hello', context.aws_request_id)\n")
    sink, fd = container
    env = {"AWS_LAMBDA_LOG_FORMAT": "JSON"}
    log = ContainerLog(fd)
    json_worker = make_worker(code, container_log=log, env=env)
    result, _ = await call(json_worker)
    quiet = make_worker(code, container_log=log, system_log_level="WARN")
    silent, _ = await call(quiet)
    await json_worker.stop()
    await quiet.stop()
    lines = _lines(sink)
    mine = _of(lines, result.request_id)
    assert json.loads(mine[0])["type"] == "platform.start"
    assert mine[0] in result.log.splitlines()  # the same line, its time included
    assert mine[1] == f"hello {result.request_id}"
    assert [json.loads(line)["type"] for line in mine[2:]] == ["platform.runtimeDone", "platform.report"]
    assert _of(lines, silent.request_id) == [f"hello {silent.request_id}"]


async def test_a_log_nobody_reads_holds_the_handler_back_and_loses_nothing(write_code, make_worker):
    """Past PAUSE_BYTES not yet written, the worker's pipe is no longer read: a handler printing
    faster than the container's stdout takes it waits on its own write, and every byte arrives."""
    code = write_code(
        """
        import sys
        def handler(event, context):
            for i in range(40000):
                print(f"line {i:06d} " + "x" * 64)
            return "done"
        """
    )
    read_fd, write_fd = os.pipe()
    log = ContainerLog(write_fd, pause_bytes=256 * 1024)
    worker = make_worker(code, container_log=log, timeout_s=60)
    await worker.start()
    invocation = asyncio.ensure_future(
        worker.invoke(InvocationRequest(request_id=str(uuid.uuid4()), payload=b"{}"))
    )
    await asyncio.sleep(1.0)
    assert not invocation.done()  # ~3 MB to print, and nobody reads the container's stdout yet
    received = bytearray()

    def read_all() -> None:
        while chunk := os.read(read_fd, 1 << 16):
            received.extend(chunk)

    reader = threading.Thread(target=read_all)
    reader.start()
    result = await invocation
    assert json.loads(result.payload) == "done"
    await worker.stop()
    os.close(write_fd)
    await asyncio.to_thread(reader.join)
    os.close(read_fd)
    printed = [line for line in received.decode().splitlines() if line.startswith("line ")]
    assert printed == [f"line {i:06d} " + "x" * 64 for i in range(40000)]
    assert received.decode().splitlines()[-1].startswith(f"REPORT RequestId: {result.request_id}")


async def test_the_pod_server_writes_its_log_on_sigterm(tmp_path, write_code):
    """The pod server (its own stdout): lines of a call answered just before SIGTERM are written
    before it exits."""
    sink = tmp_path / "serve.log"
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(RUNTIME_ROOT),
        "LAMINA_HANDLER": "index.handler",
        "LAMBDA_TASK_ROOT": write_code(CHATTY),
        "AWS_LAMBDA_FUNCTION_NAME": "served",
    }
    fd = os.open(sink, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lamina_runtime", "serve", "--port", "0",
            env=environ, stdout=fd, stderr=subprocess.STDOUT,
        )  # fmt: skip
    finally:
        os.close(fd)
    try:
        lines = await _written(sink, "ready (INIT")
        port = int(next(line for line in lines if "listening on" in line).rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /invoke HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        rid = next(
            line.split(b":", 1)[1].strip().decode()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"lamina-request-id:")
        )
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        writer.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    mine = _of(_lines(sink), rid)
    assert mine[0].startswith("START") and mine[1:-2] == _handler_lines(rid)
    assert mine[-1].startswith(f"REPORT RequestId: {rid}")


@pytest.mark.timeout(20)
async def test_flushed_returns_when_the_write_ended_before_its_callback_ran() -> None:
    """A stop that waits for the log just as the write thread's result arrived (the write's future
    done, its done callback scheduled but not run) must not spin: awaiting a done future does not
    yield to the loop, and a local mode hung at 100 % CPU in a timeout's stop that way."""
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        log = ContainerLog(fd)
        writing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        writing.add_done_callback(lambda _: log._written(0))
        log._writing = writing
        writing.set_result(None)  # done; _written is only scheduled (call_soon)
        await log.flushed()  # in this same step: spun until the timeout before the fix
        assert log._writing is None
    finally:
        os.close(fd)
