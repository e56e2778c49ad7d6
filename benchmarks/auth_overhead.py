"""Latency the gateway adds with authentication and authorization on, against off, in one run.

Two copies of the cluster gateway's serving stack (benchmarks/_cluster_gateway.py: InvocationService,
HttpEnvironmentPool, the same aiohttp app) in front of one warm runtime server:

- ``off``: no auth;
- ``on``: as `lamina gateway --auth`: SigV4 with an access key, bearer tokens through TokenReview
  (audience lamina), RBAC through SubjectAccessReview, decisions cached, against the test control plane
  ($KUBECONFIG, or the one `scripts/test-cluster up` started).

Rows, timed in alternating batches of 100 sequential calls so a machine whose load changes skews them
alike: off (unsigned), on with SigV4 (each request signed by botocore beforehand, outside the timing),
on with a bearer token minted by TokenRequest. The first calls fill the caches (warm-up, not counted).

Usage: python benchmarks/auth_overhead.py [--calls 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
from _common import REPO, free_port, percentile, summary, wait_for_port
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from gateway_overhead import cpu_seconds
from kubernetes import client, config

NOOP = "def handler(event, context):\n    return None\n"
KEY_ID, SECRET, USER = "AKIDBENCHMARK0000001", "benchmark-secret", "lamina-benchmark"
PATH = "/2015-03-31/functions/noop/invocations"


def kubeconfig() -> str:
    found = os.environ.get("KUBECONFIG")
    if found:
        return found
    state = Path(os.environ.get("LAMINA_TEST_CLUSTER_DIR", "/tmp/lamina-test-cluster")) / "kubeconfig"
    if not state.exists():
        raise SystemExit("needs a cluster: set KUBECONFIG or run scripts/test-cluster up")
    return str(state)


def grant(api: client.ApiClient, account: str) -> str:
    """Let the benchmark's user and ServiceAccount invoke noop in default; a token for the SA."""
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account("default", {"metadata": {"name": account}})
    rule = {
        "apiGroups": ["lamina.dev"],
        "resources": ["functions"],
        "resourceNames": ["noop"],
        "verbs": ["invoke"],
    }
    rbac.create_namespaced_role("default", {"metadata": {"name": account}, "rules": [rule]})
    rbac.create_namespaced_role_binding(
        "default",
        {
            "metadata": {"name": account},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
            "subjects": [
                {"kind": "ServiceAccount", "name": account, "namespace": "default"},
                {"kind": "User", "name": USER, "apiGroup": "rbac.authorization.k8s.io"},
            ],
        },
    )
    spec = {"spec": {"audiences": ["lamina"], "expirationSeconds": 3600}}
    return core.create_namespaced_service_account_token(account, "default", spec).status.token


def revoke(api: client.ApiClient, account: str) -> None:
    client.RbacAuthorizationV1Api(api).delete_namespaced_role_binding(account, "default")
    client.RbacAuthorizationV1Api(api).delete_namespaced_role(account, "default")
    client.CoreV1Api(api).delete_namespaced_service_account(account, "default")


def signed_headers(port: int, count: int) -> list[dict[str, str]]:
    """``count`` SigV4 signatures made as boto3 makes them (before any timing starts)."""
    out = []
    for _ in range(count):
        request = AWSRequest(method="POST", url=f"http://127.0.0.1:{port}{PATH}", data=b"{}")
        SigV4Auth(Credentials(KEY_ID, SECRET), "lambda", "us-east-1").add_auth(request)
        out.append(dict(request.prepare().headers))
    return out


async def time_rows(
    rows: dict[str, tuple[int, list[dict[str, str]]]], calls: int, warmup: int, batch: int = 100
):
    samples: dict[str, list[float]] = {label: [] for label in rows}
    used = dict.fromkeys(rows, 0)

    async def call(session: aiohttp.ClientSession, label: str) -> float:
        port, headers = rows[label]
        h = headers[used[label] % len(headers)]
        used[label] += 1
        started = time.perf_counter()
        async with session.post(f"http://127.0.0.1:{port}{PATH}", data=b"{}", headers=h) as response:
            await response.read()
            assert response.status == 200, (label, response.status, await response.text())
        return (time.perf_counter() - started) * 1000

    async with aiohttp.ClientSession() as session:
        for label in rows:
            for _ in range(warmup):
                await call(session, label)
        while any(len(v) < calls for v in samples.values()):
            for label in rows:
                for _ in range(min(batch, calls - len(samples[label]))):
                    samples[label].append(await call(session, label))
    return samples


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    args = parser.parse_args()
    kube = kubeconfig()
    api = config.new_client_from_config(config_file=kube)
    account = f"bench-{uuid.uuid4().hex[:6]}"
    token = grant(api, account)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            code = Path(tmp)
            (code / "index.py").write_text(NOOP)
            direct_port = free_port()
            env = {**os.environ, "_HANDLER": "index.handler", "LAMBDA_TASK_ROOT": str(code)}
            procs.append(
                subprocess.Popen(  # noqa: ASYNC220 - set-up, before anything is timed
                    [sys.executable, "-m", "lamina_runtime", "serve", "--port", str(direct_port)],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    cwd=code,
                )
            )
            # One gateway process per row, so each one's CPU time per call is its own.
            ports = {"off": free_port(), "sigv4": free_port(), "bearer": free_port()}
            on = ["--auth-kubeconfig", kube, "--access-key", f"{KEY_ID}:{SECRET}:{USER}"]
            for label, port in ports.items():
                extra = on if label != "off" else []
                procs.append(
                    subprocess.Popen(  # noqa: ASYNC220 - set-up, before anything is timed
                        [
                            sys.executable,
                            str(REPO / "benchmarks" / "_cluster_gateway.py"),
                            "--port",
                            str(port),
                            *extra,
                            f"noop=127.0.0.1:{direct_port}",
                        ],
                        stdout=subprocess.DEVNULL,
                        cwd=REPO,
                    )
                )
            wait_for_port(direct_port, procs[0])
            for port, proc in zip(ports.values(), procs[1:], strict=True):
                wait_for_port(port, proc)
            total = args.calls + args.warmup + 10
            gateways = dict(zip(ports, procs[1:], strict=True))
            cpu_before = {label: cpu_seconds(p.pid) for label, p in gateways.items()}
            samples = await time_rows(
                {
                    "off": (ports["off"], [{}]),
                    "sigv4": (ports["sigv4"], signed_headers(ports["sigv4"], total)),
                    "bearer": (ports["bearer"], [{"Authorization": f"Bearer {token}"}]),
                },
                args.calls,
                args.warmup,
            )
            cpu_us = {
                label: (cpu_seconds(p.pid) - cpu_before[label]) / (args.calls + args.warmup) * 1e6
                for label, p in gateways.items()
            }
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait()
        revoke(api, account)
    print(summary("auth off (cluster gateway stack)", samples["off"]))
    print(summary("auth on, SigV4 (access key, RBAC cached)", samples["sigv4"]))
    print(summary("auth on, bearer (TokenReview + RBAC cached)", samples["bearer"]))
    for label in ("sigv4", "bearer"):
        added50 = percentile(samples[label], 50) - percentile(samples["off"], 50)
        added99 = percentile(samples[label], 99) - percentile(samples["off"], 99)
        print(f"{label} added: p50 {added50:+.3f} ms, p99 {added99:+.3f} ms (target: at most +0.1 ms at p50)")
    rows = ", ".join(f"{label} {cpu_us[label]:.0f} µs" for label in ("off", "sigv4", "bearer"))
    added = {label: cpu_us[label] - cpu_us["off"] for label in ("sigv4", "bearer")}
    extra = f"sigv4 {added['sigv4']:+.0f} µs, bearer {added['bearer']:+.0f} µs"
    print(f"gateway CPU per call: {rows} (added: {extra})")


if __name__ == "__main__":
    asyncio.run(main())
