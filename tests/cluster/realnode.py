"""A real node for the test cluster: containerd, kubelet, kube-proxy and CoreDNS, kind-like, in namespaces.

``scripts/test-cluster up --real-node`` (see docs/test-cluster.md) runs the whole cluster inside one
network namespace that this module creates, ``lamina-<id>`` (``<id>`` is derived from the state dir, so
two clusters never share a name):

* a veth pair links it to the host: ``<host ip>/30`` on the host side (``lmh<id>``), the node IP on
  ``eth0`` inside. The node IP is the only address the host reaches; the API server, etcd, the
  controller-manager and the scheduler bind to it. Nothing in the namespace routes anywhere else
  (``unreachable default``), and the host does not route the pod or Service ranges at all: they exist
  only inside the namespace. So pod traffic cannot leave the machine, and two clusters can use the
  same ranges side by side.
* the node itself runs under ``unshare --mount --pid``: its own mount namespace (a private ``/run``,
  every container mount, the pod network namespaces) and PID namespace, whose init is
  ``python realnode.py init STATE``. When that init dies, the kernel kills every process of the node,
  containers included, and every mount disappears with the namespace. Tear-down therefore cannot leak
  mounts or processes; it only has to delete the network namespace (taking the veths with it) and the
  node's cgroups (``/lamina-<id>`` in each hierarchy).

The host-side half (:class:`RealNode`) writes the configuration, starts the init and tears it all down;
the other half (:func:`init`) is the node's PID 1. Only the standard library is used here; the caller
passes the certificates it minted.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

NODE_NAME = "lamina-node"
NODE_LABELS = {"type": "real", "lamina.dev/node": "real"}
POD_CIDR = "10.244.0.0/16"  # the kube-proxy's cluster CIDR; the bridge hands out the first /24
POD_SUBNET = "10.244.0.0/24"
CLUSTER_DOMAIN = "cluster.local"
#: /30 links are taken from here, one per cluster, the block picked from the state dir's digest.
LINK_RANGE = ipaddress.ip_network("10.250.0.0/16")
PAUSE_IMAGE = "lamina.local/pause:{tag}"
#: Host sysctls the kubelet would otherwise rewrite (it "fixes" them unless protectKernelDefaults, and
#: then refuses to start): inside the node they read as the kubelet wants them; the host keeps its own.
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}
DAEMONS = ("containerd", "kubelet", "kube-proxy", "coredns")


def node_id(state_dir: Path) -> str:
    return hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Names:
    """Everything host-visible the node creates, derived from the state dir alone (so ``down`` can
    clean up after a crash that left no state file)."""

    id: str
    netns: str
    host_veth: str
    cgroup: str

    @classmethod
    def of(cls, state_dir: Path) -> Names:
        i = node_id(state_dir)
        return cls(id=i, netns=f"lamina-{i}", host_veth=f"lmh{i}", cgroup=f"lamina-{i}")

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}"
        )
    return done


def _link_in_use(net: ipaddress.IPv4Network) -> bool:
    routes = _run("ip", "-4", "-o", "route", "show", "table", "all", check=False).stdout
    addrs = _run("ip", "-4", "-o", "addr", "show", check=False).stdout
    for word in (routes + " " + addrs).split():
        with contextlib.suppress(ValueError):
            if ipaddress.ip_network(word, strict=False).overlaps(net) and word not in ("0.0.0.0/0",):
                return True
    return False


def pick_link(names: Names) -> tuple[str, str]:
    """(host ip, node ip) of a free /30 in LINK_RANGE, starting at the block the id names."""
    blocks = LINK_RANGE.num_addresses // 4
    start = int(names.id, 16) % blocks
    for k in range(blocks):
        net = ipaddress.ip_network(f"{LINK_RANGE.network_address + 4 * ((start + k) % blocks)}/30")
        if not _link_in_use(net):
            hosts = list(net.hosts())
            return str(hosts[0]), str(hosts[1])
    raise RuntimeError(f"no free /30 left in {LINK_RANGE}")


# ------------------------------------------------------------------------------------- host network


def create_network(names: Names, host_ip: str, node_ip: str) -> None:
    """The node's network namespace with its veth to the host; nothing else is routed."""
    remove_network(names)
    _run("ip", "netns", "add", names.netns)
    try:
        _run("ip", "link", "add", names.host_veth, "type", "veth", "peer", "name", f"lmn{names.id}")
        _run("ip", "link", "set", f"lmn{names.id}", "netns", names.netns)
        _run("ip", "addr", "add", f"{host_ip}/30", "dev", names.host_veth)
        _run("ip", "link", "set", names.host_veth, "up")
        ns = ("ip", "netns", "exec", names.netns)
        _run(*ns, "ip", "link", "set", "lo", "up")
        _run(*ns, "ip", "link", "set", f"lmn{names.id}", "name", "eth0")
        _run(*ns, "ip", "addr", "add", f"{node_ip}/30", "dev", "eth0")
        _run(*ns, "ip", "link", "set", "eth0", "up")
        # Nothing leaves: what is not on the link, the bridge or a Service answers "unreachable".
        _run(*ns, "ip", "route", "add", "unreachable", "default")
        for key, value in (
            ("net/ipv4/ip_forward", "1"),  # pods <-> node IP and Service VIPs, inside the namespace only
            ("net/bridge/bridge-nf-call-iptables", "1"),  # kube-proxy's rules see bridged pod traffic
            ("net/ipv4/conf/all/route_localnet", "1"),
        ):
            _run(*ns, "sh", "-c", f"echo {value} > /proc/sys/{key}", check=False)
    except BaseException:
        remove_network(names)
        raise


def remove_network(names: Names) -> None:
    """Delete the namespace (its veth end goes with it, and so the host end) and any stray host end."""
    if Path(names.netns_path).exists():
        _run("ip", "netns", "delete", names.netns, check=False)
    if Path(f"/sys/class/net/{names.host_veth}").exists():
        _run("ip", "link", "delete", names.host_veth, check=False)


def cgroup_dirs(names: Names) -> list[Path]:
    """The node's cgroup in every mounted hierarchy (cgroup v1 here: cpu, memory, ... and unified)."""
    root = Path("/sys/fs/cgroup")
    out = []
    if (root / "cgroup.controllers").exists():  # pure cgroup v2
        out.append(root / names.cgroup)
    else:
        out += [h / names.cgroup for h in sorted(root.iterdir()) if h.is_dir() and not h.is_symlink()]
    return out


def create_cgroups(names: Names) -> None:
    """/lamina-<id> in every hierarchy: the kubelet's cgroupRoot, which it requires to exist."""
    for d in cgroup_dirs(names):
        d.mkdir(exist_ok=True)
        if d.parent.name == "cpuset":  # a cpuset without cpus and mems cannot hold tasks or children
            for f in ("cpuset.cpus", "cpuset.mems"):
                (d / f).write_text((d.parent / f).read_text())


def remove_cgroups(names: Names, timeout: float = 15.0) -> list[str]:
    """Remove the node's cgroups bottom-up once they are empty; return what could not be removed."""
    left: list[str] = []
    deadline = time.monotonic() + timeout
    for top in cgroup_dirs(names):
        if not top.exists():
            continue
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for d in [*dirs, top]:
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    procs = (d / "cgroup.procs").read_text().split() if (d / "cgroup.procs").exists() else []
                    for pid in procs:  # only a node process can be here: kill what the PID namespace missed
                        with contextlib.suppress(ProcessLookupError, ValueError):
                            os.kill(int(pid), signal.SIGKILL)
                    if time.monotonic() > deadline:
                        left.append(str(d))
                        break
                    time.sleep(0.1)
    return left


# ------------------------------------------------------------------------------------ configuration


def pause_archive(pause_bin: Path, out: Path, name: str) -> None:
    """An OCI image archive holding only the pause binary (what ``ctr images import`` reads)."""
    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo("pause")
        data = pause_bin.read_bytes()
        info.size, info.mode, info.mtime = len(data), 0o755, 0
        t.addfile(info, io.BytesIO(data))
    layer = layer_buf.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    layer_gz = gzip.compress(layer, mtime=0)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()

    def desc(media: str, blob: bytes) -> dict:
        return {"mediaType": media, "digest": "sha256:" + hashlib.sha256(blob).hexdigest(), "size": len(blob)}

    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": desc("application/vnd.oci.image.config.v1+json", config),
            "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", layer_gz)],
        }
    ).encode()
    mdesc = desc("application/vnd.oci.image.manifest.v1+json", manifest)
    mdesc["annotations"] = {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name}
    index = json.dumps({"schemaVersion": 2, "manifests": [mdesc]}).encode()
    with tarfile.open(out, "w") as t:
        for path, blob in (
            ("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'),
            ("index.json", index),
            *((f"blobs/sha256/{hashlib.sha256(b).hexdigest()}", b) for b in (config, layer_gz, manifest)),
        ):
            info = tarfile.TarInfo(path)
            info.size = len(blob)
            t.addfile(info, io.BytesIO(blob))


@dataclass
class NodeConfig:
    """What the node's init needs, written to ``<state>/node/node.json`` by the host side."""

    state_dir: str
    bin_dir: str
    node_ip: str
    cgroup: str
    pause_image: str
    service_dns_ip: str = ""

    @property
    def root(self) -> Path:
        return Path(self.state_dir) / "node"

    @property
    def socket(self) -> Path:
        return self.root / "containerd.sock"

    def save(self) -> None:
        (self.root / "node.json").write_text(json.dumps(self.__dict__, indent=2) + "\n")

    @classmethod
    def load(cls, state_dir: Path) -> NodeConfig:
        return cls(**json.loads((state_dir / "node" / "node.json").read_text()))


def write_configs(cfg: NodeConfig, server: str, pki: Path, kubeconfigs: dict[str, Path]) -> None:
    """containerd, CNI, kubelet, kube-proxy and CoreDNS configuration under ``<state>/node``."""
    root = cfg.root
    for d in ("containerd-root", "cni", "cni-ipam", "cni-cache", "kubelet", "pod-logs"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "containerd.toml").write_text(
        f"""version = 2
root = "{root / "containerd-root"}"
state = "/run/containerd"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{cfg.socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{root / "containerd-opt"}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{cfg.pause_image}"
  # This machine forbids lowering oom_score_adj; without this runc fails every sandbox with
  # "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{root / "cni"}"
    max_conf_num = 1
"""
    )
    (root / "cni" / "10-lamina.conflist").write_text(
        json.dumps(
            {
                "cniVersion": "0.4.0",
                "name": "lamina",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": "cni0",
                        "isGateway": True,
                        "hairpinMode": True,
                        "ipam": {
                            "type": "host-local",
                            "ranges": [[{"subnet": POD_SUBNET}]],
                            "routes": [{"dst": "0.0.0.0/0"}],
                            "dataDir": str(root / "cni-ipam"),
                        },
                    }
                ],
            },
            indent=2,
        )
    )
    kubelet = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{cfg.cgroup}",
        "failSwapOn": False,
        "failCgroupV1": False,
        "containerRuntimeEndpoint": f"unix://{cfg.socket}",
        "address": cfg.node_ip,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "tlsCertFile": str(pki / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(pki / "client-ca.crt")},
        },
        "authorization": {"mode": "AlwaysAllow"},  # only the API server holds a client certificate
        "clusterDomain": CLUSTER_DOMAIN,
        "clusterDNS": [cfg.node_ip],
        "resolvConf": "",  # no search domains or resolvers of the host leak into pods
        "podLogsDir": str(root / "pod-logs"),
        "oomScoreAdj": 0,
        "serializeImagePulls": False,
        # Loaded images are the only ones there are: never collect them, never evict for disk.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "maxPods": 110,
        "nodeStatusUpdateFrequency": "10s",
        "rotateCertificates": False,
        "registerNode": True,
    }
    (root / "kubelet.json").write_text(json.dumps(kubelet, indent=2))
    proxy = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfigs["kube-proxy"])},
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "hostnameOverride": NODE_NAME,
        "bindAddress": cfg.node_ip,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "nodePortAddresses": [f"{cfg.node_ip}/32"],
        "oomScoreAdj": 0,
        # conntrack limits are global to the machine: leave the host's alone.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        # Masquerade every Service connection, so replies from a pod on the same bridge come back
        # through the node and are translated back.
        "iptables": {"masqueradeAll": True, "minSyncPeriod": "0s", "syncPeriod": "30s"},
    }
    (root / "kube-proxy.json").write_text(json.dumps(proxy, indent=2))
    (root / "Corefile").write_text(
        f""".:53 {{
    bind {cfg.node_ip}
    errors
    health 127.0.0.1:8080
    ready 127.0.0.1:8181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfigs["coredns"]}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 30
}}
"""
    )
    sysctl_dir = root / "sysctl"
    sysctl_dir.mkdir(exist_ok=True)
    for key, value in KUBELET_SYSCTLS.items():
        (sysctl_dir / key.replace("/", ".")).write_text(value + "\n")
    cfg.save()
    # Commands, so that the init needs no knowledge of the host's paths.
    b = Path(cfg.bin_dir)
    commands = {
        "containerd": ["containerd", "--config", str(root / "containerd.toml")],
        "kubelet": [
            str(b / "kubelet"),
            f"--config={root / 'kubelet.json'}",
            f"--kubeconfig={kubeconfigs['kubelet']}",
            f"--root-dir={root / 'kubelet'}",
            f"--cert-dir={root / 'kubelet' / 'pki'}",
            f"--node-ip={cfg.node_ip}",
            f"--hostname-override={NODE_NAME}",
            "--node-labels=" + ",".join(f"{k}={v}" for k, v in NODE_LABELS.items()),
            "--v=1",
        ],
        "kube-proxy": [str(b / "kube-proxy"), f"--config={root / 'kube-proxy.json'}", "--v=1"],
        "coredns": [str(b / "coredns"), "-conf", str(root / "Corefile")],
    }
    (root / "commands.json").write_text(json.dumps(commands, indent=2))
    del server  # the kubeconfigs carry it


# ------------------------------------------------------------------------------------ the node's init


def _mount(*args: str) -> None:
    _run("mount", *args)


def init(state_dir: Path) -> int:
    """PID 1 of the node's PID namespace: private mounts, then the daemons; reap until told to stop."""
    cfg = NodeConfig.load(state_dir)
    root = cfg.root
    logs = state_dir / "logs"
    commands = json.loads((root / "commands.json").read_text())
    # A private /run (containerd's state, runc's, shim sockets, pod network namespaces) and CNI cache.
    _mount("-t", "tmpfs", "-o", "mode=755", "tmpfs", "/run")
    _mount("--bind", str(root / "cni-cache"), "/var/lib/cni")
    for key in KUBELET_SYSCTLS:
        _mount("--bind", str(root / "sysctl" / key.replace("/", ".")), f"/proc/sys/{key}")
    env = {**os.environ, "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def spawn(name: str) -> None:
        with open(logs / f"{name}.log", "ab") as out:
            procs[name] = subprocess.Popen(
                commands[name], stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env
            )

    def note(msg: str) -> None:
        print(f"[node-init {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    spawn("containerd")
    deadline = time.monotonic() + 60
    while not cfg.socket.exists():
        if procs["containerd"].poll() is not None or time.monotonic() > deadline:
            note("containerd did not start (see logs/containerd.log)")
            return 1
        time.sleep(0.05)
    ctr = ["ctr", "-a", str(cfg.socket), "-n", "k8s.io"]
    for _ in range(100):
        if subprocess.run([*ctr, "version"], capture_output=True, env=env).returncode == 0:
            break
        time.sleep(0.1)
    done = subprocess.run([*ctr, "images", "import", str(root / "pause.tar")], capture_output=True, env=env)
    if done.returncode != 0:
        note(f"importing the pause image failed: {done.stderr.decode(errors='replace')}")
        return 1
    for name in ("kubelet", "kube-proxy", "coredns"):
        spawn(name)
    note("node daemons started: " + ", ".join(f"{n}={p.pid}" for n, p in procs.items()))
    while not stopping:
        with contextlib.suppress(ChildProcessError):
            while True:  # reap everything: shims and containers' leftovers are re-parented to us
                pid, _ = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
        for name, p in procs.items():
            if p.returncode is not None or p.poll() is not None:
                note(f"{name} exited with {p.returncode}: stopping the node")
                stopping = True
        time.sleep(0.2)
    for name in ("kubelet", "kube-proxy", "coredns", "containerd"):
        with contextlib.suppress(ProcessLookupError):
            procs[name].terminate()
    time.sleep(1)
    return 0  # PID 1 exits: the kernel kills whatever is left in the namespace


# ------------------------------------------------------------------------------------------ host side


class RealNode:
    """The host's handle on one cluster's node (see the module docstring)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.names = Names.of(state_dir)

    @property
    def root(self) -> Path:
        return self.state_dir / "node"

    def nsenter(self) -> list[str]:
        """Prefix that runs a command in the cluster's network namespace (host mounts and PIDs)."""
        return ["nsenter", f"--net={self.names.netns_path}", "--"]

    def create_network(self) -> tuple[str, str]:
        for tool in ("ip", "nsenter", "unshare", "containerd", "ctr", "runc", "iptables", "conntrack"):
            if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
                raise RuntimeError(
                    f"the real node needs {tool}: apt-get install containerd runc "
                    "containernetworking-plugins iptables conntrack"
                )
        if not Path("/usr/lib/cni/bridge").exists():
            raise RuntimeError(
                "the real node needs the CNI plugins: apt-get install containernetworking-plugins"
            )
        host_ip, node_ip = pick_link(self.names)
        create_network(self.names, host_ip, node_ip)
        return host_ip, node_ip

    def start(self, bin_dir: Path, node_ip: str, server: str, pki: Path, kubeconfigs: dict[str, Path]) -> int:
        """Write the configuration and start the node's init; return the pid to stop it by."""
        self.root.mkdir(parents=True, exist_ok=True)
        tag = (bin_dir / "pause.version").read_text().strip()
        cfg = NodeConfig(
            state_dir=str(self.state_dir),
            bin_dir=str(bin_dir),
            node_ip=node_ip,
            cgroup=self.names.cgroup,
            pause_image=PAUSE_IMAGE.format(tag=tag),
        )
        write_configs(cfg, server, pki, kubeconfigs)
        pause_archive(bin_dir / "pause", self.root / "pause.tar", cfg.pause_image)
        Path("/var/lib/cni").mkdir(parents=True, exist_ok=True)  # mount point of the node's private CNI cache
        create_cgroups(self.names)
        logf = open(self.state_dir / "logs" / "node-init.log", "ab")
        try:
            proc = subprocess.Popen(
                [
                    *self.nsenter(),
                    "unshare", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc",
                    "--propagation", "private", "--",
                    sys.executable, "-I", str(Path(__file__).resolve()), "init", str(self.state_dir),
                ],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        finally:
            logf.close()
        return proc.pid

    def stop(self, pid: int | None) -> list[str]:
        """Kill the node (its PID namespace goes with its init), then remove namespace and cgroups.

        Returns what could not be removed (empty when clean)."""
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        if Path(self.names.netns_path).exists():
            # Whatever still runs in the cluster's network namespace is the cluster's: the control
            # plane after a crash that lost its pids, a test's file server.
            for word in _run("ip", "netns", "pids", self.names.netns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
                    os.kill(int(word), signal.SIGKILL)
        # The namespace's processes die asynchronously; their cgroups empty as they do.
        left = remove_cgroups(self.names)
        remove_network(self.names)
        if Path(self.names.netns_path).exists():
            left.append(self.names.netns_path)
        return left


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "init":
        return init(Path(argv[1]))
    print("usage: realnode.py init STATE_DIR (the node's PID 1; started by controlplane.py)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
