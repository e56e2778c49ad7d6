"""Kubernetes source: event lag from an object change to the handler's start, at a steady change rate.

    .venv/bin/python benchmarks/kubernetes_source_lag.py [--rate 100] [--seconds 10] [--batch-size 10]

Against ``$KUBECONFIG`` when set, else a private test control plane (tests/cluster/controlplane.py,
started by the script). A mapping worker (the real ``MappingWorker`` over the real
``KubernetesSource``, watching ConfigMaps of a fresh namespace with LATEST) runs in this process; a
writer thread creates and then updates ConfigMaps at ``--rate`` changes per second. The lag of one
change runs from the moment its API call returned (the change is stored) to the moment the function
was handed the batch carrying it. Every change must arrive: the script fails if one is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import REPO, percentile
from operator_reconcile import control_plane_module

sys.path.insert(0, str(REPO))

from lamina.eventsources.config import MappingConfig
from lamina.eventsources.kubernetes import KubernetesSource, MemoryCheckpoint, Watched
from lamina.eventsources.mapping import MappingWorker
from lamina.eventsources.timing import Timing
from lamina.kubeapi import api_client
from lamina_runtime.protocol import InvocationResult


class Handler:
    """The function: notes when each change (name, resourceVersion) reached it."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], float] = {}
        self.batches = 0

    async def __call__(
        self, function_name: str, payload: bytes, request_id: str | None = None
    ) -> InvocationResult:
        now = time.monotonic()
        self.batches += 1
        for event in json.loads(payload)["Records"]:
            detail = event["detail"]
            self.seen.setdefault((detail["name"], detail["resourceVersion"]), now)
        return InvocationResult("bench", b"null")


def write_changes(core: Any, namespace: str, rate: float, seconds: float, done: dict[tuple[str, str], float]):
    """Create then update ConfigMaps at ``rate`` per second (one writer, paced by the clock)."""
    names = [f"cm-{i:03d}" for i in range(50)]
    step = 1.0 / rate
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < seconds:
        due = start + n * step
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        name = names[n % len(names)]
        body = {"metadata": {"name": name}, "data": {"n": str(n)}}
        if n < len(names):
            made = core.create_namespaced_config_map(namespace, body)
        else:
            made = core.replace_namespaced_config_map(name, namespace, body)
        done[(name, made.metadata.resource_version)] = time.monotonic()
        n += 1


async def run(kubeconfig: str, args: argparse.Namespace) -> int:
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=kubeconfig)
    core = client.CoreV1Api(api)
    namespace = f"lamina-lag-{secrets.token_hex(3)}"
    core.create_namespace({"metadata": {"name": namespace}})
    handler = Handler()
    watched = Watched("v1", "ConfigMap", namespace, None, frozenset({"ADDED", "MODIFIED"}), "default")
    source = KubernetesSource(
        watched,
        api_client=lambda: api_client(kubeconfig),
        checkpoint=MemoryCheckpoint(),
        starting_position="LATEST",
    )
    config_ = MappingConfig(name="lag", function_name="fn", batch_size=args.batch_size)
    worker = MappingWorker(config_, source, handler, timing=Timing(poll_wait=0.2))
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while worker.status.state != "Enabled":
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start: {worker.status}")
            await asyncio.sleep(0.05)
        stored: dict[tuple[str, str], float] = {}
        began = time.monotonic()
        await asyncio.to_thread(write_changes, core, namespace, args.rate, args.seconds, stored)
        wrote = time.monotonic() - began
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if set(stored) <= set(handler.seen):
                break
            await asyncio.sleep(0.05)
    finally:
        await worker.stop()
        core.delete_namespace(namespace)
    missing = set(stored) - set(handler.seen)
    lags = [(handler.seen[k] - stored[k]) * 1000 for k in stored if k in handler.seen]
    print(
        f"{len(stored)} changes in {wrote:.1f} s ({len(stored) / wrote:.0f}/s asked {args.rate:.0f}/s), "
        f"{handler.batches} batches (batch size {args.batch_size})"
    )
    print(
        f"lag change -> handler: p50 {percentile(lags, 50):.1f} ms, p99 {percentile(lags, 99):.1f} ms, "
        f"max {max(lags):.1f} ms"
    )
    if missing:
        print(f"MISSING {len(missing)} changes, e.g. {sorted(missing)[:3]}")
        return 1
    verdict = "meets" if percentile(lags, 99) < 500 else "MISSES"
    print(f"p99 {percentile(lags, 99):.0f} ms ({verdict} the 500 ms target); none missing")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=100.0, help="changes per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int, default=10)
    args = parser.parse_args()
    cp = None
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig:
        cp = control_plane_module().start(Path(tempfile.mkdtemp(prefix="lamina-bench-cp-")))
        kubeconfig = str(cp.kubeconfig)
    try:
        return asyncio.run(run(kubeconfig, args))
    finally:
        if cp is not None:
            cp.stop()


if __name__ == "__main__":
    sys.exit(main())
