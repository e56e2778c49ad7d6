"""The pod's server alone on loopback: write system calls and CPU per warm call of the server and its
worker, and the p50 of sequential calls (http.client, keep-alive).

    .venv/bin/python benchmarks/pod_server_writes.py [TREE] [--calls 2000]

TREE (default: this repository) is the tree whose `runtime-image/` runs, so that a frozen copy of
another commit (`git archive <commit> | tar -x -C DIR`) can be compared in the same minutes. The
server's stdout is a pipe read by `cat` (as containerd's shim reads a pod's), so the container log's
own cost (containerd) is not in these figures: `benchmarks/real_pods.py --phases warm` has it.
Writes are `syscw` of /proc/PID/io (write, writev; not a socket's send).
"""

from __future__ import annotations

import argparse
import http.client
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, free_port, percentile


def counters(pid: int) -> tuple[int, float]:
    """(write system calls, CPU seconds) of a process so far."""
    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(io["syscw"]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("tree", nargs="?", default=str(REPO))
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    code = tempfile.mkdtemp()
    Path(code, "index.py").write_text("def handler(event, context):\n    return event\n")
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(Path(args.tree) / "runtime-image"),
        "LAMINA_HANDLER": "index.handler",
        "LAMBDA_TASK_ROOT": code,
        "AWS_LAMBDA_FUNCTION_NAME": "bench",
    }
    sink = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    server = subprocess.Popen(
        [sys.executable, "-m", "lamina_runtime", "serve", "--port", str(port)], env=env, stdout=sink.stdin
    )
    try:
        for _ in range(600):
            try:
                probe = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                probe.request("GET", "/healthz")
                if probe.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

        def call() -> None:
            conn.request("POST", "/invoke", body=b'{"a":1}')
            response = conn.getresponse()
            response.read()
            assert response.status == 200

        for _ in range(50):
            call()
        worker = int(Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()[0])
        before = {pid: counters(pid) for pid in (server.pid, worker)}
        latencies = []
        for _ in range(args.calls):
            started = time.perf_counter()
            call()
            latencies.append((time.perf_counter() - started) * 1000)
        time.sleep(0.1)  # the last write of the window
        after = {pid: counters(pid) for pid in (server.pid, worker)}
    finally:
        server.terminate()
        server.wait()
        assert sink.stdin is not None
        sink.stdin.close()
        sink.wait()
    p50 = percentile(latencies, 50)
    print(f"{args.tree}: {args.calls} calls, p50 {p50:.3f} ms, load {os.getloadavg()[0]:.1f}")
    for name, pid in (("pod server", server.pid), ("its worker", worker)):
        writes = (after[pid][0] - before[pid][0]) / args.calls
        cpu = (after[pid][1] - before[pid][1]) / args.calls * 1e6
        print(f"  {name}: write system calls per call {writes:.3f}, CPU per call {cpu:.0f} µs")


if __name__ == "__main__":
    main()
