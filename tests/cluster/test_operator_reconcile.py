"""The operator against a real API server (+ controller-manager for Deployments and garbage
collection, + kwok making pods Ready). The operator runs as a subprocess watching only the test's
namespace, exactly as `lamina operator --namespace N` would in a pod."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION = "lamina.dev", "v1alpha1"
_crds_applied = False


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def crds(apply_yaml: Callable[..., list[dict]]) -> None:
    global _crds_applied
    if not _crds_applied:
        apply_yaml(sorted((REPO / "crds").glob("*.yaml")))
        _crds_applied = True


class Operator:
    """`python -m lamina.reconcilers --namespace NS` as a child process."""

    def __init__(
        self, kubeconfig: str, namespace: str, *args: str, env: dict[str, str] | None = None
    ) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.args = list(args)
        self.env = dict(env or {})
        self.log = Path(tempfile.mkstemp(prefix="lamina-operator-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Operator:
        env = {
            **os.environ,
            "KUBECONFIG": self.kubeconfig,
            "LAMINA_RESYNC_SECONDS": "0",
            "LAMINA_GATEWAY_URL": "http://gateway.test:8080",
            "LAMINA_RUNTIME_IMAGE": "registry.test/runtime:{runtime}",
            **self.env,
        }
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "lamina.reconcilers",
                    "--namespace",
                    self.namespace,
                    "--log-format=plain",
                    *self.args,
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies under the operator."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def tail(self, lines: int = 80) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def operator(kubeconfig: str, namespace: str, crds: None) -> Iterator[Operator]:
    op = Operator(kubeconfig, namespace).start()
    yield op
    op.stop()
    # pytest shows captured teardown output only for tests that failed.
    sys.stderr.write(f"\n--- operator log ---\n{op.tail()}\n")
    op.log.unlink(missing_ok=True)


class Cluster:
    """Typed views of what the tests read and write, as camelCase dicts."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api = api
        self.ns = namespace
        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)

    def plain(self, obj: Any) -> dict[str, Any]:
        return self.api.sanitize_for_serialization(obj)

    def create(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, plural, body)

    def get(self, plural: str, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, plural, name)

    def patch(self, plural: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.ns, plural, name, {"spec": spec}
        )

    def delete(self, plural: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.ns, plural, name)

    def _read(self, read: Callable[[str, str], Any], name: str) -> dict[str, Any] | None:
        try:
            return self.plain(read(name, self.ns))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def deployment(self, name: str) -> dict[str, Any] | None:
        return self._read(self.apps.read_namespaced_deployment, name)

    def service(self, name: str) -> dict[str, Any] | None:
        return self._read(self.core.read_namespaced_service, name)

    def config_map(self, name: str) -> dict[str, Any] | None:
        return self._read(self.core.read_namespaced_config_map, name)

    def ready(self, plural: str, name: str) -> dict[str, Any] | None:
        """The Ready condition of an object's current generation, if written."""
        obj = self.get(plural, name)
        status = obj.get("status") or {}
        if status.get("observedGeneration") != obj["metadata"]["generation"]:
            return None
        return next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), None)

    def _wait(
        self,
        wait_until: Callable[..., Any],
        predicate: Callable[[], Any],
        plural: str,
        name: str,
        what: str,
        timeout: float,
    ) -> Any:
        try:
            return wait_until(predicate, timeout=timeout, message=f"{plural}/{name} {what}")
        except AssertionError as e:  # say where it got stuck
            raise AssertionError(f"{e}; status now: {self.get(plural, name).get('status')}") from None

    def wait_ready(self, wait_until: Callable[..., Any], plural: str, name: str, timeout: float = 60) -> dict:
        return self._wait(
            wait_until,
            lambda: (c := self.ready(plural, name)) and c["status"] == "True" and c,
            plural,
            name,
            "Ready=True",
            timeout,
        )

    def wait_reason(self, wait_until: Callable[..., Any], plural: str, name: str, reason: str) -> dict:
        return self._wait(
            wait_until,
            lambda: (c := self.ready(plural, name)) and c["reason"] == reason and c,
            plural,
            name,
            f"Ready reason {reason}",
            60,
        )


@pytest.fixture
def cluster(k8s_api: client.ApiClient, namespace: str) -> Cluster:
    return Cluster(k8s_api, namespace)


def function(name: str, **spec: Any) -> dict[str, Any]:
    body = {"handler": "index.handler", "code": {"inline": "def handler(event, context):\n    return 1\n"}}
    body.update(spec)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Function", "metadata": {"name": name}, "spec": body}


def container(dep: dict[str, Any]) -> dict[str, Any]:
    return dep["spec"]["template"]["spec"]["containers"][0]


def controller_of(obj: dict[str, Any]) -> dict[str, Any]:
    refs = [r for r in obj["metadata"].get("ownerReferences") or [] if r.get("controller")]
    assert len(refs) == 1, obj["metadata"].get("ownerReferences")
    return refs[0]


# ------------------------------------------------------------------------------------------------ tests


def test_invalid_manifest_is_rejected_by_the_api_server_naming_the_field(
    cluster: Cluster, crds: None
) -> None:
    with pytest.raises(ApiException) as bad_timeout:
        cluster.create("functions", function("bad", timeoutSeconds=0))
    assert bad_timeout.value.status == 422
    assert "spec.timeoutSeconds" in bad_timeout.value.body
    with pytest.raises(ApiException) as two_sources:
        cluster.create("functions", function("bad", code={"inline": "x", "configMap": {"name": "c"}}))
    assert two_sources.value.status == 422
    assert "spec.code" in two_sources.value.body
    ordered_but_scaled = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "EventSourceMapping",
        "metadata": {"name": "bad"},
        "spec": {
            "functionName": "f",
            "source": {"redis": {"url": "redis://127.0.0.1:6379", "stream": "s"}},
            "scalingConfig": {"maximumConcurrency": 4},
        },
    }
    with pytest.raises(ApiException) as scaled:
        cluster.create("eventsourcemappings", ordered_but_scaled)
    assert scaled.value.status == 422
    assert "spec.scalingConfig: applies to rabbitmq, sqs and kafka sources only" in scaled.value.body
    for spec, message in [
        (
            {"source": {"sqs": {"queueUrl": "http://sqs:9324/0/q.fifo"}}, "batchSize": 20},
            "spec.batchSize: at most 10 for an SQS FIFO queue",
        ),
        (
            {"source": {"sqs": {"queueUrl": "http://sqs:9324/0/q"}}, "batchSize": 100},
            "spec.maximumBatchingWindowSeconds: at least 1 for an SQS batchSize over 10",
        ),
        (
            {
                "source": {"redis": {"url": "redis://r:6379", "stream": "s"}},
                "startingPosition": "AT_TIMESTAMP",
            },
            "spec.startingPosition: AT_TIMESTAMP applies to kafka sources only",
        ),
        (
            {
                "source": {"kafka": {"bootstrapServers": ["k:9092"], "topic": "t"}},
                "startingPosition": "AT_TIMESTAMP",
            },
            "spec.startingPositionTimestamp: required with startingPosition AT_TIMESTAMP",
        ),
    ]:
        body = {**ordered_but_scaled, "spec": {"functionName": "f", **spec}}
        with pytest.raises(ApiException) as refused:
            cluster.create("eventsourcemappings", body)
        assert refused.value.status == 422
        assert message in refused.value.body, refused.value.body


def test_function_gets_children_with_owner_refs_and_becomes_ready(
    operator: Operator, cluster: Cluster, wait_until: Callable[..., Any]
) -> None:
    fn = cluster.create("functions", function("hello", provisionedConcurrency=2, memoryMB=256))
    uid = fn["metadata"]["uid"]
    cond = cluster.wait_ready(wait_until, "functions", "hello")
    assert cond["reason"] == "EnvironmentsReady"
    status = cluster.get("functions", "hello")["status"]
    assert status["readyEnvironments"] == 2
    assert status["codeDigest"]

    dep = cluster.deployment("fn-hello")
    svc = cluster.service("fn-hello")
    code = cluster.config_map("hello-code")
    assert dep is not None and svc is not None and code is not None
    for child in (dep, svc, code):
        owner = controller_of(child)
        assert (owner["kind"], owner["name"], owner["uid"]) == ("Function", "hello", uid)
    assert code["data"]["index.py"].startswith("def handler")
    assert dep["spec"]["replicas"] == 2
    # memoryMB plus 64 Mi for the pod's runtime server
    assert container(dep)["resources"]["limits"] == {"memory": "320Mi"}
    assert container(dep)["image"] == "registry.test/runtime:python3.12"
    assert svc["spec"]["clusterIP"] == "None"
    assert dep["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_memory_update_rolls_the_deployment(
    operator: Operator, cluster: Cluster, wait_until: Callable[..., Any]
) -> None:
    cluster.create("functions", function("mem", provisionedConcurrency=1))
    cluster.wait_ready(wait_until, "functions", "mem")
    before = cluster.deployment("fn-mem")
    assert before is not None
    cluster.patch("functions", "mem", {"memoryMB": 1000})
    after = wait_until(
        lambda: (
            (d := cluster.deployment("fn-mem"))
            and container(d)["resources"]["limits"]["memory"] == "1064Mi"
            and d
        ),
        message="Deployment fn-mem with 1064Mi (memoryMB 1000 + the server's 64)",
    )
    assert container(after)["resources"]["requests"]["cpu"] == "566m"
    key = "lamina.dev/config-hash"
    assert (
        after["spec"]["template"]["metadata"]["annotations"][key]
        != before["spec"]["template"]["metadata"]["annotations"][key]
    )
    cluster.wait_ready(wait_until, "functions", "mem")
    assert cluster.get("functions", "mem")["status"]["observedGeneration"] == 2


def test_deleting_a_function_garbage_collects_its_children(
    operator: Operator, cluster: Cluster, wait_until: Callable[..., Any]
) -> None:
    cluster.create("functions", function("gone"))
    cluster.wait_ready(wait_until, "functions", "gone")
    assert cluster.deployment("fn-gone") is not None
    cluster.delete("functions", "gone")
    wait_until(
        lambda: (
            cluster.deployment("fn-gone") is None
            and cluster.service("fn-gone") is None
            and cluster.config_map("gone-code") is None
        ),
        timeout=90,
        message="children of Function gone deleted by the garbage collector",
    )


def test_missing_layer_blocks_until_it_appears_and_layer_changes_roll(
    operator: Operator, cluster: Cluster, wait_until: Callable[..., Any]
) -> None:
    cluster.create("functions", function("uses", layers=["deps"]))
    cond = cluster.wait_reason(wait_until, "functions", "uses", "LayerNotFound")
    assert cond["status"] == "False"
    assert "deps" in cond["message"]
    assert cluster.deployment("fn-uses") is None

    cluster.core.create_namespaced_config_map(
        cluster.ns, {"metadata": {"name": "deps-v1"}, "data": {"lib.py": "V = 1"}}
    )
    cluster.create(
        "layers",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Layer",
            "metadata": {"name": "deps"},
            "spec": {"configMap": {"name": "deps-v1"}},
        },
    )
    cluster.wait_ready(wait_until, "layers", "deps")
    cluster.wait_ready(wait_until, "functions", "uses")
    layer = cluster.get("layers", "deps")["status"]
    assert layer["revision"] == 1 and layer["artifact"].startswith("configmap:")
    revision_cm = cluster.config_map(layer["artifact"].removeprefix("configmap:"))
    assert revision_cm is not None and revision_cm.get("immutable") is True
    assert controller_of(revision_cm)["kind"] == "Layer"
    dep = cluster.deployment("fn-uses")
    assert dep is not None
    env = {e["name"]: e.get("value") for e in container(dep)["env"]}
    assert env["LAMINA_LAYERS"] == "/opt/layers/0-deps"
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["layer-0"]["configMap"]["name"] == revision_cm["metadata"]["name"]
    assert cluster.get("functions", "uses")["status"]["layerRevisions"] == {"deps": 1}

    # New content = new revision; the function rolls to it.
    cluster.core.create_namespaced_config_map(
        cluster.ns, {"metadata": {"name": "deps-v2"}, "data": {"lib.py": "V = 2"}}
    )
    cluster.patch("layers", "deps", {"configMap": {"name": "deps-v2"}})
    wait_until(
        lambda: cluster.get("functions", "uses").get("status", {}).get("layerRevisions") == {"deps": 2},
        message="Function uses on layer revision 2",
    )
    dep2 = cluster.deployment("fn-uses")
    assert dep2 is not None
    new_volume = {v["name"]: v for v in dep2["spec"]["template"]["spec"]["volumes"]}["layer-0"]
    assert new_volume["configMap"]["name"] != revision_cm["metadata"]["name"]
    assert cluster.config_map(revision_cm["metadata"]["name"]) is not None  # old revision kept for rollbacks


def test_missing_secret_is_reported_and_retried(
    operator: Operator, cluster: Cluster, wait_until: Callable[..., Any]
) -> None:
    ref = {"name": "DB_PASSWORD", "secretKeyRef": {"name": "db", "key": "password"}}
    cluster.create("functions", function("secretive", environmentFrom=[ref]))
    cond = cluster.wait_reason(wait_until, "functions", "secretive", "SecretNotFound")
    assert "Secret db" in cond["message"]
    # The operator checks that the Secret exists by its metadata; it never reads its keys or values.
    cluster.core.create_namespaced_secret(
        cluster.ns, {"metadata": {"name": "db"}, "stringData": {"password": "s3cret"}}
    )
    cluster.wait_ready(wait_until, "functions", "secretive", timeout=120)
    dep = cluster.deployment("fn-secretive")
    assert dep is not None
    env = {e["name"]: e for e in container(dep)["env"]}
    assert env["DB_PASSWORD"]["valueFrom"] == {"secretKeyRef": {"name": "db", "key": "password"}}


def test_requirements_layers_are_reported_as_not_supported(
    operator: Operator, cluster: Cluster, wait_until: Callable[..., Any]
) -> None:
    cluster.create(
        "layers",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Layer",
            "metadata": {"name": "reqs"},
            "spec": {"requirements": ["requests==2.32.3"]},
        },
    )
    cond = cluster.wait_reason(wait_until, "layers", "reqs", "NotSupportedYet")
    assert cond["status"] == "False"


def test_replicas_above_provisioned_are_left_to_the_gateway(
    operator: Operator, cluster: Cluster, wait_until: Callable[..., Any]
) -> None:
    cluster.create("functions", function("scaled", provisionedConcurrency=1))
    cluster.wait_ready(wait_until, "functions", "scaled")
    # The gateway starts on-demand environments through the scale subresource, as its own manager.
    cluster.apps.patch_namespaced_deployment_scale(
        "fn-scaled", cluster.ns, {"spec": {"replicas": 4}}, field_manager="lamina-gateway"
    )
    cluster.patch("functions", "scaled", {"timeoutSeconds": 10})
    dep = wait_until(
        lambda: (
            (d := cluster.deployment("fn-scaled"))
            and d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 15
            and d
        ),
        message="Deployment fn-scaled updated for the new timeout",
    )
    assert dep["spec"]["replicas"] == 4
    cluster.patch("functions", "scaled", {"provisionedConcurrency": 6})
    wait_until(
        lambda: cluster.deployment("fn-scaled")["spec"]["replicas"] == 6, message="replicas raised to 6"
    )
    cluster.wait_ready(wait_until, "functions", "scaled")
    assert cluster.get("functions", "scaled")["status"]["readyEnvironments"] == 6


def test_event_source_mapping_runs_a_worker_and_follows_enabled(
    operator: Operator, cluster: Cluster, wait_until: Callable[..., Any]
) -> None:
    esm = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "EventSourceMapping",
        "metadata": {"name": "orders"},
        "spec": {
            "functionName": "consumer",
            "source": {"redis": {"url": "redis://r:6379", "stream": "orders"}},
        },
    }
    cluster.create("eventsourcemappings", esm)
    cond = cluster.wait_reason(wait_until, "eventsourcemappings", "orders", "FunctionNotFound")
    assert "consumer" in cond["message"]
    cluster.create("functions", function("consumer"))
    cluster.wait_ready(wait_until, "eventsourcemappings", "orders")
    obj = cluster.get("eventsourcemappings", "orders")
    assert obj["status"]["state"] == "Enabled"
    assert obj["status"]["source"] == "redis orders"
    worker = cluster.deployment("esm-orders")
    assert worker is not None and worker["spec"]["replicas"] == 1
    assert controller_of(worker)["kind"] == "EventSourceMapping"
    assert container(worker)["command"][:3] == ["lamina", "worker", "esm"]

    cluster.patch("eventsourcemappings", "orders", {"enabled": False})
    cond = cluster.wait_reason(wait_until, "eventsourcemappings", "orders", "Disabled")
    assert cond["status"] == "True"
    assert cluster.deployment("esm-orders")["spec"]["replicas"] == 0
    assert cluster.get("eventsourcemappings", "orders")["status"]["state"] == "Disabled"


def test_operator_killed_mid_reconcile_converges_after_restart_without_duplicates(
    operator: Operator, cluster: Cluster, wait_until: Callable[..., Any]
) -> None:
    names = [f"f{i}" for i in range(8)]
    for name in names:
        cluster.create(
            "functions", function(name, provisionedConcurrency=1, layers=["late"] if name == "f0" else [])
        )
    # Kill it as soon as it has started making children: some functions are done, others are not.
    wait_until(lambda: any(cluster.deployment(f"fn-{n}") for n in names[1:]), message="a first Deployment")
    operator.kill()
    cluster.patch("functions", "f1", {"memoryMB": 512})  # changed while nobody watches
    cluster.create(
        "layers",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Layer",
            "metadata": {"name": "late"},
            "spec": {"url": "https://example.com/late.zip", "sha256": "ab" * 32},
        },
    )
    operator.start()
    for name in names:
        cluster.wait_ready(wait_until, "functions", name, timeout=120)
    deployments = cluster.plain(cluster.apps.list_namespaced_deployment(cluster.ns))["items"]
    assert sorted(d["metadata"]["name"] for d in deployments) == sorted(f"fn-{n}" for n in names)
    services = cluster.plain(cluster.core.list_namespaced_service(cluster.ns))["items"]
    assert sorted(s["metadata"]["name"] for s in services) == sorted(f"fn-{n}" for n in names)
    for dep in deployments:
        assert len(dep["metadata"]["ownerReferences"]) == 1
        assert dep["spec"]["replicas"] == 1
    f1 = cluster.deployment("fn-f1")
    assert f1 is not None and container(f1)["resources"]["limits"]["memory"] == "576Mi"
    f0 = cluster.deployment("fn-f0")
    assert f0 is not None
    assert [c["name"] for c in f0["spec"]["template"]["spec"]["initContainers"]] == ["fetch-layer-0"]
    # Function objects carry no finalizer: deleting them never waits for the operator.
    assert not cluster.get("functions", "f0")["metadata"].get("finalizers")


def test_switching_code_source_replaces_the_mount_and_removes_the_inline_config_map(
    operator: Operator, cluster: Cluster, wait_until: Callable[..., Any]
) -> None:
    # What this test is about is what the operator applies: the code volume of the Deployment and the
    # inline code's ConfigMap. It waits on exactly that, never on Ready, which also needs the
    # Deployment controller to observe the Deployment (kube-controller-manager's pace under load).
    def code_volume() -> str | None:
        dep = cluster.deployment("fn-switch")
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]} if dep else {}
        return (volumes.get("code") or {}).get("configMap", {}).get("name")

    cluster.create("functions", function("switch"))
    wait_until(
        lambda: code_volume() == "switch-code" and cluster.config_map("switch-code") is not None,
        message="the Deployment fn-switch mounting the inline code's ConfigMap switch-code",
    )
    cluster.core.create_namespaced_config_map(
        cluster.ns, {"metadata": {"name": "src"}, "data": {"index.py": "def handler(e, c):\n    return 2\n"}}
    )
    cluster.patch("functions", "switch", {"code": {"inline": None, "configMap": {"name": "src"}}})
    wait_until(
        lambda: code_volume() == "src",
        message="the Deployment fn-switch mounting ConfigMap src in place of the inline code",
    )
    wait_until(lambda: cluster.config_map("switch-code") is None, message="inline code ConfigMap deleted")
    assert cluster.config_map("src") is not None  # the user's ConfigMap is never touched


def test_layer_for_another_runtime_is_refused(
    operator: Operator, cluster: Cluster, wait_until: Callable[..., Any]
) -> None:
    cluster.create(
        "layers",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Layer",
            "metadata": {"name": "old"},
            "spec": {
                "url": "https://example.com/old.zip",
                "sha256": "cd" * 32,
                "compatibleRuntimes": ["python3.11"],
            },
        },
    )
    cluster.wait_ready(wait_until, "layers", "old")
    cluster.create("functions", function("modern", runtime="python3.13", layers=["old"]))
    cond = cluster.wait_reason(wait_until, "functions", "modern", "LayerIncompatible")
    assert "python3.13" in cond["message"] and "old" in cond["message"]
    assert cluster.deployment("fn-modern") is None
