"""lamina on real pods: the test cluster's real node, lamina installed with Helm, driven from outside.

    export LAMINA_TEST_CLUSTER_DIR=/tmp/lamina-bench
    scripts/test-cluster up --real-node
    .venv/bin/python benchmarks/real_pods.py [--cold-starts 20] [--warm-calls 500] [--throughput-seconds 10]

Uses the cluster in $LAMINA_TEST_CLUSTER_DIR (it must have a real node), loads the images
`scripts/build-images` built (python3.12) and installs the chart with them (`helm upgrade --install`,
as the real-pod tests do: release `lamina` in `lamina-system`, functions in `lamina-e2e`). The client
is this process, on the host, through the gateway's NodePort on the node's IP. Measures:

- pause pod:       create -> Ready of a pod running only the pause image (the node's own floor);
- apply -> invoke: `kubectl apply` of a Function with one provisioned environment -> its first answer;
- cold start:      an invoke of a Function at zero replicas (scale 0 -> 1 through the gateway), one
                   Function each, so every sample is a real cold start;
- warm:            sequential invokes served by a warm provisioned pod;
- throughput:      sync invokes/s with concurrent clients, 4 provisioned environments;
- burst:           20 concurrent invokes of a Function at zero: time until all are answered, pods started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, percentile

sys.path.insert(0, str(REPO))


def stats(label: str, ms: list[float]) -> dict[str, Any]:
    row = {
        "what": label,
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 1),
        "p99_ms": round(percentile(ms, 99), 1),
        "max_ms": round(max(ms), 1),
    }
    print(f"{label:40} n={len(ms):4}  p50={row['p50_ms']:8.1f} ms  p99={row['p99_ms']:8.1f} ms", flush=True)
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


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pause-pods", type=int, default=20)
    parser.add_argument("--cold-starts", type=int, default=20)
    parser.add_argument("--warm-calls", type=int, default=500)
    parser.add_argument("--throughput-seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    import importlib.util

    from kubernetes import client, config

    spec = importlib.util.spec_from_file_location(
        "lamina_test_controlplane", REPO / "tests/cluster/controlplane.py"
    )
    assert spec is not None and spec.loader is not None
    cpm = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = cpm
    spec.loader.exec_module(cpm)
    cp = cpm.running()
    if cp is None or not cp.real_node:
        print(
            "needs a running cluster with a real node: scripts/test-cluster up --real-node", file=sys.stderr
        )
        return 2
    os.environ["KUBECONFIG"] = str(cp.kubeconfig)
    from tests.cluster.pods import conftest as tier
    from tests.cluster.pods import images

    api = config.new_client_from_config(config_file=str(cp.kubeconfig))
    core = client.CoreV1Api(api)
    values = images.load(cp.state_dir)
    helm = str(cp.bin_dir / "helm")
    tier.run(helm, "--kubeconfig", str(cp.kubeconfig), *tier.install_args(values))
    try:
        core.create_namespace({"metadata": {"name": tier.FUNCTIONS_NS}})
    except client.exceptions.ApiException:
        pass
    port = next(
        p.node_port
        for p in core.read_namespaced_service(f"{tier.RELEASE}-gateway", tier.SYSTEM_NS).spec.ports
    )
    lam = tier.Lamina(api=api, node_ip=cp.host, gateway_port=port, values=values)
    results: list[dict[str, Any]] = []
    try:
        # -- the node's floor: a pause-only pod
        pause = cpm.realnode.NodeConfig.load(cp.state_dir).pause_image
        samples = []
        for i in range(args.pause_pods):
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
        results.append(stats("pause pod create -> Ready", samples))

        # -- apply -> first answered invoke
        code = "def handler(event, context):\n    return event\n"
        samples = []
        for i in range(5):
            name = tier.unique(f"apply{i}")
            t0 = time.perf_counter()
            lam.apply(tier.function_yaml(name, code, provisionedConcurrency=1))
            while True:
                try:
                    r, body = lam.invoke(name, {"i": i}, read_timeout=150)
                    if "FunctionError" not in r:
                        break
                except Exception:
                    time.sleep(0.05)
            samples.append((time.perf_counter() - t0) * 1000)
        results.append(stats("apply -> first answered invoke", samples))
        clear(lam)  # a 2-core node holds about 20 function pods (CPU requests follow memoryMB)

        # -- cold starts from zero, one Function each
        names = [tier.unique(f"cold{i}") for i in range(args.cold_starts)]
        # A short keep-alive, so the node never holds more than a few of them at once.
        lam.apply(
            "---\n".join(
                tier.function_yaml(n, code, provisionedConcurrency=0, idleTimeoutSeconds=3) for n in names
            )
        )
        for n in names:
            lam.wait_ready(n)
        samples = []
        for n in names:
            t0 = time.perf_counter()
            r, _ = lam.invoke(n, {}, read_timeout=150)
            assert "FunctionError" not in r, r
            samples.append((time.perf_counter() - t0) * 1000)
        results.append(stats("cold start from zero (invoke)", samples))
        clear(lam)

        # -- warm invokes of a provisioned pod
        warm = tier.unique("warm")
        lam.apply(tier.function_yaml(warm, code, provisionedConcurrency=4))
        lam.wait_ready(warm)
        results.append(
            stats(
                "warm invoke, provisioned pod",
                asyncio.run(sequential(lam.gateway_url, warm, args.warm_calls)),
            )
        )
        rate, lat = asyncio.run(throughput(lam.gateway_url, warm, args.concurrency, args.throughput_seconds))
        row = stats(f"sync throughput, {args.concurrency} clients", lat)
        row["invocations_per_s"] = round(rate)
        print(f"{'':40} {rate:.0f} invocations/s", flush=True)
        results.append(row)
        clear(lam)

        # -- a burst of 20 at zero
        burst = tier.unique("burst")
        lam.apply(
            tier.function_yaml(
                burst,
                "import time\ndef handler(e, c):\n    time.sleep(0.2)\n    return 1\n",
                provisionedConcurrency=0,
            )
        )
        lam.wait_ready(burst)
        t0 = time.perf_counter()
        answers = asyncio.run(burst_calls(lam.gateway_url, burst, 20))
        total = (time.perf_counter() - t0) * 1000
        row = stats("burst of 20 at zero (each call)", [ms for _, ms, _ in answers])
        row["all_answered_ms"] = round(total, 1)
        row["pods_started"] = len(lam.pods(burst))
        row["not_ok"] = [(status, body[:200]) for status, _, body in answers if status != 200]
        ok = sum(1 for status, _, _ in answers if status == 200)
        pods = row["pods_started"]
        print(
            f"{'':40} all 20 answered after {total:.0f} ms ({ok} with 200), {pods} pods started", flush=True
        )
        for status, body in row["not_ok"]:
            print(f"{'':40} {status}: {body}", flush=True)
        results.append(row)
    finally:
        lam.delete_created()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


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


async def sequential(base: str, name: str, calls: int) -> list[float]:
    import aiohttp

    out = []
    async with aiohttp.ClientSession() as s:
        for i in range(calls + 20):
            t0 = time.perf_counter()
            async with s.post(invoke_url(base, name), data=b"{}") as r:
                await r.read()
                assert r.status == 200 and "X-Amz-Function-Error" not in r.headers
            if i >= 20:  # the first calls open connections
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
