"""The function pod's own start-up: `python -S -m lamina_runtime serve` from exec to "ready (INIT ..)".

    .venv/bin/python benchmarks/pod_server_start.py [--starts 20] [--python PATH] [--compare DIR]

This is the part of a cold start on a real node that lamina owns after the container starts (see
benchmarks/real_pods.py, "cold start hop by hop"): the pod server imports and listens, spawns the
worker, and the worker runs INIT (here a no-op handler). Printed per runtime tree: wall clock, and
the CPU time of the server and its worker from exec to exit (user + system, from the children's
rusage). On a loaded machine, and in a pod whose CPU share is small (a function pod requests
memoryMB / 1769 of a CPU), the wall clock is this CPU time stretched by the load, so CPU is the figure
to compare. ``--compare DIR`` (another checkout's ``runtime-image``) alternates starts of both trees,
so that load falls on both alike. The interpreter should be the runtime image's (Python 3.12).

``--pool``: a generic pool pod instead (``LAMINA_POOL=1``): it starts, is probed once (as the kubelet
does), settles (its pre-spawned worker, where the tree has one, done importing), then is handed the
function (``POST /specialize``); printed: the hand-over's wall clock (request -> response, which
comes once INIT is over) and the CPU the server and its workers spent on it (from /proc, in clock
ticks: a mean over the starts).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, percentile

HANDLER = "def handler(event, context):\n    return event\n"


def one_start(python: str, tree: str, task: str) -> tuple[float, float]:
    """(wall ms until the server logs that INIT is over, CPU ms of the server and worker in all)."""
    env = {
        **os.environ,
        "PYTHONPATH": tree,
        "LAMINA_HANDLER": "index.handler",
        "LAMBDA_TASK_ROOT": task,
        "PYTHONDONTWRITEBYTECODE": "1",  # as in the image: the runtime's .pyc files are compiled ahead
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.Popen(
        [python, "-S", "-m", "lamina_runtime", "serve", "--port", "0"],
        env=env,
        cwd=task,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "ready (INIT" in line:
            break
    else:
        raise RuntimeError(f"{tree}: the server exited before INIT was over")
    wall = (time.perf_counter() - started) * 1000
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    return wall, cpu


def _cpu_ticks(pid: int) -> int:
    """utime + stime of a process and of its reaped children, plus its live children's own."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = sum(int(f) for f in fields[11:15])
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        with_children = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(with_children[11]) + int(with_children[12])
    return total


def one_handover(python: str, tree: str, root: str, settle_s: float) -> tuple[float, float]:
    """(wall ms of POST /specialize, CPU ms of the server and its workers during it)."""
    task = tempfile.mkdtemp(dir=root)
    env = {
        **os.environ,
        "PYTHONPATH": tree,
        "LAMINA_POOL": "1",
        "LAMINA_POOL_TASK_ROOT": task,
        "LAMINA_POOL_LAYERS_ROOT": task,
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    proc = subprocess.Popen(
        [python, "-S", "-m", "lamina_runtime", "serve", "--pool", "--port", "0"],
        env=env,
        cwd=task,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        port = 0
        for line in proc.stdout:
            if "listening on" in line:
                port = int(line.rsplit(":", 1)[1])
            if "waiting for a function" in line:
                break
        probe = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        probe.request("GET", "/healthz")  # the kubelet's readiness probe comes before any claim
        probe.getresponse().read()
        probe.close()
        time.sleep(settle_s)
        body = json.dumps(
            {
                "environment": {"AWS_LAMBDA_FUNCTION_NAME": "bench", "LAMINA_HANDLER": "index.handler"},
                "code": {"files": {"index.py": HANDLER}},
            }
        )
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.connect()
        ticks = _cpu_ticks(proc.pid)
        started = time.perf_counter()
        conn.request("POST", "/specialize", body)
        response = conn.getresponse()
        response.read()
        wall = (time.perf_counter() - started) * 1000
        cpu = (_cpu_ticks(proc.pid) - ticks) * 1000 / os.sysconf("SC_CLK_TCK")
        conn.close()
        if response.status != 200:
            raise RuntimeError(f"{tree}: hand-over answered {response.status}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--compare", help="another checkout's runtime-image directory")
    parser.add_argument("--pool", action="store_true", help="time a pool pod's hand-over instead")
    parser.add_argument("--settle", type=float, default=0.5, help="--pool: seconds before the hand-over")
    args = parser.parse_args()
    trees = [str(REPO / "runtime-image")] + ([str(Path(args.compare).resolve())] if args.compare else [])
    for tree in trees:  # as the image does: byte-code compiled ahead, nothing compiled per start
        subprocess.run([args.python, "-m", "compileall", "-q", f"{tree}/lamina_runtime"], check=True)
    samples: dict[str, tuple[list[float], list[float]]] = {t: ([], []) for t in trees}
    with tempfile.TemporaryDirectory() as task:
        Path(task, "index.py").write_text(HANDLER)
        for _ in range(args.starts):
            for tree in trees:
                if args.pool:
                    wall, cpu = one_handover(args.python, tree, task, args.settle)
                else:
                    wall, cpu = one_start(args.python, tree, task)
                samples[tree][0].append(wall)
                samples[tree][1].append(cpu)
    for tree, (wall, cpu) in samples.items():
        if args.pool:
            print(
                f"{tree}: POST /specialize p50 {percentile(wall, 50):.1f} ms "
                f"(p99 {percentile(wall, 99):.1f}); "
                f"CPU server + workers mean {sum(cpu) / len(cpu):.1f} ms"
            )
            continue
        print(
            f"{tree}: exec -> INIT over p50 {percentile(wall, 50):.0f} ms (p99 {percentile(wall, 99):.0f}); "
            f"CPU server + worker p50 {percentile(cpu, 50):.0f} ms (min {min(cpu):.0f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
