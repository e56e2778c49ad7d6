"""The real-pod tier: lamina installed with `helm install` on the test cluster's real node, with the
images scripts/build-images built, and driven from outside as a user would (boto3 and plain HTTP to
the gateway's NodePort, on the node's IP inside the cluster's own network namespace).

One release serves the session: ``lamina`` in ``lamina-system``, watching the one namespace
``lamina-e2e`` where the tests put their Functions (each test its own names, deleted afterwards). The
chart's own ServiceAccounts and RBAC, its Redis, the operator and the gateway all run as pods.

Authentication is on, as the chart's default: the tests call the gateway with an access key (a Secret of
type ``lamina.dev/access-key``) acting as the user ``lamina-e2e-tester``, whom a Role in ``lamina-e2e``
allows to invoke, get and list functions; their requests are signed with SigV4 as boto3 signs. The
chart's Redis takes its password from the chart's Secret.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.cluster.pods import images
from tests.cluster.pods.auth import AccessKey, grant_access_key, signed_request
from tests.support.local_mode import lambda_client

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "lamina"
RELEASE = "lamina"
SYSTEM_NS = "lamina-system"
FUNCTIONS_NS = "lamina-e2e"
GROUP, VERSION = "lamina.dev", "v1alpha1"
REAL_NODE = "lamina-node"


def run(*cmd: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="session")
def node_cluster(control_plane: Any, request: pytest.FixtureRequest) -> Any:
    """The session's local cluster, which must have a real node."""
    if control_plane is None:
        pytest.fail("real-pod tests need the local test cluster (unset KUBECONFIG)", pytrace=False)
    if not control_plane.real_node:
        pytest.fail(
            f"the test cluster in {control_plane.state_dir} has no real node: "
            "run `scripts/test-cluster up --real-node` (or down, and let pytest start one)",
            pytrace=False,
        )
    return control_plane


@pytest.fixture(scope="session")
def image_values(node_cluster: Any) -> Path:
    """The Helm values file naming the images scripts/build-images loaded into the node."""
    try:
        return images.load(node_cluster.state_dir)
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def helm(node_cluster: Any) -> Callable[..., subprocess.CompletedProcess[str]]:
    exe = str(node_cluster.bin_dir / "helm")

    def call(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return run(exe, "--kubeconfig", str(node_cluster.kubeconfig), *args, check=check, timeout=timeout)

    return call


@dataclass
class Lamina:
    """The installed release and how a user reaches it."""

    api: client.ApiClient
    node_ip: str
    gateway_port: int
    values: Path
    #: The access key calls are signed with; None for a release installed with auth.enabled=false.
    key: AccessKey | None = None
    namespace: str = FUNCTIONS_NS
    region: str = "us-east-1"
    created: list[tuple[str, str]] = field(default_factory=list)

    @property
    def gateway_url(self) -> str:
        return f"http://{self.node_ip}:{self.gateway_port}"

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def lambda_client(self, read_timeout: float = 60) -> Any:
        """boto3's Lambda client signing with the tests' access key."""
        if self.key is None:
            return lambda_client(self.gateway_url, read_timeout, region=self.region)
        return lambda_client(
            self.gateway_url, read_timeout, key=self.key.key_id, secret=self.key.secret, region=self.region
        )

    def urlopen(self, url: str, data: bytes | None = None, method: str = "GET", timeout: float = 30) -> Any:
        """``urllib.request.urlopen`` of a gateway URL (the HTTP trigger), signed with SigV4."""
        if self.key is None:
            return urllib.request.urlopen(urllib.request.Request(url, data, method=method), timeout=timeout)
        return urllib.request.urlopen(
            signed_request(self.key, self.region, url, data, method), timeout=timeout
        )

    def invoke(self, name: str, payload: Any = None, **kw: Any) -> tuple[dict[str, Any], Any]:
        """boto3 Invoke; returns (response, decoded payload)."""
        r = self.lambda_client(read_timeout=kw.pop("read_timeout", 60)).invoke(
            FunctionName=name, Payload=json.dumps(payload if payload is not None else {}), **kw
        )
        body = r["Payload"].read()
        return r, (json.loads(body) if body else None)

    def get(self, plural: str, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, plural, name)

    def apply(self, manifest: str | dict | list) -> list[dict[str, Any]]:
        """Apply YAML text (or objects) into the functions namespace; remembered for clean-up."""
        from tests.cluster.conftest import apply_objects

        applied = apply_objects(self.api, manifest, namespace=self.namespace)
        for obj in applied:
            self.created.append((obj["kind"], obj["metadata"]["name"]))
        return applied

    def condition(self, plural: str, name: str, kind: str = "Ready") -> dict[str, Any] | None:
        status = self.get(plural, name).get("status") or {}
        return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)

    def wait_ready(self, name: str, plural: str = "functions", timeout: float = 180) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            obj = self.get(plural, name)
            gen = obj["metadata"].get("generation")
            st = obj.get("status") or {}
            cond = next((c for c in st.get("conditions") or [] if c.get("type") == "Ready"), None)
            if cond and cond.get("status") == "True" and st.get("observedGeneration") == gen:
                return obj
            return None

        try:
            return wait_for(ready, timeout, f"{plural}/{name} Ready")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.diagnose(plural, name)}") from None

    def diagnose(self, plural: str, name: str) -> str:
        """What a failed wait should show: the object's status, its pods, the operator's last lines."""
        lines = []
        with contextlib.suppress(ApiException):
            lines.append(f"{plural}/{name} status: {json.dumps(self.get(plural, name).get('status'))}")
        if plural == "functions":
            with contextlib.suppress(ApiException):
                dep = self.apps.read_namespaced_deployment(f"fn-{name}", self.namespace)
                lines.append(
                    f"deployment fn-{name}: generation {dep.metadata.generation}, "
                    f"observed {dep.status.observed_generation}, replicas {dep.spec.replicas}, "
                    f"status {dep.status.to_dict()}"
                )
        for pod in self.pods(name):
            lines.append(f"pod {pod.metadata.name}: {pod.status.phase} {pod.status.container_statuses}")
        selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator"
        for pod in self.core.list_namespaced_pod(SYSTEM_NS, label_selector=selector).items:
            with contextlib.suppress(ApiException):
                log = self.core.read_namespaced_pod_log(pod.metadata.name, SYSTEM_NS, tail_lines=40)
                lines.append(f"--- operator {pod.metadata.name} (last 40 lines):\n{log}")
        return "\n".join(lines)

    def pods(self, function: str) -> list[client.V1Pod]:
        """The function's environments: pods of its Deployment and warm pool pods claimed for it."""
        components = "app.kubernetes.io/component in (execution-environment,pool)"
        return self.core.list_namespaced_pod(
            self.namespace, label_selector=f"lamina.dev/function={function},{components}"
        ).items

    def free_millicores(self, node: str = REAL_NODE) -> int:
        """CPU the scheduler can still give out on ``node``: allocatable minus the requests of the
        pods bound to it that are not finished (a function pod requests memoryMB / 1769 of a CPU)."""
        allocatable = millicores(self.core.read_node(node).status.allocatable["cpu"])
        pods = self.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items
        used = sum(
            millicores((c.resources.requests or {}).get("cpu", "0"))
            for pod in pods
            if pod.status.phase not in ("Succeeded", "Failed")
            for c in pod.spec.containers
            if c.resources is not None
        )
        return allocatable - used

    def deployment(self, function: str) -> client.V1Deployment:
        return self.apps.read_namespaced_deployment(f"fn-{function}", self.namespace)

    def scoped(self) -> Lamina:
        """The same release, remembering its own objects to clean up."""
        return dataclasses.replace(self, created=[])

    def delete_created(self) -> None:
        plurals = {"Function": "functions", "Layer": "layers", "EventSourceMapping": "eventsourcemappings"}
        for kind, name in reversed(self.created):
            with contextlib.suppress(ApiException):
                if kind in plurals:
                    self.custom.delete_namespaced_custom_object(
                        GROUP, VERSION, self.namespace, plurals[kind], name
                    )
                elif kind == "ConfigMap":
                    self.core.delete_namespaced_config_map(name, self.namespace)
                elif kind == "Secret":
                    self.core.delete_namespaced_secret(name, self.namespace)
        self.created.clear()


def millicores(quantity: str) -> int:
    """A CPU quantity ("2", "350m", "0.5") in millicores."""
    if quantity.endswith("m"):
        return int(quantity[:-1])
    return round(float(quantity) * 1000)


def wait_for(predicate: Callable[[], Any], timeout: float, message: str, interval: float = 0.2) -> Any:
    """Poll until truthy and return that; API 404s count as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(ApiException):
            result = predicate()
            if result:
                return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message}")
        time.sleep(interval)


def install_args(values: Path, *extra: str) -> list[str]:
    return [
        "upgrade", "--install", RELEASE, str(CHART), "--namespace", SYSTEM_NS, "--create-namespace",
        "-f", str(values),
        "--set", f"operator.watchNamespaces={{{FUNCTIONS_NS}}}",
        "--set", "gateway.service.type=NodePort",
        "--wait", "--timeout", "5m", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="session")
def lamina_release(
    node_cluster: Any, image_values: Path, helm: Callable[..., Any], k8s_api: client.ApiClient
) -> Lamina:
    """`helm install` of the chart with the built images (kept installed: a rerun upgrades it)."""
    core = client.CoreV1Api(k8s_api)
    with contextlib.suppress(ApiException):
        core.create_namespace({"metadata": {"name": FUNCTIONS_NS}})
    helm(*install_args(image_values))
    key = grant_access_key(k8s_api, SYSTEM_NS, FUNCTIONS_NS, "lamina-e2e-tester")
    svc = core.read_namespaced_service(f"{RELEASE}-gateway", SYSTEM_NS)
    port = next(p.node_port for p in svc.spec.ports if p.name == "http")
    lam = Lamina(api=k8s_api, node_ip=node_cluster.host, gateway_port=port, values=image_values, key=key)

    wait_for(lambda: listening(lam.node_ip, port), 60, "the gateway's NodePort")
    return lam


@pytest.fixture
def lamina(lamina_release: Lamina) -> Iterator[Lamina]:
    """The release; whatever the test applies through it is deleted afterwards."""
    scoped = lamina_release.scoped()
    yield scoped
    scoped.delete_created()


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def function_yaml(name: str, code: str, **spec: Any) -> str:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Function",
        "metadata": {"name": name},
        "spec": {"handler": "index.handler", "runtime": "python3.12", "code": {"inline": code}, **spec},
    }
    return yaml.safe_dump(body)


def mapping_yaml(name: str, source: dict[str, Any], **spec: Any) -> str:
    """An EventSourceMapping of ``name`` feeding the Function of the same name."""
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "EventSourceMapping",
        "metadata": {"name": name},
        "spec": {"functionName": name, "source": source, **spec},
    }
    return yaml.safe_dump(body)


def listening(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=2):
        return True
    return False


@dataclass
class FileServer:
    """An HTTP server for zips, run in the cluster's network namespace on the node's IP: pods reach
    it, and nothing outside the namespace can."""

    root: Path
    url: str
    proc: subprocess.Popen[bytes]

    def put(self, name: str, data: bytes) -> str:
        (self.root / name).write_bytes(data)
        return f"{self.url}/{name}"


@pytest.fixture(scope="session")
def file_server(node_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileServer]:
    realnode = sys.modules["lamina_test_controlplane"].realnode
    root = tmp_path_factory.mktemp("zips")
    with socket.socket() as s:  # any port: the namespace has nothing else listening on the node IP
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            *realnode.RealNode(node_cluster.state_dir).nsenter(),
            sys.executable, "-m", "http.server", str(port),
            "--bind", node_cluster.host, "--directory", str(root),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    server = FileServer(root=root, url=f"http://{node_cluster.host}:{port}", proc=proc)
    (root / "ping").write_text("ok")

    wait_for(lambda: listening(node_cluster.host, port), 30, "the file server")
    yield server
    proc.terminate()
    proc.wait(10)


#: The chart's Redis as pods and workers reach it.
def redis_password(api: client.ApiClient) -> str:
    """The password of the chart's Redis (its ``default`` user), from the Secret the chart made."""
    import base64

    secret = client.CoreV1Api(api).read_namespaced_secret(f"{RELEASE}-redis", SYSTEM_NS)
    return base64.b64decode(secret.data["password"]).decode()


@pytest.fixture(scope="session")
def redis_in_cluster(lamina_release: Lamina) -> str:
    """The chart's Redis as a function's destination or a mapping's source names it (its password in
    the URL: tests only; a user would put the URL in a Secret and name it with urlFrom)."""
    password = redis_password(lamina_release.api)
    return f"redis://default:{password}@{RELEASE}-redis.{SYSTEM_NS}.svc:6379/0"


@pytest.fixture(scope="session")
def chart_redis(lamina_release: Lamina) -> Any:
    """A client of the chart's Redis, through a NodePort Service the test adds next to the chart's."""
    import redis

    core = lamina_release.core
    name = f"{RELEASE}-redis-e2e"
    with contextlib.suppress(ApiException):
        core.create_namespaced_service(
            SYSTEM_NS,
            {
                "metadata": {"name": name},
                "spec": {
                    "type": "NodePort",
                    "selector": {
                        "app.kubernetes.io/instance": RELEASE,
                        "app.kubernetes.io/component": "redis",
                    },
                    "ports": [{"name": "redis", "port": 6379, "targetPort": "redis"}],
                },
            },
        )
    port = core.read_namespaced_service(name, SYSTEM_NS).spec.ports[0].node_port
    r = redis.Redis(
        host=lamina_release.node_ip,
        port=port,
        password=redis_password(lamina_release.api),
        socket_timeout=10,
        decode_responses=True,
    )
    wait_for(r.ping, 60, "the chart's Redis through its NodePort")
    return r
