"""A throw-away Kubernetes control plane on loopback for lamina's cluster tests.

Runs etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (which plays the kubelet
for one fake node, ``kwok-node-0``) as local processes, with certificates generated here. The binaries
come from ``scripts/build-control-plane`` (built once per version set, cached outside the repo).

Used two ways:

* ``scripts/test-cluster up|down|status|env`` runs this file as a program; the processes outlive it and
  are found again through the state directory (``$LAMINA_TEST_CLUSTER_DIR``, default
  ``/tmp/lamina-test-cluster``).
* ``tests/cluster/conftest.py`` imports it and calls :func:`start` / :meth:`ControlPlane.stop`.

Only the standard library, ``cryptography`` and ``kubernetes`` are used.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _load_sibling(name: str):
    """Import tests/cluster/<name>.py whether this file runs as a script or is loaded by path."""
    import importlib.util

    modname = f"lamina_test_{name}"
    if modname not in sys.modules:
        spec = importlib.util.spec_from_file_location(modname, Path(__file__).resolve().parent / f"{name}.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[modname] = mod
        spec.loader.exec_module(mod)
    return sys.modules[modname]


realnode = _load_sibling("realnode")
BUILD_SCRIPT = REPO / "scripts" / "build-control-plane"
VERSIONS_FILE = REPO / "scripts" / "control-plane-versions"
DEFAULT_STATE_DIR = "/tmp/lamina-test-cluster"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
#: What ``build-control-plane --node`` adds for a real node (see realnode.py).
NODE_BINARIES = ("kubelet", "kube-proxy", "coredns", "pause")
KWOK_STAGES = "kwok-stages.yaml"  # written next to the binaries by build-control-plane
# Stop order: the reverse of the start order.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
NODE_NAME = "kwok-node-0"
#: With a real node, kwok's node carries this taint: only pods that tolerate it (scale tests, placed
#: there by their namespace's annotations, see KWOK_NAMESPACE_ANNOTATIONS) land on it.
KWOK_TAINT = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}
#: Namespace annotations that send every pod of the namespace to kwok's node (admission plugins
#: PodNodeSelector and PodTolerationRestriction), with or without a real node.
KWOK_NAMESPACE_ANNOTATIONS = {
    "scheduler.alpha.kubernetes.io/node-selector": "type=kwok",
    "scheduler.alpha.kubernetes.io/defaultTolerations": json.dumps(
        [{"key": KWOK_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}]
    ),
}
SERVICE_CIDR = "10.0.0.0/24"
#: Pod IPs are loopback addresses: a test runs a "pod" itself at its IP (see stack.PodRunner). Each
#: control plane on the machine takes a /16 of its own, 127.<octet>.0.0/16 (see :func:`claim_pod_cidr`):
#: kwok hands out a CIDR's addresses in order, so two clusters sharing one would give their first pods
#: the same IP, the second pod's server could not bind it, and the second cluster's gateway would
#: reach the first cluster's pod and take another function's answer for its own.
POD_CIDR = "127.244.0.0/16"  # that of a cluster started before the claims (never claimed)
POD_CIDR_OCTETS = range(100, 250)
POD_CIDR_REGISTRY = Path(tempfile.gettempdir()) / "lamina-pod-cidrs"
START_TIMEOUT = float(os.environ.get("LAMINA_TEST_CLUSTER_START_TIMEOUT", "180"))


class ControlPlaneError(RuntimeError):
    """The control plane could not be built, started or reached."""


def state_dir_default() -> Path:
    return Path(os.environ.get("LAMINA_TEST_CLUSTER_DIR") or DEFAULT_STATE_DIR)


def pinned_versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in VERSIONS_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip().strip("'\"")
    return out


def _log(msg: str) -> None:
    print(f"[test-cluster] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- build


def _missing(d: Path, node: bool = False) -> list[str]:
    missing = [b for b in (*BINARIES, *(NODE_BINARIES if node else ())) if not os.access(d / b, os.X_OK)]
    return missing + ([] if (d / KWOK_STAGES).is_file() else [KWOK_STAGES])


def bin_dir(build: bool = True, node: bool = False) -> Path:
    """The directory holding the control-plane binaries, building them if needed (and allowed).

    ``node`` also asks for what a real node runs (kubelet, kube-proxy, CoreDNS, pause).
    ``LAMINA_CONTROL_PLANE_BIN`` points at a ready directory and skips the build script.
    """
    override = os.environ.get("LAMINA_CONTROL_PLANE_BIN")
    if override:
        d = Path(override)
        missing = _missing(d, node)
        if missing:
            raise ControlPlaneError(f"LAMINA_CONTROL_PLANE_BIN={d} lacks {', '.join(missing)}")
        return d
    if not build:
        raise ControlPlaneError("control-plane binaries are not built (run scripts/build-control-plane)")
    _log(f"resolving binaries via {BUILD_SCRIPT} (first build takes a long time; cached afterwards)")
    proc = subprocess.Popen(
        ["bash", str(BUILD_SCRIPT), *(["--node"] if node else [])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    tail: list[str] = []

    def pump() -> None:  # stream the build's progress and keep its end for the error message
        assert proc.stderr is not None
        for line in proc.stderr:
            sys.stderr.write(line)
            tail.append(line.rstrip())
            del tail[:-15]

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    out = proc.stdout.read() if proc.stdout else ""
    rc = proc.wait()
    t.join(timeout=5)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    if rc != 0 or not lines:
        raise ControlPlaneError(
            f"scripts/build-control-plane failed (exit {rc}); it needs Go >= 1.26 and the Go module "
            "proxy. Its last output:\n" + "\n".join(tail)
        )
    d = Path(lines[-1].strip())
    missing = _missing(d, node)
    if missing:
        raise ControlPlaneError(f"build-control-plane reported {d} but {', '.join(missing)} missing")
    return d


# --------------------------------------------------------------------------------------------- certs


def _write_key(path: Path, key) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(path: Path, cert) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _validity() -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    return now - dt.timedelta(hours=1), now + dt.timedelta(days=365)


def _name(cn: str, orgs: tuple[str, ...] = ()):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def issue_cert(
    pki: Path,
    out: str,
    ca: str,
    cn: str,
    orgs: tuple[str, ...] = (),
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    server: bool = False,
) -> None:
    """Sign ``<pki>/<out>.crt`` (+ ``.key``) with the CA ``<pki>/<ca>.crt``: a client certificate (CN is
    the user, O the groups) or, with ``server``, a serving one for ``dns`` and ``ips``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca_key = serialization.load_pem_private_key((pki / f"{ca}.key").read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate((pki / f"{ca}.crt").read_bytes())
    not_before, not_after = _validity()
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn, tuple(orgs)))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, True, False, False, False, False, False, False, False), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if dns or ips:
        sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    _write_key(pki / f"{out}.key", key)
    _write_cert(pki / f"{out}.crt", b.sign(ca_key, hashes.SHA256()))


def _certs(pki: Path, server_ips: list[str]) -> None:
    """Serving CA + apiserver cert, service-account key pair, client CA + admin cert."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    pki.mkdir(parents=True, exist_ok=True)
    not_before, not_after = _validity()

    def make_ca(name: str, cn: str) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        subj = _name(cn, ("lamina-test",))
        cert = (
            x509.CertificateBuilder()
            .subject_name(subj)
            .issuer_name(subj)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_key(pki / f"{name}.key", key)
        _write_cert(pki / f"{name}.crt", cert)

    make_ca("serving-ca", "lamina-test-serving-ca")
    issue_cert(
        pki,
        "apiserver",
        "serving-ca",
        "kube-apiserver",
        dns=(
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
        ips=tuple(server_ips),
        server=True,
    )

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(pki / "sa.key", sa_key)
    (pki / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )

    make_ca("client-ca", "lamina-test-client-ca")
    issue_cert(pki, "admin", "client-ca", "lamina-admin", orgs=("system:masters",))
    # The API server's identity towards kubelets (kubectl logs / exec on a real node).
    issue_cert(pki, "apiserver-kubelet-client", "client-ca", "kube-apiserver-kubelet-client")


def _write_kubeconfig(path: Path, server: str, pki: Path, user: str = "admin") -> None:
    """A kubeconfig for ``server`` that logs in with ``<pki>/<user>.crt``."""

    def b64(p: str) -> str:
        return base64.b64encode((pki / p).read_bytes()).decode()

    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "lamina-test",
                "cluster": {"server": server, "certificate-authority-data": b64("serving-ca.crt")},
            }
        ],
        "users": [
            {
                "name": "lamina-admin",
                "user": {
                    "client-certificate-data": b64(f"{user}.crt"),
                    "client-key-data": b64(f"{user}.key"),
                },
            }
        ],
        "contexts": [{"name": "lamina-test", "context": {"cluster": "lamina-test", "user": "lamina-admin"}}],
        "current-context": "lamina-test",
        "preferences": {},
    }
    path.write_text(json.dumps(cfg, indent=2) + "\n")  # JSON is valid kubeconfig YAML
    path.chmod(0o600)


# --------------------------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pid_alive(pid: int, exe: str | None = None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except OSError:
        return False
    if exe:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            return False
        # Just after spawning, a live process can show an empty cmdline for a moment (exec is still
        # setting it up), or the launcher's own (`nsenter --net=... -- exe` of a real-node cluster,
        # before it execs); taking either for "exited" failed control-plane starts under load.
        return cmd in (exe, "", "nsenter") or cmd.endswith("/nsenter")
    return True


def _tail(path: Path, n: int = 25) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


def _https_get(url: str, ctx: ssl.SSLContext, timeout: float = 3.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


# --------------------------------------------------------------------------------------------- model


@dataclass
class ControlPlane:
    state_dir: Path
    bin_dir: Path
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    etcd_data: str = ""
    version: str = ""
    #: The address every component binds to: loopback, or with a real node the node's IP inside the
    #: cluster's network namespace (see realnode.py).
    host: str = "127.0.0.1"
    real_node: bool = False
    node_pid: int | None = None
    pod_cidr: str = POD_CIDR

    # -- paths
    @property
    def pki(self) -> Path:
        return self.state_dir / "pki"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://{self.host}:{self.ports['apiserver']}"

    def log(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def exe(self, name: str) -> str:
        return str(self.bin_dir / name)

    # -- persistence
    def save(self) -> None:
        data = {
            "bin_dir": str(self.bin_dir),
            "ports": self.ports,
            "pids": self.pids,
            "etcd_data": self.etcd_data,
            "version": self.version,
            "host": self.host,
            "real_node": self.real_node,
            "node_pid": self.node_pid,
            "pod_cidr": self.pod_cidr,
            "kubeconfig": str(self.kubeconfig),
            "server": self.server if "apiserver" in self.ports else None,
        }
        tmp = self.state_dir / "state.json.tmp"
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(self.state_dir / "state.json")
        piddir = self.state_dir / "pids"
        piddir.mkdir(exist_ok=True)
        for n, p in self.pids.items():
            (piddir / f"{n}.pid").write_text(f"{p}\n")

    @classmethod
    def load(cls, state_dir: Path) -> ControlPlane | None:
        try:
            data = json.loads((state_dir / "state.json").read_text())
        except (OSError, ValueError):
            return None
        return cls(
            state_dir=state_dir,
            bin_dir=Path(data["bin_dir"]),
            ports={k: int(v) for k, v in data.get("ports", {}).items()},
            pids={k: int(v) for k, v in data.get("pids", {}).items()},
            etcd_data=data.get("etcd_data", ""),
            version=data.get("version", ""),
            host=data.get("host", "127.0.0.1"),
            real_node=bool(data.get("real_node", False)),
            node_pid=data.get("node_pid"),
            pod_cidr=data.get("pod_cidr", POD_CIDR),
        )

    # -- health
    def client_ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "serving-ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def alive(self) -> dict[str, bool]:
        alive = {n: _pid_alive(p, self.exe(n)) for n, p in self.pids.items()}
        if self.real_node:
            alive["real-node"] = self.node_pid is not None and _pid_alive(self.node_pid, "unshare")
        return alive

    def ready(self) -> bool:
        if not self.pids or not all(self.alive().values()) or set(self.pids) != set(COMPONENTS):
            return False
        try:
            code, _ = _https_get(self.server + "/readyz", self.client_ssl())
        except (OSError, ssl.SSLError):
            return False
        return code == 200

    # -- lifecycle
    def _spawn(self, name: str, args: list[str]) -> None:
        logf = open(self.log(name), "ab")
        try:
            prefix = realnode.RealNode(self.state_dir).nsenter() if self.real_node else []
            proc = subprocess.Popen(
                [*prefix, self.exe(name), *args],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.state_dir,
            )
        finally:
            logf.close()
        self.pids[name] = proc.pid
        self.save()

    def _wait(self, name: str, what: str, check, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            pid = self.pids.get(name)
            if pid is not None and not _pid_alive(pid, self.exe(name)):
                raise ControlPlaneError(
                    f"{name} exited while waiting for {what}; log tail:\n{_tail(self.log(name))}"
                )
            try:
                if check():
                    return
            except ControlPlaneError:
                raise
            except Exception as e:
                last = f"{type(e).__name__}: {e}"
            time.sleep(0.25)
        raise ControlPlaneError(
            f"timed out after {timeout:.0f}s waiting for {what} ({last}); "
            f"{name} log tail:\n{_tail(self.log(name))}"
        )

    def start(self) -> None:
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.pod_cidr = claim_pod_cidr(self.state_dir)
        p = self.ports
        for k in ("etcd_client", "etcd_peer", "apiserver", "kcm", "scheduler", "kwok"):
            p[k] = free_port()
        self.version = pinned_versions().get("KUBERNETES_VERSION", "")
        shm = Path("/dev/shm") if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) else None
        self.etcd_data = tempfile.mkdtemp(prefix="lamina-etcd-", dir=shm)
        self.save()
        if self.real_node:
            _, self.host = realnode.RealNode(self.state_dir).create_network()
        _certs(self.pki, sorted({"127.0.0.1", self.host, "10.0.0.1"}))
        self.save()
        h = self.host

        # etcd
        etcd_url = f"http://{h}:{p['etcd_client']}"
        peer_url = f"http://{h}:{p['etcd_peer']}"
        self._spawn(
            "etcd",
            [
                "--name=lamina",
                f"--data-dir={self.etcd_data}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=lamina={peer_url}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync=true",
                "--quota-backend-bytes=2147483648",
                "--auto-compaction-mode=periodic",
                "--auto-compaction-retention=5m",
                "--log-level=warn",
            ],
        )

        def etcd_ok() -> bool:
            with urllib.request.urlopen(etcd_url + "/health", timeout=2) as r:
                return r.status == 200 and json.loads(r.read()).get("health") == "true"

        self._wait("etcd", "etcd /health", etcd_ok)

        # kube-apiserver
        pki = self.pki
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                "--etcd-prefix=/registry",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'client-ca.crt'}",
                f"--bind-address={h}",
                f"--secure-port={p['apiserver']}",
                f"--advertise-address={h}",
                # A loopback address cannot be an endpoint of the `kubernetes` Service; the node's IP can
                # (pods reach the API server through it).
                *(["--endpoint-reconciler-type=none"] if h.startswith("127.") else []),
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                # Node: the real node's kubelet acts as system:node:<name> (the Node authorizer).
                "--authorization-mode=Node,RBAC",
                # A namespace's annotations may place its pods (kwok's node for scale tests).
                "--enable-admission-plugins=PodNodeSelector,PodTolerationRestriction",
                f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
                "--kubelet-preferred-address-types=InternalIP",
                f"--service-account-issuer={self.server}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                # LAMINA_CP_PROFILING=1 serves /debug/pprof (for profiling the benchmarks).
                f"--profiling={'true' if os.environ.get('LAMINA_CP_PROFILING') == '1' else 'false'}",
                "--event-ttl=30m",
                "--v=1",
            ],
        )
        ctx = self.client_ssl()
        self._wait(
            "kube-apiserver",
            "kube-apiserver /readyz",
            lambda: _https_get(self.server + "/readyz", ctx)[0] == 200,
        )
        _write_kubeconfig(self.kubeconfig, self.server, pki)

        from kubernetes import client, config

        api = config.new_client_from_config(config_file=str(self.kubeconfig))
        core = client.CoreV1Api(api)
        self._wait("kube-apiserver", "namespace default", lambda: core.read_namespace("default") is not None)

        # kube-controller-manager and kube-scheduler
        kc = str(self.kubeconfig)
        common = [
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--leader-elect=false",
            f"--bind-address={h}",
            "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
            "--v=1",
        ]
        (self.state_dir / "kcm-certs").mkdir(exist_ok=True)
        (self.state_dir / "scheduler-certs").mkdir(exist_ok=True)
        self._spawn(
            "kube-controller-manager",
            [
                *common,
                f"--secure-port={p['kcm']}",
                f"--cert-dir={self.state_dir / 'kcm-certs'}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'serving-ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'client-ca.crt'}",
                f"--cluster-signing-key-file={pki / 'client-ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--controllers=*",
                "--concurrent-gc-syncs=20",
                # The default client limit (20 requests/s) makes 100 Functions wait minutes for pods.
                "--kube-api-qps=200",
                "--kube-api-burst=400",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                *common,
                f"--secure-port={p['scheduler']}",
                f"--cert-dir={self.state_dir / 'scheduler-certs'}",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
            ],
        )
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        self._wait(
            "kube-controller-manager",
            "kube-controller-manager /healthz",
            lambda: _https_get(f"https://{h}:{p['kcm']}/healthz", insecure)[0] == 200,
        )
        self._wait(
            "kube-scheduler",
            "kube-scheduler /healthz",
            lambda: _https_get(f"https://{h}:{p['scheduler']}/healthz", insecure)[0] == 200,
        )

        # the fake node, then kwok to drive it
        self._create_node(core)
        self._spawn(
            "kwok",
            [
                f"--kubeconfig={kc}",
                f"--config={self.bin_dir / KWOK_STAGES}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--manage-nodes-with-label-selector=",
                "--manage-single-node=",
                f"--cidr={self.pod_cidr}",
                "--node-ip=127.0.0.1",
                f"--server-address={h}:{p['kwok']}",
                "--node-lease-duration-seconds=40",
            ],
        )

        def node_ready() -> bool:
            n = core.read_node(NODE_NAME)
            return any(c.type == "Ready" and c.status == "True" for c in (n.status.conditions or []))

        self._wait("kwok", f"node {NODE_NAME} Ready", node_ready)

        def default_sa() -> bool:
            return core.read_namespaced_service_account("default", "default") is not None

        self._wait("kube-controller-manager", "ServiceAccount default/default", default_sa)
        if self.real_node:
            self._start_node(api)
        api.close()
        self.save()

    def _start_node(self, api) -> None:
        """Taint kwok's node, then start the real one (realnode.py) and wait until it is Ready."""
        from kubernetes import client

        core = client.CoreV1Api(api)
        core.patch_node(NODE_NAME, {"spec": {"taints": [KWOK_TAINT]}})
        rbac = client.RbacAuthorizationV1Api(api)
        rbac.create_cluster_role(
            {
                "metadata": {"name": "lamina-test:coredns"},
                "rules": [
                    {
                        "apiGroups": [""],
                        "resources": ["services", "pods", "namespaces"],
                        "verbs": ["list", "watch"],
                    },
                    {
                        "apiGroups": ["discovery.k8s.io"],
                        "resources": ["endpointslices"],
                        "verbs": ["list", "watch"],
                    },
                ],
            }
        )
        rbac.create_cluster_role_binding(
            {
                "metadata": {"name": "lamina-test:coredns"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "lamina-test:coredns",
                },
                "subjects": [
                    {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "lamina-coredns"}
                ],
            }
        )
        pki, node = self.pki, realnode.RealNode(self.state_dir)
        issue_cert(pki, "kubelet", "client-ca", f"system:node:{realnode.NODE_NAME}", orgs=("system:nodes",))
        issue_cert(pki, "kube-proxy", "client-ca", "system:kube-proxy")
        issue_cert(pki, "coredns", "client-ca", "lamina-coredns")
        name = realnode.NODE_NAME
        issue_cert(pki, "kubelet-serving", "serving-ca", name, dns=(name,), ips=(self.host,), server=True)
        kubeconfigs = {}
        for user in ("kubelet", "kube-proxy", "coredns"):
            kubeconfigs[user] = self.state_dir / f"{user}.kubeconfig"
            _write_kubeconfig(kubeconfigs[user], self.server, pki, user)
        self.node_pid = node.start(self.bin_dir, self.host, self.server, pki, kubeconfigs)
        self.save()

        def node_ready() -> bool:
            if not _pid_alive(self.node_pid or 0, "unshare"):
                raise ControlPlaneError(
                    "the real node stopped; logs/node-init.log:\n" + _tail(self.log("node-init"))
                    + "\nlogs/kubelet.log:\n" + _tail(self.log("kubelet"))
                )  # fmt: skip
            n = core.read_node(realnode.NODE_NAME)
            return any(c.type == "Ready" and c.status == "True" for c in (n.status.conditions or []))

        self._wait("kube-apiserver", f"node {realnode.NODE_NAME} Ready (logs/kubelet.log)", node_ready)

    def _create_node(self, core) -> None:
        from kubernetes.client.exceptions import ApiException

        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": NODE_NAME,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "type": "kwok",
                    "kubernetes.io/hostname": NODE_NAME,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "kubernetes.io/role": "agent",
                    "node-role.kubernetes.io/agent": "",
                },
            },
            "spec": {"podCIDR": self.pod_cidr, "podCIDRs": [self.pod_cidr]},
            "status": {
                "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "1Ti"},
                "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "1Ti"},
                "nodeInfo": {
                    "architecture": "amd64",
                    "operatingSystem": "linux",
                    "kubeletVersion": "fake",
                    "kubeProxyVersion": "fake",
                    "containerRuntimeVersion": "kwok",
                    "kernelVersion": "",
                    "osImage": "",
                    "bootID": "",
                    "machineID": "",
                    "systemUUID": "",
                },
            },
        }
        try:
            core.create_node(node)
        except ApiException as e:
            if e.status != 409:
                raise

    def stop(self) -> None:
        """SIGTERM each process group (reverse start order), then SIGKILL; remove all state.

        A real node goes first (its PID namespace takes its containers along), and last its network
        namespace and cgroups, whatever is left of them (see :func:`clean_node`)."""
        if self.real_node:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if self.node_pid and _pid_alive(self.node_pid, "unshare"):
                    os.killpg(self.node_pid, signal.SIGKILL)
        groups = [("kwok", "kube-scheduler", "kube-controller-manager"), ("kube-apiserver",), ("etcd",)]
        for group in groups:
            live = {n: self.pids[n] for n in group if n in self.pids}
            live = {n: p for n, p in live.items() if _pid_alive(p, self.exe(n))}
            for pid in live.values():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while live and time.monotonic() < deadline:
                live = {n: p for n, p in live.items() if _pid_alive(p, self.exe(n))}
                time.sleep(0.1)
            for pid in live.values():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while live and time.monotonic() < deadline:
                live = {n: p for n, p in live.items() if _pid_alive(p, self.exe(n))}
                time.sleep(0.05)
        if self.etcd_data and Path(self.etcd_data).name.startswith("lamina-etcd-"):
            shutil.rmtree(self.etcd_data, ignore_errors=True)
        left = clean_node(self.state_dir)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        release_pod_cidr(self.state_dir)
        if left:
            _log("could not remove: " + ", ".join(left))


def claim_pod_cidr(state_dir: Path, registry: Path = POD_CIDR_REGISTRY) -> str:
    """A pod CIDR no other control plane on this machine uses: ``127.<octet>.0.0/16``, claimed by a
    file ``<registry>/<octet>`` naming ``state_dir`` (the same one again for the same state dir). A
    claim whose state dir is gone (a cluster taken down, or its files removed) is taken over."""
    import fcntl

    registry.mkdir(parents=True, exist_ok=True)
    me = str(state_dir.resolve())
    with (registry / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one choice at a time: no two clusters take the same one
        free = None
        # Its own octet first (from the state dir, as before the claims), then the others in turn.
        digest = hashlib.sha256(me.encode()).digest()
        first = POD_CIDR_OCTETS[int.from_bytes(digest[:4], "big") % len(POD_CIDR_OCTETS)]
        for octet in sorted(POD_CIDR_OCTETS, key=lambda o: (o != first, o == 244, o)):
            claim = registry / str(octet)
            try:
                owner = claim.read_text().strip()
            except FileNotFoundError:
                owner = ""
            if owner == me:
                return f"127.{octet}.0.0/16"
            if free is None and (not owner or not Path(owner).exists()):
                free = claim
        if free is None:
            raise ControlPlaneError(f"every pod CIDR of {registry} is taken by a live state dir")
        free.write_text(me + "\n")
        return f"127.{free.name}.0.0/16"


def release_pod_cidr(state_dir: Path, registry: Path = POD_CIDR_REGISTRY) -> None:
    """Give back the pod CIDR ``state_dir`` claimed (:func:`claim_pod_cidr`), if any."""
    me = str(state_dir.resolve())
    for claim in registry.glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if claim.read_text().strip() == me:
                claim.unlink()


def clean_node(state_dir: Path) -> list[str]:
    """Remove what a real node of ``state_dir`` left on the host, even after a crash with no state file:
    every process still in its network namespace (all of them ours), the namespace with its veths,
    and its cgroups. Returns what could not be removed."""
    node = realnode.RealNode(state_dir)
    return node.stop(None)


# --------------------------------------------------------------------------------------------- API


def running(state_dir: Path | None = None) -> ControlPlane | None:
    """The control plane recorded in ``state_dir`` if it is up and ready, else None."""
    cp = ControlPlane.load(state_dir or state_dir_default())
    return cp if cp is not None and cp.ready() else None


def start(
    state_dir: Path | None = None, *, build: bool = True, attempts: int = 2, real_node: bool = False
) -> ControlPlane:
    """Start a fresh control plane in ``state_dir`` (must not hold a live one) and return it.

    ``real_node`` adds a real node (kubelet, containerd...; see realnode.py) and runs the whole
    cluster in a network namespace of its own (needs root)."""
    sd = state_dir or state_dir_default()
    bins = bin_dir(build=build, node=real_node)
    old = ControlPlane.load(sd)
    if old is not None:
        old.stop()  # stale leftovers of a dead cluster
    clean_node(sd)  # and of a real node that crashed before writing its state
    last: Exception | None = None
    for attempt in range(1, attempts + 1):
        shutil.rmtree(sd, ignore_errors=True)
        sd.mkdir(parents=True, exist_ok=True)
        cp = ControlPlane(state_dir=sd, bin_dir=bins, real_node=real_node)
        t0 = time.monotonic()
        try:
            cp.start()
        except BaseException as e:
            logs = sd.with_name(f"{sd.name}.failed-logs-{attempt}")
            shutil.rmtree(logs, ignore_errors=True)
            with contextlib.suppress(OSError):
                shutil.copytree(sd / "logs", logs)
                (logs / "error.txt").write_text(f"{type(e).__name__}: {e}\n")
            cp.stop()
            if not isinstance(e, Exception):
                raise
            last = e
            _log(f"start attempt {attempt} failed: {e}\n(logs kept in {logs})")
            continue
        node = f" with real node {realnode.NODE_NAME}" if real_node else ""
        _log(f"control plane {cp.version}{node} up in {time.monotonic() - t0:.1f}s at {cp.server}")
        return cp
    raise ControlPlaneError(f"could not start the test control plane: {last}")


def up(state_dir: Path | None = None, real_node: bool = False) -> ControlPlane:
    cp = running(state_dir)
    if cp is not None and real_node and not cp.real_node:
        _log("the running cluster has no real node: restarting it with one")
        cp.stop()
        cp = None
    return cp if cp is not None else start(state_dir, real_node=real_node)


def down(state_dir: Path | None = None) -> bool:
    sd = state_dir or state_dir_default()
    cp = ControlPlane.load(sd)
    if cp is None:
        existed = sd.exists()
        left = clean_node(sd)
        shutil.rmtree(sd, ignore_errors=True)
        release_pod_cidr(sd)
        if left:
            _log("could not remove: " + ", ".join(left))
        return existed
    cp.stop()
    return True


def hold(state_dir: Path):
    """Take ``<state_dir>.lock`` for as long as the returned file stays open: the state dir's cluster
    has a live owner (see :func:`reap_abandoned`)."""
    import fcntl

    f = open(state_dir.with_name(state_dir.name + ".lock"), "a")
    fcntl.flock(f, fcntl.LOCK_EX)
    return f


def reap_abandoned(parent: Path, prefix: str) -> list[Path]:
    """Stop the real-node clusters of ``parent/<prefix>*`` whose owner died without stopping them (a
    killed pytest session): their lock is free. A real node leaves host state behind (a network
    namespace, cgroups), so it must not wait for the next reboot. Returns the state dirs cleaned."""
    import fcntl

    cleaned = []
    for d in sorted(parent.glob(prefix + "*")):
        cp = ControlPlane.load(d)
        lock_path = d.with_name(d.name + ".lock")
        if cp is None or not cp.real_node or not d.is_dir():
            continue
        with open(lock_path, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its session is alive
            _log(f"stopping the abandoned cluster in {d}")
            cp.stop()
            lock_path.unlink(missing_ok=True)
            cleaned.append(d)
    return cleaned


@contextlib.contextmanager
def state_lock(state_dir: Path) -> Iterator[None]:
    """Serialise up/down on one state dir (the lock file sits beside it: down removes the dir)."""
    import fcntl

    state_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(state_dir.with_name(state_dir.name + ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = argv[0] if argv else "help"
    sd = state_dir_default()
    try:
        if cmd == "up":
            flags = set(argv[1:])
            if flags - {"--real-node"}:
                print(
                    f"test-cluster: unknown option {' '.join(sorted(flags - {'--real-node'}))}",
                    file=sys.stderr,
                )
                return 2
            with state_lock(sd):
                cp = up(sd, real_node="--real-node" in flags)
            if not (cp.bin_dir / "kubectl").exists():  # no test needs it, so it is built on request
                print(
                    f"test-cluster: for kubectl {pinned_versions()['KUBERNETES_VERSION']} in {cp.bin_dir}, "
                    "run scripts/build-control-plane --kubectl",
                    file=sys.stderr,
                )
            print(cp.kubeconfig)
            return 0
        if cmd == "down":
            with state_lock(sd):
                stopped = down(sd)
            print("stopped" if stopped else "not running")
            return 0
        if cmd == "status":
            cp = ControlPlane.load(sd)
            if cp is None:
                print(f"not running (state dir {sd})")
                return 1
            for name, ok in cp.alive().items():
                pid = cp.node_pid if name == "real-node" else cp.pids[name]
                print(f"{name:24} pid {pid!s:<8} {'running' if ok else 'DEAD'}")
            ready = cp.ready()
            print(f"apiserver {cp.server} ({cp.version}) {'ready' if ready else 'NOT READY'}")
            if cp.real_node:
                sock = realnode.NodeConfig.load(sd).socket
                print(f"real node {realnode.NODE_NAME} (pid {cp.node_pid}), containerd {sock}")
            print(f"kubeconfig {cp.kubeconfig}")
            return 0 if ready else 1
        if cmd == "env":
            cp = ControlPlane.load(sd)
            if cp is None:
                print(f"# not running (state dir {sd}); run scripts/test-cluster up", file=sys.stderr)
                return 1
            print(f"export KUBECONFIG={cp.kubeconfig}")
            print(f"export LAMINA_CONTROL_PLANE_BIN={cp.bin_dir}")
            print(f'export PATH="{cp.bin_dir}:$PATH"')
            return 0
    except ControlPlaneError as e:
        print(f"test-cluster: {e}", file=sys.stderr)
        return 1
    print("usage: scripts/test-cluster up [--real-node]|down|status|env", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
