"""kill_group: an environment's leftovers die; a group that only has a recycled id is never touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lamina_runtime.host import kill_group


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_orphans_of_a_reaped_leader_are_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "child"
    # The leader starts a long-lived child in its group, then exits; the child is orphaned.
    script = (
        "import subprocess; p = subprocess.Popen(['sleep', '600']); "
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))"
    )
    leader = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    leader.wait(10)  # reaped: its id is free unless the orphan still holds it as a group id
    child = int(pid_file.read_text())
    assert alive(child) and os.getpgid(child) == leader.pid
    kill_group(leader.pid, signal.SIGKILL, leader_reaped=True)
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(child)


def test_a_live_process_with_the_old_id_is_left_alone() -> None:
    # Stand-in for a recycled id: a live group leader that is not ours. A reaped leader's id that
    # names a live process again must not be signalled.
    other = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        kill_group(other.pid, signal.SIGKILL, leader_reaped=True)
        time.sleep(0.2)
        assert other.poll() is None
        kill_group(other.pid, signal.SIGKILL, leader_reaped=False)  # our live leader: signalled
        assert other.wait(5) == -signal.SIGKILL
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
