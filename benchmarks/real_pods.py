"""lamina on real pods: the test cluster's real node, lamina installed with Helm, driven from outside.

    export LAMINA_TEST_CLUSTER_DIR=/tmp/lamina-bench
    scripts/test-cluster up --real-node
    .venv/bin/python benchmarks/real_pods.py [--cold-starts 20] [--warm-calls 500] [--throughput-seconds 10]
        [--pools N] [--phases pause,apply,cold,warm,throughput,burst] [--json FILE]
        [--python python3.13] [--system-log-level WARN]

Uses the cluster in $LAMINA_TEST_CLUSTER_DIR (it must have a real node), loads the images
`scripts/build-images` built (python3.12) and installs the chart with them (`helm upgrade --install`,
as the real-pod tests do: release `lamina` in `lamina-system`, functions in `lamina-e2e`). The client
is this process, on the host, through the gateway's NodePort on the node's IP. Measures:

- floors (pause):  the node's own start times, with nothing of lamina in them: a pod running only the
                   pause image bound to the node (create -> Ready), and a pause Deployment with a
                   function pod's volumes scaled 0 -> 1 (scale -> Ready: the Deployment and ReplicaSet
                   controllers and the scheduler too, as a cold start through a Deployment). With the
                   cold phase, one sample of each precedes every cold start, so both see the same load;
- apply -> invoke: `kubectl apply` of a Function with one provisioned environment -> its first answer;
- cold start:      an invoke of a Function at zero replicas through the gateway, one Function each, so
                   every sample is a real cold start: a warm pool pod claimed when the chart has pools
                   (its default), else (--pools 0) the function's Deployment scaled 0 -> 1. Each one
                   also hop by hop (benchmarks/_pod_timeline.py): gateway asks -> pod created ->
                   scheduled -> running -> runtime listening -> INIT over -> the gateway's probe
                   answered -> the client's answer (for a pool claim: claimed -> specialized -> answer);
- warm:            sequential invokes served by a warm provisioned pod, with the CPU time per call of
                   each process on its path (the gateway pod, the function pod's server and its worker,
                   the node's containerd and shims that carry the pod's log lines; read from /proc, so
                   it hardly depends on the machine's load), and the same call hop by hop
                   with one client (benchmarks/_hop_client.py): the function pod's server alone, the
                   gateway pod alone, and through the NodePort from inside the node and from the host;
- throughput:      sync invokes/s with concurrent clients, 4 provisioned environments;
- burst:           20 concurrent invokes of a Function at zero: time until all are answered, pods started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, RealNodeRelease, percentile
from _pod_timeline import Timeline, first, log_times

sys.path.insert(0, str(REPO))


def stats(label: str, ms: list[float]) -> dict[str, Any]:
    row = {
        "what": label,
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms), 3),
    }
    # Three decimals: the warm target (1.09 ms) and the floors' gaps are read to a tenth of that.
    print(f"{label:40} n={len(ms):4}  p50={row['p50_ms']:8.3f} ms  p99={row['p99_ms']:8.3f} ms", flush=True)
    return row


def pod_ready_ms(core: Any, namespace: str, name: str, body: dict[str, Any]) -> float:
    from kubernetes import watch

    w = watch.Watch()
    t0 = time.perf_counter()
    core.create_namespaced_pod(namespace, body)
    try:
        for event in w.stream(
            core.list_namespaced_pod, namespace, field_selector=f"metadata.name={name}", timeout_seconds=120
        ):
            conds = event["object"].status.conditions or []
            if any(c.type == "Ready" and c.status == "True" for c in conds):
                return (time.perf_counter() - t0) * 1000
    finally:
        w.stop()
        core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    raise TimeoutError(f"pod {name} never became Ready")


PHASES = ("pause", "apply", "cold", "warm", "throughput", "burst")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pause-pods", type=int, default=20)
    parser.add_argument("--cold-starts", type=int, default=20)
    parser.add_argument("--warm-calls", type=int, default=500)
    parser.add_argument("--throughput-seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--pools",
        type=int,
        help="the chart's pools.size (default: the chart's; 0: every cold start scales the function's "
        "Deployment, no warm pool pod is claimed)",
    )
    parser.add_argument(
        "--cold-memory-mb",
        type=int,
        default=128,
        help="memoryMB of the cold-start functions (their CPU request follows it: memoryMB / 1769 of a CPU)",
    )
    parser.add_argument(
        "--python",
        default="python3.12",
        choices=("python3.11", "python3.12", "python3.13"),
        help="the runtime of the benchmark's functions, and the Python the lamina image (gateway, "
        "operator) runs on (LAMINA_IMAGE_PYTHON of scripts/build-images). Default python3.12, the "
        "tier's images: CPython built from source without PGO/LTO by scripts/build-python. "
        "python3.11 and python3.13 are Debian's own (optimised) builds of bookworm and trixie",
    )
    parser.add_argument(
        "--system-log-level",
        choices=("INFO", "WARN"),
        default="INFO",
        help="the warm function's spec.logging.systemLogLevel (with logFormat JSON, as Lambda asks): "
        "WARN switches its START, END and REPORT lines off, so a call writes nothing to the container "
        "log (what those lines cost the node: the containerd row)",
    )
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated subset of {','.join(PHASES)} (default: all)",
    )
    args = parser.parse_args()
    phases = set(args.phases.split(","))
    if phases - set(PHASES):
        parser.error(f"unknown phases: {', '.join(sorted(phases - set(PHASES)))}")

    pools = () if args.pools is None else ("--set", f"pools.size={args.pools}")
    python = None if args.python == "python3.12" else args.python
    release = RealNodeRelease.start(*pools, python=python)
    if release is None:
        return 2
    lam, core = release.lamina, release.core
    # Which interpreter every figure below used: the suite's 3.12 is built without PGO/LTO.
    python_build = (
        "CPython built from source, no PGO/LTO" if args.python == "python3.12" else "Debian's build"
    )
    print(
        f"functions on {args.python}, gateway and operator on {args.python} ({python_build}); "
        f"system log level {args.system_log_level}",
        flush=True,
    )
    results: list[dict[str, Any]] = [
        {
            "what": "setup",
            "python": args.python,
            "python_build": python_build,
            "systemLogLevel": args.system_log_level,
        }
    ]
    node = release.cpm.realnode.RealNode(release.cp.state_dir)
    bench = Bench(lam, core, node.nsenter(), args, results, Path(release.cp.state_dir))
    try:
        pause = release.pause_image
        if "pause" in phases and "cold" not in phases:
            bench.add_floors(list(bench.floors(pause, args.pause_pods)))
        if "apply" in phases:
            bench.apply_to_invoke()
        if "cold" in phases:  # the floors interleaved with the cold starts
            bench.cold_starts(pause if "pause" in phases else None)
        if phases & {"warm", "throughput"}:
            bench.warm(phases)
        if "burst" in phases:
            bench.burst()
    finally:
        lam.delete_created()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


CODE = "def handler(event, context):\n    return event\n"
#: A function's pods: its Deployment's, and warm pool pods claimed for it.
POD_SELECTOR = "lamina.dev/function"


@dataclass
class Bench:
    lam: Any
    core: Any
    nsenter: list[str]
    args: argparse.Namespace
    results: list[dict[str, Any]]
    state_dir: Path

    def add(self, row: dict[str, Any]) -> None:
        self.results.append(row)

    def floors(self, image: str, n: int) -> Iterator[tuple[float, float]]:
        """The node's own start times, sample by sample (so that they can be interleaved with cold
        starts): a bare pause pod bound to the node (create -> Ready), and a pause Deployment with a
        function pod's volumes scaled 0 -> 1 (scale -> pod Ready: the Deployment and ReplicaSet
        controllers and the scheduler, as a cold start goes through them)."""
        from tests.cluster.pods import conftest as tier

        ns, pid = tier.FUNCTIONS_NS, os.getpid()
        cm = f"pause-code-{pid}"
        self.core.create_namespaced_config_map(ns, {"metadata": {"name": cm}, "data": {"index.py": CODE}})
        apps = self.lam.apps
        try:
            for i in range(n):
                name = f"pause-{i}-{pid}"
                bare = pod_ready_ms(self.core, ns, name, pause_pod(name, image, None))
                dep = f"pause-dep-{i}-{pid}"
                apps.create_namespaced_deployment(ns, pause_deployment(dep, image, cm))
                try:
                    scaled = scale_ready_ms(apps, self.core, ns, dep)
                finally:
                    apps.delete_namespaced_deployment(dep, ns, grace_period_seconds=0)
                yield bare, scaled
        finally:
            self.core.delete_namespaced_config_map(cm, ns)

    def add_floors(self, floors: list[tuple[float, float]]) -> None:
        self.add(stats("pause pod create -> Ready", [b for b, _ in floors]))
        self.add(stats("pause Deployment scale 0 -> 1 -> Ready", [d for _, d in floors]))

    def apply_to_invoke(self) -> None:
        from tests.cluster.pods import conftest as tier

        samples = []
        for i in range(5):
            name = tier.unique(f"apply{i}")
            t0 = time.perf_counter()
            self.lam.apply(tier.function_yaml(name, CODE, provisionedConcurrency=1, runtime=self.args.python))
            while True:
                try:
                    r, _ = self.lam.invoke(name, {"i": i}, read_timeout=150)
                    if "FunctionError" not in r:
                        break
                except Exception:
                    time.sleep(0.05)
            samples.append((time.perf_counter() - t0) * 1000)
        self.add(stats("apply -> first answered invoke", samples))
        clear(self.lam)  # a 2-core node holds about 20 function pods (CPU requests follow memoryMB)

    def cold_starts(self, pause_image: str | None) -> None:
        """Cold starts from zero, one Function each, each one timed hop by hop; with ``pause_image``,
        each one follows a sample of the node's floors, so that both see the same load."""
        from tests.cluster.pods import conftest as tier

        names = [tier.unique(f"cold{i}") for i in range(self.args.cold_starts)]
        # A short keep-alive, so the node never holds more than a few of them at once.
        self.lam.apply(
            "---\n".join(
                tier.function_yaml(
                    n,
                    CODE,
                    provisionedConcurrency=0,
                    idleTimeoutSeconds=3,
                    memoryMB=self.args.cold_memory_mb,
                    runtime=self.args.python,
                )
                for n in names
            )
        )
        for n in names:
            self.lam.wait_ready(n)
        floors = self.floors(pause_image, len(names)) if pause_image else None
        timeline = Timeline(self.core, tier.FUNCTIONS_NS, POD_SELECTOR)
        timeline.start()
        # One boto3 client for all: making one costs tens of ms of this process's CPU (up to a second
        # on a loaded machine), which is the benchmark's, not the cold start's.
        client = self.lam.lambda_client(read_timeout=150)
        samples, hops, floor_samples = [], [], []
        for n in names:
            if floors is not None:
                floor_samples.append(next(floors))
            sent = time.time()
            t0 = time.perf_counter()
            r = client.invoke(FunctionName=n, Payload=b"{}")
            r["Payload"].read()
            assert "FunctionError" not in r, r
            samples.append((time.perf_counter() - t0) * 1000)
            hops.append(self.cold_hops(timeline, n, sent, time.time()))
        timeline.stop()
        if floors is not None:
            floors.close()
            self.add_floors(floor_samples)
        self.add(stats("cold start from zero (invoke)", samples))
        self.add_hops(hops)
        clear(self.lam)

    def cold_hops(self, timeline: Any, function: str, sent: float, answered: float) -> dict[str, float]:
        """One cold start's marks, in ms after the invoke was sent."""
        from tests.cluster.pods import conftest as tier

        pods = timeline.of_function(function)
        if len(pods) != 1:
            print(f"{function}: {len(pods)} pods seen, no breakdown", flush=True)
            return {}
        pod, m = pods[0]
        own = log_times(self.core.read_namespaced_pod_log(pod, tier.FUNCTIONS_NS, timestamps=True))
        gw = self.gateway_log(sent)
        if first(own, "a generic pool environment") is not None:  # a warm pool pod, claimed (issue 11)
            marks = {
                "pool pod claimed (seen with the function's label)": m.created,
                "specialized, INIT over (container log)": first(own, "specialized as"),
                "gateway: claimed and handed over": first(gw, f"{function}: claimed pool pod"),
                "answer at the client": answered,
            }
        else:  # the function's Deployment scaled up: a new pod
            marks = {
                "gateway asks for a pod": first(gw, f"{function}: cold start"),
                "pod created": m.created,
                "pod scheduled": m.scheduled,
                "pod address + running (kubelet status)": m.running or m.address,
                "runtime listening (container log)": first(own, "lamina_runtime: listening"),
                "INIT over (container log)": first(own, "ready (INIT"),
                "gateway's probe answered": first(gw, f"{function}: ", "answered its probe"),
                "Ready by the kubelet (seen)": m.ready,
                "answer at the client": answered,
            }
        return {k: round((v - sent) * 1000, 1) for k, v in marks.items() if v is not None}

    def gateway_log(self, since: float) -> list[tuple[float, str]]:
        from tests.cluster.pods import conftest as tier

        pods = self.core.list_namespaced_pod(
            tier.SYSTEM_NS, label_selector="app.kubernetes.io/component=gateway"
        ).items
        out: list[tuple[float, str]] = []
        for pod in pods:
            text = self.core.read_namespaced_pod_log(
                pod.metadata.name, tier.SYSTEM_NS, timestamps=True, since_seconds=int(time.time() - since) + 5
            )
            out += [(t, line) for t, line in log_times(text) if t >= since - 1]
        return sorted(out)

    def add_hops(self, hops: list[dict[str, float]]) -> None:
        keys = list(dict.fromkeys(k for h in hops for k in h))
        rows = {}
        print("cold start, hop by hop (ms after the invoke was sent; p50 / p99 over the starts):", flush=True)
        for k in keys:
            values = [h[k] for h in hops if k in h]
            rows[k] = {"n": len(values), "p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99)}
            print(f"  {k:44} n={len(values):3}  p50={rows[k]['p50_ms']:8.1f}  p99={rows[k]['p99_ms']:8.1f}")
        self.add({"what": "cold start hop by hop (ms after the invoke was sent)", "hops": rows, "raw": hops})

    def warm(self, phases: set[str]) -> None:
        from tests.cluster.pods import conftest as tier

        warm = tier.unique("warm")
        logging = {}
        if self.args.system_log_level != "INFO":
            logging["logging"] = {"logFormat": "JSON", "systemLogLevel": self.args.system_log_level}
        self.lam.apply(
            tier.function_yaml(warm, CODE, provisionedConcurrency=4, runtime=self.args.python, **logging)
        )
        self.lam.wait_ready(warm)
        base = self.lam.gateway_url
        if "warm" in phases:
            probe = NodeCpu.of(self.core, self.lam.pods(warm), self.state_dir)
            before, writes_before = probe.read(), probe.read_writes()
            samples = asyncio.run(sequential(base, warm, self.args.warm_calls))
            row = stats("warm invoke, provisioned pod", samples)
            calls = self.args.warm_calls + WARMUP_CALLS
            row["cpu_us_per_call"] = cpu = probe.per_call(before, calls)
            row["writes_per_call"] = writes = probe.writes_per_call(writes_before, calls)
            print(
                f"{'':40} CPU per call: "
                + ", ".join(f"{k} {v:.0f} µs" for k, v in cpu.items())
                + f"; load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            print(
                f"{'':40} write system calls per call: "
                + ", ".join(f"{k} {v:.2f}" for k, v in writes.items()),
                flush=True,
            )
            self.add(row)
            self.warm_hops(warm)
        if "throughput" in phases:
            rate, lat = asyncio.run(
                throughput(base, warm, self.args.concurrency, self.args.throughput_seconds)
            )
            row = stats(f"sync throughput, {self.args.concurrency} clients", lat)
            row["invocations_per_s"] = round(rate)
            print(f"{'':40} {rate:.0f} invocations/s", flush=True)
            self.add(row)
        clear(self.lam)

    def warm_hops(self, function: str) -> None:
        """The warm call hop by hop, one client for all: inside the node's network namespace (where
        pod IPs route) to the function pod's server, to the gateway pod, to the NodePort; and from the
        host to the NodePort (the path of the row above)."""
        from tests.cluster.pods import conftest as tier

        pod = self.lam.pods(function)[0]
        secret = pod_secret(self.core, pod)
        gateway = self.core.list_namespaced_pod(
            tier.SYSTEM_NS, label_selector="app.kubernetes.io/component=gateway"
        ).items[0]
        gw_port = next(
            p.container_port for c in gateway.spec.containers for p in c.ports or [] if p.name == "http"
        )
        path = f"/2015-03-31/functions/{function}/invocations"
        inside = [
            {"label": "function pod's server (/invoke)", "url": f"http://{pod.status.pod_ip}:8080/invoke",
             "headers": {"Lamina-Invoke-Secret": secret} if secret else {}},
            {"label": "gateway pod (its pod IP)", "url": f"http://{gateway.status.pod_ip}:{gw_port}{path}",
             "headers": {}},
            {"label": "NodePort from inside the node", "url": f"{self.lam.gateway_url}{path}", "headers": {}},
        ]  # fmt: skip
        outside = [{"label": "NodePort from the host", "url": f"{self.lam.gateway_url}{path}", "headers": {}}]
        client = str(Path(__file__).resolve().parent / "_hop_client.py")
        calls = str(self.args.warm_calls)
        measured = json.loads(
            subprocess.run(
                [*self.nsenter, sys.executable, client, calls, json.dumps(inside)],
                capture_output=True, text=True, check=True,
            ).stdout
        )  # fmt: skip
        measured |= json.loads(
            subprocess.run(
                [sys.executable, client, calls, json.dumps(outside)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        print("warm invoke, hop by hop (http.client, keep-alive, sequential):", flush=True)
        for label, samples in measured.items():
            self.add(stats(f"warm hop: {label}", samples))

    def burst(self) -> None:
        from tests.cluster.pods import conftest as tier

        burst = tier.unique("burst")
        self.lam.apply(
            tier.function_yaml(
                burst,
                "import time\ndef handler(e, c):\n    time.sleep(0.2)\n    return 1\n",
                provisionedConcurrency=0,
                runtime=self.args.python,
            )
        )
        self.lam.wait_ready(burst)
        timeline = Timeline(self.core, tier.FUNCTIONS_NS, POD_SELECTOR)
        timeline.start()
        sent = time.time()
        t0 = time.perf_counter()
        answers = asyncio.run(burst_calls(self.lam.gateway_url, burst, 20))
        total = (time.perf_counter() - t0) * 1000
        timeline.stop()
        row = stats("burst of 20 at zero (each call)", [ms for _, ms, _ in answers])
        row["all_answered_ms"] = round(total, 1)
        pods = [m for _, m in timeline.of_function(burst)]
        row["pods_started"] = len(pods)
        # When the node brought the pods up (ms after the calls were sent): first and last of each stage.
        for stage in ("created", "running", "ready"):
            times = sorted((t - sent) * 1000 for m in pods if (t := getattr(m, stage)) is not None)
            if times:
                row[f"pods_{stage}_first_last_ms"] = [round(times[0]), round(times[-1])]
                print(f"{'':40} pods {stage}: first {times[0]:.0f} ms, last {times[-1]:.0f} ms", flush=True)
        row["not_ok"] = [(status, body[:200]) for status, _, body in answers if status != 200]
        ok = sum(1 for status, _, _ in answers if status == 200)
        print(
            f"{'':40} all 20 answered after {total:.0f} ms ({ok} with 200), {len(pods)} pods started",
            flush=True,
        )
        for status, body in row["not_ok"]:
            print(f"{'':40} {status}: {body}", flush=True)
        self.add(row)


@dataclass
class NodeCpu:
    """The processes on a warm call's path on the node, by part: the gateway pod's, the function pod's
    server and its worker, and the node's containerd with its shims (they copy the pod's log lines
    into the container log). Found through /proc: a pod's processes by the pod's cgroup, the node's
    containerd and shims by the socket in this cluster's state directory."""

    parts: dict[str, list[int]]

    @classmethod
    def of(cls, core: Any, function_pods: list[Any], state_dir: Path) -> NodeCpu:
        from tests.cluster.pods import conftest as tier

        deadline = time.monotonic() + 120
        while True:  # after a `helm upgrade`, the gateway pod that stays (a rolled one's CPU would vanish)
            gateways = core.list_namespaced_pod(
                tier.SYSTEM_NS, label_selector="app.kubernetes.io/component=gateway"
            ).items
            if len(gateways) == 1 and all(c.ready for c in gateways[0].status.container_statuses or []):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(gateways)} gateway pods after 120 s: the rollout did not end")
            time.sleep(0.5)
        gateway = gateways[0]
        procs = _processes()
        uids = [pod.metadata.uid for pod in function_pods]  # the call may land on any of them
        in_pod = [pid for pid, (_, cgroup, _) in procs.items() if any(_in_pod(cgroup, u) for u in uids)]
        server = [pid for pid in in_pod if "lamina_runtime" in procs[pid][2] and procs[pid][0] not in in_pod]
        workers = [pid for pid in in_pod if procs[pid][0] in server]
        node = str(state_dir / "node")
        gateway_uid = gateway.metadata.uid
        return cls(
            {
                "gateway pod": [pid for pid, (_, cg, _) in procs.items() if _in_pod(cg, gateway_uid)],
                "function pod server": server,
                "its worker": workers,
                "containerd + shims": [
                    pid for pid, (_, _, cmd) in procs.items() if "containerd" in cmd and node in cmd
                ],
            }
        )

    def read(self) -> dict[int, float]:
        times = {pid: _cpu_seconds(pid) for pids in self.parts.values() for pid in pids}
        return {pid: t for pid, t in times.items() if t is not None}

    def read_writes(self) -> dict[int, int]:
        """The write system calls (``syscw`` of /proc/PID/io: write, writev, pwrite, not a socket's
        send) of the function pod's server and worker so far: the container log's writes among them."""
        counts = {pid: _write_calls(pid) for part in WRITE_PARTS for pid in self.parts[part]}
        return {pid: n for pid, n in counts.items() if n is not None}

    def writes_per_call(self, before: dict[int, int], calls: int) -> dict[str, float]:
        after = self.read_writes()
        return {
            part: round(
                sum(after[p] - before[p] for p in self.parts[part] if p in after and p in before) / calls, 3
            )
            for part in WRITE_PARTS
        }

    def per_call(self, before: dict[int, float], calls: int) -> dict[str, float]:
        """CPU µs per call of each part between ``before`` and now (a process gone meanwhile is left
        out: its time is no longer readable)."""
        after = self.read()
        return {
            part: round(
                sum(after[p] - before[p] for p in pids if p in after and p in before) / calls * 1e6,
                1,
            )
            for part, pids in self.parts.items()
        }


def _processes() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent, cgroup file, command line) of every process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            cgroup = (entry / "cgroup").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        out[int(entry.name)] = (parent, cgroup, cmd)
    return out


#: The parts whose write system calls the warm phase counts.
WRITE_PARTS = ("function pod server", "its worker")


def _write_calls(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("syscw:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _in_pod(cgroup: str, uid: str) -> bool:
    return f"pod{uid}" in cgroup or f"pod{uid.replace('-', '_')}" in cgroup


def _cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pause_pod(name: str, image: str, config_map: str | None) -> dict[str, Any]:
    """A pod running only the pause image; with ``config_map``, with a function pod's volumes (/tmp
    and the code), not bound to a node (the scheduler places it), else bound to the real node."""
    container: dict[str, Any] = {"name": "pause", "image": image, "imagePullPolicy": "Never"}
    spec: dict[str, Any] = {"automountServiceAccountToken": False, "containers": [container]}
    if config_map is None:
        spec["nodeName"] = "lamina-node"
    else:
        spec["volumes"] = [
            {"name": "tmp", "emptyDir": {"sizeLimit": "512Mi"}},
            {"name": "code", "configMap": {"name": config_map}},
        ]
        container["volumeMounts"] = [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "code", "mountPath": "/var/task", "readOnly": True},
        ]
    return {"metadata": {"name": name}, "spec": spec}


def pause_deployment(name: str, image: str, config_map: str) -> dict[str, Any]:
    pod = pause_pod(name, image, config_map)
    selector = {"lamina-bench/pause": name}
    return {
        "metadata": {"name": name},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": selector}, "spec": pod["spec"]},
        },
    }


def scale_ready_ms(apps: Any, core: Any, namespace: str, name: str) -> float:
    """Scale a Deployment at zero to one; ms until its pod is Ready (as a watch sees it)."""
    from kubernetes import watch

    w = watch.Watch()
    t0 = time.perf_counter()
    apps.patch_namespaced_deployment_scale(name, namespace, {"spec": {"replicas": 1}})
    try:
        for event in w.stream(
            core.list_namespaced_pod,
            namespace,
            label_selector=f"lamina-bench/pause={name}",
            timeout_seconds=120,
        ):
            conds = event["object"].status.conditions or []
            if any(c.type == "Ready" and c.status == "True" for c in conds):
                return (time.perf_counter() - t0) * 1000
    finally:
        w.stop()
    raise TimeoutError(f"the pod of Deployment {name} never became Ready")


def pod_secret(core: Any, pod: Any) -> str | None:
    """The invoke secret a function pod requires (from the Secret its container's variable names),
    or None when it requires none."""
    import base64

    env = next(
        (e for c in pod.spec.containers for e in c.env or [] if e.name == "LAMINA_INVOKE_SECRET"), None
    )
    if env is None:
        return None
    if env.value:
        return str(env.value)
    ref = env.value_from.secret_key_ref
    data = core.read_namespaced_secret(ref.name, pod.metadata.namespace).data
    return base64.b64decode(data[ref.key]).decode()


def clear(lam: Any) -> None:
    """Delete what the benchmark applied and wait until its pods are gone (they hold CPU requests)."""
    lam.delete_created()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        pods = lam.core.list_namespaced_pod(
            lam.namespace, label_selector="app.kubernetes.io/component=execution-environment"
        ).items
        if not pods:
            return
        time.sleep(0.5)


def invoke_url(base: str, name: str) -> str:
    return f"{base}/2015-03-31/functions/{name}/invocations"


WARMUP_CALLS = 20


async def sequential(base: str, name: str, calls: int) -> list[float]:
    import aiohttp

    out = []
    async with aiohttp.ClientSession() as s:
        for i in range(calls + WARMUP_CALLS):
            t0 = time.perf_counter()
            async with s.post(invoke_url(base, name), data=b"{}") as r:
                await r.read()
                assert r.status == 200 and "X-Amz-Function-Error" not in r.headers
            if i >= WARMUP_CALLS:  # the first calls open connections
                out.append((time.perf_counter() - t0) * 1000)
    return out


async def throughput(base: str, name: str, clients: int, seconds: float) -> tuple[float, list[float]]:
    import aiohttp

    lat: list[float] = []
    deadline = time.perf_counter() + seconds

    async def one(s: Any) -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            async with s.post(invoke_url(base, name), data=b"{}") as r:
                await r.read()
                assert r.status == 200
            lat.append((time.perf_counter() - t0) * 1000)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(s) for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    return len(lat) / elapsed, lat


async def burst_calls(base: str, name: str, n: int) -> list[tuple[int, float, str]]:
    import aiohttp

    async def one(s: Any) -> tuple[int, float, str]:
        t0 = time.perf_counter()
        async with s.post(invoke_url(base, name), data=b"{}", timeout=aiohttp.ClientTimeout(total=300)) as r:
            body = await r.text()
        return r.status, (time.perf_counter() - t0) * 1000, body

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        return list(await asyncio.gather(*(one(s) for _ in range(n))))


if __name__ == "__main__":
    sys.exit(main())
