"""Helpers shared by the benchmark scripts: start servers, time calls, summarise."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int | None = None, *, tree: bool = False) -> float:
    """User + system CPU time of a process (this one when pid is None), with its descendants' when
    ``tree`` (a broker started through a wrapper script). On a shared machine rates follow the load;
    CPU time per unit of work hardly does."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent, cpu seconds)
    for entry in Path("/proc").iterdir() if tree else [Path(f"/proc/{pid}")]:
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        stats[int(entry.name)] = (
            int(fields[1]),
            (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"),
        )
    wanted, total = {pid}, 0.0
    changed = True
    while changed:
        changed = False
        for child, (parent, _) in stats.items():
            if parent in wanted and child not in wanted:
                wanted.add(child)
                changed = True
    for one in wanted:
        total += stats.get(one, (0, 0.0))[1]
    return total


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(label: str, samples_ms: list[float]) -> str:
    return (
        f"{label:44} n={len(samples_ms):5}  p50={percentile(samples_ms, 50):7.3f} ms  "
        f"p99={percentile(samples_ms, 99):7.3f} ms  mean={statistics.fmean(samples_ms):7.3f} ms"
    )


def start_local(manifest_dir: Path, state_dir: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    log = open(state_dir.parent / f"local-{port}.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lamina.cli",
            "local",
            str(manifest_dir),
            "--port",
            str(port),
            "--state-dir",
            str(state_dir),
            "--quiet",
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    wait_for_port(port, proc)
    return proc


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def function_manifest(name: str, code: str, **spec: object) -> str:
    lines = [
        "apiVersion: lamina.dev/v1alpha1",
        "kind: Function",
        "metadata:",
        f"  name: {name}",
        "spec:",
        "  handler: index.handler",
    ]
    lines += [f"  {key}: {value}" for key, value in spec.items()]
    lines += ["  code:", "    inline: |"] + [f"      {line}" for line in code.splitlines()]
    return "\n".join(lines) + "\n"


def test_cluster_module() -> Any:
    """``tests/cluster/controlplane.py`` (``running()`` is the cluster `scripts/test-cluster up`
    started, or None). Loaded by path: ``tests`` is not on a benchmark's import path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "lamina_test_controlplane", REPO / "tests/cluster/controlplane.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class RealNodeRelease:
    """lamina installed with Helm on the test cluster's real node, for the benchmarks that drive it
    from the host: the images `scripts/build-images` built, loaded into the node, and the release the
    real-pod tests install (`lamina` in `lamina-system`, functions in `lamina-e2e`), with authentication
    off: these are the platform's own figures (what auth adds per call is auth_overhead.py's).
    ``None`` from :meth:`start` when no cluster with a real node runs (it says so on stderr)."""

    def __init__(self, cpm: Any, cp: Any, *helm_args: str, python: str | None = None) -> None:
        from kubernetes import client, config

        os.environ["KUBECONFIG"] = str(cp.kubeconfig)
        from tests.cluster.pods import conftest as tier
        from tests.cluster.pods import images

        self.cpm, self.cp, self.tier = cpm, cp, tier
        self.api = config.new_client_from_config(config_file=str(cp.kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.values = images.load(cp.state_dir, python)
        try:  # before the install: the chart binds the gateway's and operator's roles in it
            self.core.create_namespace({"metadata": {"name": tier.FUNCTIONS_NS}})
        except client.exceptions.ApiException:
            pass
        no_auth = ("--set", "auth.enabled=false")
        install = tier.install_args(self.values, *helm_args, *no_auth)
        tier.run(str(cp.bin_dir / "helm"), "--kubeconfig", str(cp.kubeconfig), *install)
        svc = self.core.read_namespaced_service(f"{tier.RELEASE}-gateway", tier.SYSTEM_NS)
        port = next(p.node_port for p in svc.spec.ports if p.name == "http")
        self.lamina = tier.Lamina(api=self.api, node_ip=cp.host, gateway_port=port, values=self.values)
        self.pause_image: str = cpm.realnode.NodeConfig.load(cp.state_dir).pause_image

    @classmethod
    def start(cls, *helm_args: str, python: str | None = None) -> RealNodeRelease | None:
        """``python``: the lamina image's Python and one more runtime image (images.load)."""
        cpm = test_cluster_module()
        cp = cpm.running()
        if cp is None or not cp.real_node:
            print(
                "needs a running cluster with a real node: scripts/test-cluster up --real-node",
                file=sys.stderr,
            )
            return None
        return cls(cpm, cp, *helm_args, python=python)
