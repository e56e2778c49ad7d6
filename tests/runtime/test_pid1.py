"""The pod server as PID 1 of its own PID namespace, where the kernel drops any signal whose action is
the default: its own SIGTERM handler must stop it. (Before that handler is in place, a pod relies on
its spec's shared process namespace, which makes pause PID 1: tests/unit/test_resources_*.)"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

RUNTIME_ROOT = Path(__file__).resolve().parents[2] / "runtime-image"


def _child_of(pid: int, deadline: float) -> int:
    """The process unshare forked (PID 1 inside), once it runs Python's lamina_runtime."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    while time.monotonic() < deadline:
        for child in children.read_text().split():
            try:
                if b"lamina_runtime" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return int(child)
            except FileNotFoundError:
                continue
    pytest.fail("unshare's child never ran lamina_runtime")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare")
def test_a_sigterm_to_a_listening_server_stops_it(tmp_path: Path) -> None:
    command = ["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-S", "-m", "lamina_runtime"]
    command += ["serve", "--pool", "--host", "127.0.0.1", "--port", "0"]
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(RUNTIME_ROOT)}
    env["LAMINA_POOL_TASK_ROOT"] = str(tmp_path)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # the server's handler is in place once it listens
            lines.append(line)
            if b"listening on" in line:
                break
        else:
            pytest.fail(b"".join(lines).decode(errors="replace"))
        os.kill(_child_of(proc.pid, time.monotonic() + 30), signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("a listening server ignored SIGTERM")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
