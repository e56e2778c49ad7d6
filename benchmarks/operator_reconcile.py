"""Time from `kubectl apply` of many Functions to reconciled and to Ready, and the operator's memory.

    .venv/bin/python benchmarks/operator_reconcile.py [--functions 100] [--provisioned 1]

Uses the cluster $KUBECONFIG names, else a private test control plane (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kwok; see docs/test-cluster.md) started for the run. The
operator runs as `python -m lamina.reconcilers --namespace <fresh namespace>`; the Functions are created
back to back, and a watch records, per Function, when its status first shows

- reconciled: status.observedGeneration == metadata.generation and the Deployment exists;
- ready:      additionally Ready=True (its provisioned environments are Ready pods: kwok marks them).

Times are measured from each Function's create call. Operator RSS is read from /proc at the end
(VmRSS) together with its peak (VmHWM).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, percentile

GROUP, VERSION = "lamina.dev", "v1alpha1"


def control_plane_module() -> Any:
    path = REPO / "tests" / "cluster" / "controlplane.py"
    spec = importlib.util.spec_from_file_location("lamina_bench_controlplane", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def proc_memory_kb(pid: int) -> dict[str, int]:
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found


def function(name: str, provisioned: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Function",
        "metadata": {"name": name},
        "spec": {
            "handler": "index.handler",
            "provisionedConcurrency": provisioned,
            "code": {"inline": f"def handler(event, context):\n    return {name!r}\n"},
        },
    }


class Recorder:
    """Watches Functions and remembers when each first became reconciled and Ready."""

    def __init__(self, api: Any, namespace: str) -> None:
        from kubernetes import client

        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.namespace = namespace
        self.reconciled: dict[str, float] = {}
        self.ready: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def observe(self, obj: dict[str, Any]) -> None:
        now = time.perf_counter()
        name = obj["metadata"]["name"]
        status = obj.get("status") or {}
        if status.get("observedGeneration") != obj["metadata"].get("generation"):
            return
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])
        if name not in self.reconciled and status.get("desiredEnvironments") is not None:
            self.reconciled[name] = now
        if ready and name not in self.ready:
            self.ready[name] = now

    def run(self) -> None:
        from kubernetes import watch

        while not self.stop.is_set():
            w = watch.Watch()
            try:
                for event in w.stream(
                    self.custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    "functions",
                    timeout_seconds=5,
                ):
                    self.observe(event["object"])
                    if self.stop.is_set():
                        break
            except Exception as e:  # a dropped watch is restarted; the next LIST replays state
                print(f"(watch restarted: {e})", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--functions", type=int, default=100)
    parser.add_argument("--provisioned", type=int, default=1, help="provisionedConcurrency of each Function")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--operator-log", help="keep the operator's (verbose) log in this file")
    args = parser.parse_args()

    from kubernetes import client, config

    cp = None
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig:
        cpm = control_plane_module()
        cp = cpm.start(Path(tempfile.mkdtemp(prefix="lamina-bench-cp-")))
        kubeconfig = str(cp.kubeconfig)
    api = config.new_client_from_config(config_file=kubeconfig)
    namespace = f"lamina-bench-{secrets.token_hex(3)}"
    core, custom, apps = client.CoreV1Api(api), client.CustomObjectsApi(api), client.AppsV1Api(api)
    operator = None
    log = Path(args.operator_log or tempfile.mkstemp(prefix="lamina-bench-operator-", suffix=".log")[1])
    try:
        sys.path.insert(0, str(REPO / "tests" / "cluster"))
        from conftest import apply_objects  # the tests' server-side apply helper (waits for CRDs)

        apply_objects(api, sorted((REPO / "crds").glob("*.yaml")))
        # Hundreds of pods that need not run: on kwok's node, also when the cluster has a real one.
        annotations = control_plane_module().KWOK_NAMESPACE_ANNOTATIONS
        core.create_namespace({"metadata": {"name": namespace, "annotations": annotations}})
        env = {**os.environ, "KUBECONFIG": kubeconfig, "LAMINA_RESYNC_SECONDS": "0"}
        with log.open("wb") as out:
            operator = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "lamina.reconcilers",
                    "--namespace",
                    namespace,
                    "--log-format=full" if args.operator_log else "--log-format=plain",
                    "-v" if args.operator_log else "-q",
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        # Warm-up: the operator is up once it has reconciled one Function (not counted).
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "functions", function("warmup", 0))
        recorder = Recorder(api, namespace)
        recorder.thread.start()
        deadline = time.monotonic() + 120
        while "warmup" not in recorder.reconciled:
            if time.monotonic() > deadline or operator.poll() is not None:
                raise RuntimeError(f"the operator did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)

        names = [f"bench-{i:04d}" for i in range(args.functions)]
        created: dict[str, float] = {}
        t_start = time.perf_counter()
        for name in names:
            created[name] = time.perf_counter()
            custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, "functions", function(name, args.provisioned)
            )
        t_applied = time.perf_counter()
        deadline = time.monotonic() + args.timeout
        while not all(n in recorder.ready for n in names):
            if time.monotonic() > deadline:
                missing = [n for n in names if n not in recorder.ready]
                raise RuntimeError(
                    f"{len(missing)} Functions not Ready after {args.timeout}s, e.g. {missing[:5]}"
                )
            time.sleep(0.1)
        t_done = time.perf_counter()
        recorder.stop.set()
        deployments = {d.metadata.name for d in apps.list_namespaced_deployment(namespace).items}
        assert all(f"fn-{n}" in deployments for n in names), "a reconciled Function has no Deployment"
        memory = proc_memory_kb(operator.pid)

        reconcile_ms = [(recorder.reconciled[n] - created[n]) * 1000 for n in names]
        ready_ms = [(recorder.ready[n] - created[n]) * 1000 for n in names]
        print(
            f"operator reconcile: {args.functions} Functions, provisionedConcurrency={args.provisioned}, "
            f"one namespace, control plane {'at $KUBECONFIG' if cp is None else 'local (kwok)'}"
        )
        print(f"  creating all took           {(t_applied - t_start):8.2f} s")
        print(f"  all Ready after             {(t_done - t_start):8.2f} s")
        for label, samples in (("apply -> reconciled", reconcile_ms), ("apply -> Ready", ready_ms)):
            print(
                f"  {label:26}  p50={percentile(samples, 50):8.1f} ms  p99={percentile(samples, 99):8.1f} ms"
                f"  max={max(samples):8.1f} ms"
            )
        print(
            f"  operator RSS                {memory['VmRSS'] / 1024:8.1f} MiB"
            f" (peak {memory['VmHWM'] / 1024:.1f} MiB)"
        )
        return 0
    finally:
        if operator is not None and operator.poll() is None:
            operator.terminate()
            operator.wait(timeout=15)
        try:
            core.delete_namespace(namespace)
        except Exception:
            pass
        if not args.operator_log:
            log.unlink(missing_ok=True)
        if cp is not None:
            cp.stop()


if __name__ == "__main__":
    sys.exit(main())
