"""Cold starts from the warm pool against the Deployment path and the pause pod, on the real node.

    export LAMINA_TEST_CLUSTER_DIR=/tmp/lamina-bench
    scripts/test-cluster up --real-node
    .venv/bin/python benchmarks/pool_cold_start.py [--starts 20] [--between steady|back-to-back]
        [--settle 2] [--pool-holds N] [--burst-functions 10 --burst-calls 50]

Installs the chart with the images `scripts/build-images` built (as benchmarks/real_pods.py does) and
drives the gateway from the host through its NodePort. Measures, for `hello`:

- pause pod:   create -> Ready of a pod running only the pause image (the node's floor for any pod);
- pool:        request -> response of the first call of a Function at zero on the pool path (the
               gateway claims an idle pool pod and hands it the function). What comes before each
               sample decides what is measured (``--between``):
               steady (default): "a cold start served from the warm pool". The benchmark waits until
                   the pool is full again and the node has settled: every pod of the pool's app is
                   idle and Ready, as many as the pool's size, none terminating (the previous sample's
                   pod reaped and gone), then ``--settle`` seconds more (a Ready pod's own start-up work
                   ends a moment after its readiness);
               back-to-back: the pool under refill. The benchmark waits only until one pod is idle and
                   Ready, so every claim overlaps the start of the replacement pod the pool's
                   ReplicaSet makes at once (a pod start costs the node ~1 s of CPU of its 2 cores);
- deployment:  the same with pools off in the namespace (`lamina.dev/pool-size: 0`): the gateway
               scales the Function's Deployment from zero;
- burst:       N concurrent first calls spread over M Functions at zero (pool path): the time until
               all are answered, and how many were answered 200.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, RealNodeRelease
from real_pods import burst_calls, clear, pod_ready_ms, stats

sys.path.insert(0, str(REPO))
from lamina.resources import labels

HELLO = "def handler(event, context):\n    return {'hello': 'world'}\n"
POOL_SIZE = "lamina.dev/pool-size"


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--starts", type=int, default=20, help="cold starts per path")
    parser.add_argument("--pause-pods", type=int, default=10)
    parser.add_argument("--pool-size", type=int, default=3, help="pool pods in the functions' namespace")
    parser.add_argument("--burst-functions", type=int, default=10)
    parser.add_argument("--burst-calls", type=int, default=50)
    parser.add_argument(
        "--paths",
        default="pause,pool,deployment,burst",
        help="which measurements, comma-separated (default: all four)",
    )
    parser.add_argument(
        "--between",
        choices=("steady", "back-to-back"),
        default="steady",
        help="before each pool sample: wait for a full, settled pool (steady) or for one idle pod",
    )
    parser.add_argument(
        "--settle", type=float, default=2.0, help="seconds more after the pool is full (steady)"
    )
    parser.add_argument(
        "--pool-holds",
        type=int,
        help="the gateway's idle pods held ahead per pool (chart gateway.poolHolds; default: the chart's)",
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    helm = () if args.pool_holds is None else ("--set", f"gateway.poolHolds={args.pool_holds}")
    release = RealNodeRelease.start(*helm)
    if release is None:
        return 2
    tier, core, lam = release.tier, release.core, release.lamina
    results: list[dict[str, Any]] = []

    def pool_size(size: int) -> None:
        core.patch_namespace(tier.FUNCTIONS_NS, {"metadata": {"annotations": {POOL_SIZE: str(size)}}})

    def pool_pods() -> tuple[int, int]:
        """(pods of the pool's app, of them idle, Ready and not terminating)."""
        selector = f"{labels.NAME}={labels.POOL_APP}"
        pods = core.list_namespaced_pod(tier.FUNCTIONS_NS, label_selector=selector).items
        ready = sum(
            1
            for p in pods
            if not p.metadata.deletion_timestamp
            and (p.metadata.labels or {}).get(labels.POOL_STATE) == labels.IDLE
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        )
        return len(pods), ready

    def functions_at_zero(prefix: str, n: int, path: str) -> list[str]:
        names = [tier.unique(f"{prefix}{i}") for i in range(n)]
        lam.apply("---\n".join(tier.function_yaml(x, HELLO, idleTimeoutSeconds=3) for x in names))
        for x in names:
            lam.wait_ready(x)
            deadline = time.monotonic() + 120
            while (lam.get("functions", x).get("status") or {}).get("coldStartPath") != path:
                assert time.monotonic() < deadline, f"{x} never on the {path} path"
                time.sleep(0.2)
        return names

    warm: list[float] = []

    def first_calls(names: list[str], before_each: Any) -> list[float]:
        """Each function's first call (a cold start), then a second one (warm: what the path from
        the host to a pod costs without the cold start)."""
        samples = []
        for x in names:
            before_each()
            t0 = time.perf_counter()
            r, body = lam.invoke(x, {}, read_timeout=150)
            assert "FunctionError" not in r and body == {"hello": "world"}, (r, body)
            samples.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            lam.invoke(x, {}, read_timeout=150)
            warm.append((time.perf_counter() - t0) * 1000)
        return samples

    def wait_pool() -> None:
        """Back-to-back: until one pod is idle and Ready (the pool may still be refilling)."""
        deadline = time.monotonic() + 120
        while pool_pods()[1] < 1:
            assert time.monotonic() < deadline, "the pool never had an idle Ready pod"
            time.sleep(0.1)

    def wait_steady() -> None:
        """Steady state: the pool full, every pod of it idle and Ready, none claimed, serving or
        terminating, then a settle."""
        deadline = time.monotonic() + 180
        while pool_pods() != (args.pool_size, args.pool_size):
            assert time.monotonic() < deadline, f"the pool never settled: {pool_pods()}"
            time.sleep(0.1)
        time.sleep(args.settle)

    loads: list[float] = []

    def wait_before_pool_sample() -> None:
        (wait_steady if args.between == "steady" else wait_pool)()
        loads.append(os.getloadavg()[0])

    try:
        paths = set(args.paths.split(","))
        pause = release.pause_image
        samples = []
        for i in range(args.pause_pods if "pause" in paths else 0):
            name = f"pause-{i}-{os.getpid()}"
            body = {
                "metadata": {"name": name},
                "spec": {
                    "automountServiceAccountToken": False,
                    "nodeName": "lamina-node",
                    "containers": [{"name": "pause", "image": pause, "imagePullPolicy": "Never"}],
                },
            }
            samples.append(pod_ready_ms(core, tier.FUNCTIONS_NS, name, body))
        if samples:
            results.append(stats("pause pod create -> Ready", samples))

        if "pool" in paths:
            pool_size(args.pool_size)
            names = functions_at_zero("pool", args.starts, "Pool")
            label = f"cold start from the warm pool ({args.between})"
            results.append(stats(label, first_calls(names, wait_before_pool_sample)))
            results[-1]["between"] = args.between
            results[-1]["load_1min"] = [min(loads), max(loads)]
            print(f"{'':40} load average (1 min) {min(loads):.2f} to {max(loads):.2f}", flush=True)
            results.append(stats("  the second call of each (warm)", warm))
            clear(lam)

        if "deployment" in paths:
            pool_size(0)
            names = functions_at_zero("dep", args.starts, "Deployment")
            results.append(stats("cold start on the Deployment path", first_calls(names, lambda: None)))
            clear(lam)

        if "burst" in paths:
            pool_size(args.pool_size)
            names = functions_at_zero("burst", args.burst_functions, "Pool")
            wait_pool()
            calls = [names[i % len(names)] for i in range(args.burst_calls)]
            t0 = time.perf_counter()
            answers = asyncio.run(_burst(lam.gateway_url, calls))
            total = (time.perf_counter() - t0) * 1000
            row = stats(
                f"burst: {args.burst_calls} first calls to {len(names)} functions",
                [ms for _, ms, _ in answers],
            )
            row["all_answered_ms"] = round(total, 1)
            row["answered_200"] = sum(1 for status, _, _ in answers if status == 200)
            row["not_ok"] = sorted({(status, body[:160]) for status, _, body in answers if status != 200})
            print(f"{'':40} all answered after {total:.0f} ms, {row['answered_200']} with 200", flush=True)
            for status, text in row["not_ok"]:
                print(f"{'':40} {status}: {text}", flush=True)
            results.append(row)
    finally:
        lam.delete_created()
        core.patch_namespace(tier.FUNCTIONS_NS, {"metadata": {"annotations": {POOL_SIZE: None}}})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


async def _burst(base: str, names: list[str]) -> list[tuple[int, float, str]]:
    """Every call at once, each to its own function name (burst_calls calls one name)."""
    parts = await asyncio.gather(*(burst_calls(base, n, 1) for n in names))
    return [a for part in parts for a in part]


if __name__ == "__main__":
    raise SystemExit(main())
