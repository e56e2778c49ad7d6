"""The Helm chart: lint, values schema, rendered objects accepted by a real API server, and an
operator running under exactly the RBAC the chart grants (least privilege that is still enough)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "lamina"
KUBE_VERSION = "1.34.4"  # the test control plane's; helm built without ldflags defaults to 1.20

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_operator_reconcile import GROUP, VERSION, Cluster, Operator, function  # noqa: E402

from tests.cluster.tokens import token_kubeconfig  # noqa: E402


@pytest.fixture(scope="module")
def helm() -> str:
    cp = sys.modules.get("lamina_test_controlplane")
    candidates = []
    if cp is not None:
        try:
            candidates.append(Path(cp.bin_dir(build=True)) / "helm")
        except Exception as e:  # the control-plane module reports what is missing
            pytest.fail(f"helm is not available: {e}")
    found = next((str(c) for c in candidates if c.is_file()), None)
    if found is None:
        pytest.fail("helm is not available (scripts/build-control-plane builds it)")
    return found


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, check=False)


def render(helm: str, release: str, namespace: str, *sets: str, crds: bool = False) -> list[dict[str, Any]]:
    args = ["template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION]
    if crds:
        args.append("--include-crds")
    for s in sets:
        args += ["--set", s]
    done = run_helm(helm, *args)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def test_chart_lints_strictly(helm: str) -> None:
    for values in (
        [],
        ["--set", "metrics.serviceMonitor.enabled=true", "--set", "redis.persistence.enabled=true"],
    ):
        done = run_helm(helm, "lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, *values)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("operator.bogus=1", "bogus"),
        ("gateway.service.type=Wrong", "gateway/service/type"),
        ("operator.logFormat=xml", "logFormat"),
        ("redis.url=http://not-redis", "redis/url"),
        ("redis.appendfsync=no", "redis/appendfsync"),
    ],
)
def test_values_schema_refuses_mistakes(helm: str, setting: str, complaint: str) -> None:
    done = run_helm(helm, "template", "r", str(CHART), "--kube-version", KUBE_VERSION, "--set", setting)
    assert done.returncode != 0
    assert complaint in done.stderr


@pytest.mark.parametrize(("setting", "fsync"), [(None, "always"), ("redis.appendfsync=everysec", "everysec")])
def test_the_charts_redis_syncs_the_append_only_file_as_set(
    helm: str, setting: str | None, fsync: str
) -> None:
    """By default before it answers: an async event accepted with a 202 survives a crash of the host."""
    docs = render(helm, "r", "lamina-system", *([setting] if setting else []))
    redis = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "r-lamina-redis")
    # One shell line (the ACL users' passwords come from the environment): the server's arguments.
    args = " ".join(redis["spec"]["template"]["spec"]["containers"][0]["args"]).split()
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--appendfsync") + 1] == fsync


def test_external_redis_and_namespaced_mode_render(helm: str) -> None:
    docs = render(
        helm,
        "r",
        "lamina-system",
        "redis.enabled=false",
        "redis.url=redis://redis.example:6379/0",
        "operator.watchNamespaces={team-a,team-b}",
    )
    kinds = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert ("Deployment", "r-lamina-redis") not in kinds
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    # The operator and the gateway in each watched namespace; the gateway's access keys at home.
    assert sorted((b["metadata"]["namespace"], b["metadata"]["name"]) for b in bindings) == [
        ("lamina-system", "r-lamina-gateway-access-keys"),
        ("team-a", "r-lamina-gateway"),
        ("team-a", "r-lamina-operator"),
        ("team-a", "r-lamina-operator-secret-metadata"),
        ("team-b", "r-lamina-gateway"),
        ("team-b", "r-lamina-operator"),
        ("team-b", "r-lamina-operator-secret-metadata"),
    ]
    assert ("ClusterRoleBinding", "r-lamina-operator") not in kinds
    assert ("ClusterRoleBinding", "r-lamina-operator-cluster") not in kinds
    operator = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "r-lamina-operator"
    )
    c = operator["spec"]["template"]["spec"]["containers"][0]
    assert "--namespace=team-a" in c["args"] and "--namespace=team-b" in c["args"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["LAMINA_REDIS_URL"] == "redis://redis.example:6379/0"
    assert env["LAMINA_GATEWAY_URL"] == "http://r-lamina-gateway.lamina-system.svc:8080"
    # One runtime image per Lambda runtime by default, as scripts/build-images tags them.
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert env["LAMINA_RUNTIME_IMAGE"] == f"ghcr.io/lamina-dev/runtime:{app_version}-{{runtime}}"
    assert operator["spec"]["strategy"] == {"type": "Recreate"}


def test_gateway_autoscaling_renders_an_hpa_the_api_server_accepts(
    helm: str, namespace: str, apply_yaml: Callable[..., list[dict]], k8s_api: client.ApiClient
) -> None:
    """With autoscaling on, an HPA on CPU owns the gateway's replica count (the Deployment names none,
    so a `helm upgrade` does not reset what the autoscaler chose); off, no HPA and `replicas` as set."""
    on = "gateway.autoscaling.enabled=true"
    sizes = ("gateway.autoscaling.minReplicas=2", "gateway.autoscaling.maxReplicas=4")
    docs = render(helm, "r", namespace, on, *sizes, "gateway.autoscaling.targetCPUUtilizationPercentage=60")
    [hpa] = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    gateway = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "r-lamina-gateway"
    )
    assert "replicas" not in gateway["spec"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "r-lamina-gateway",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"] == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}
    apply_yaml([hpa], namespace=namespace)
    stored = client.AutoscalingV2Api(k8s_api).read_namespaced_horizontal_pod_autoscaler(
        "r-lamina-gateway", namespace
    )
    assert stored.spec.max_replicas == 4

    plain = render(helm, "r", namespace, "gateway.replicas=3")
    assert not [d for d in plain if d["kind"] == "HorizontalPodAutoscaler"]
    gateway = next(
        d for d in plain if d["kind"] == "Deployment" and d["metadata"]["name"] == "r-lamina-gateway"
    )
    assert gateway["spec"]["replicas"] == 3

    bad = run_helm(
        helm, "template", "r", str(CHART), "--kube-version", KUBE_VERSION,
        "--set", on, "--set", "gateway.autoscaling.minReplicas=6",
    )  # fmt: skip
    assert bad.returncode != 0 and "minReplicas must not exceed" in bad.stderr


@pytest.fixture
def release(namespace: str, k8s_api: client.ApiClient) -> Iterator[str]:
    """A release name unique to the test; its cluster-scoped RBAC objects are deleted afterwards."""
    name = f"r{namespace.rsplit('-', 1)[-1]}"
    yield name
    rbac = client.RbacAuthorizationV1Api(k8s_api)
    selector = f"app.kubernetes.io/instance={name}"
    for item in rbac.list_cluster_role_binding(label_selector=selector).items:
        rbac.delete_cluster_role_binding(item.metadata.name)
    for item in rbac.list_cluster_role(label_selector=selector).items:
        rbac.delete_cluster_role(item.metadata.name)
    admission = client.AdmissionregistrationV1Api(k8s_api)
    for item in admission.list_validating_admission_policy_binding(label_selector=selector).items:
        admission.delete_validating_admission_policy_binding(item.metadata.name)
    for item in admission.list_validating_admission_policy(label_selector=selector).items:
        admission.delete_validating_admission_policy(item.metadata.name)


def test_rendered_chart_is_accepted_by_the_api_server(
    helm: str, namespace: str, release: str, apply_yaml: Callable[..., list[dict]], k8s_api: client.ApiClient
) -> None:
    docs = render(helm, release, namespace, "redis.persistence.enabled=true", crds=True)
    applied = apply_yaml(docs, namespace=namespace)
    assert len(applied) == len(docs)
    apps = client.AppsV1Api(k8s_api)
    names = sorted(d.metadata.name for d in apps.list_namespaced_deployment(namespace).items)
    assert names == sorted(f"{release}-lamina-{c}" for c in ("operator", "gateway", "redis"))
    assert client.CoreV1Api(k8s_api).read_namespaced_persistent_volume_claim(
        f"{release}-lamina-redis", namespace
    )


def test_operator_works_with_exactly_the_charts_rbac(
    helm: str,
    namespace: str,
    release: str,
    kubeconfig: str,
    apply_yaml: Callable[..., list[dict]],
    k8s_api: client.ApiClient,
    wait_until: Callable[..., Any],
) -> None:
    docs = render(helm, release, namespace, f"operator.watchNamespaces={{{namespace}}}", crds=True)
    rbac_kinds = {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "RoleBinding",
        "CustomResourceDefinition",
    }
    apply_yaml([d for d in docs if d["kind"] in rbac_kinds], namespace=namespace)
    account = f"{release}-lamina-operator"
    sa_config = token_kubeconfig(k8s_api, kubeconfig, namespace, account)

    # Least privilege: the operator may check a Secret exists, not list them. It makes the workers'
    # Roles, but cannot list Roles, nor grant more than it holds itself (no escalate/bind).
    sa_api = config.new_client_from_config(config_file=sa_config)
    with pytest.raises(ApiException) as denied:
        client.CoreV1Api(sa_api).list_namespaced_secret(namespace)
    assert denied.value.status == 403
    rbac = client.RbacAuthorizationV1Api(sa_api)
    with pytest.raises(ApiException) as denied:
        rbac.list_namespaced_role(namespace)
    assert denied.value.status == 403
    greedy = {
        "metadata": {"name": "greedy"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}],
    }
    with pytest.raises(ApiException) as denied:
        rbac.create_namespaced_role(namespace, greedy)
    assert denied.value.status == 403

    op = Operator(sa_config, namespace).start()
    try:
        cluster = Cluster(k8s_api, namespace)
        core = client.CoreV1Api(k8s_api)
        core.create_namespaced_secret(
            namespace, {"metadata": {"name": "db"}, "stringData": {"password": "x"}}
        )
        core.create_namespaced_config_map(
            namespace, {"metadata": {"name": "libs"}, "data": {"lib.py": "A = 1"}}
        )
        cluster.create(
            "layers",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "Layer",
                "metadata": {"name": "libs"},
                "spec": {"configMap": {"name": "libs"}},
            },
        )
        env_from = [{"name": "PW", "secretKeyRef": {"name": "db", "key": "password"}}]
        cluster.create("functions", function("rbac", layers=["libs"], environmentFrom=env_from))
        cluster.create(
            "eventsourcemappings",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "EventSourceMapping",
                "metadata": {"name": "tick"},
                "spec": {"functionName": "rbac", "source": {"schedule": {"expression": "rate(1 minute)"}}},
            },
        )
        cluster.wait_ready(wait_until, "functions", "rbac", timeout=90)
        cluster.wait_ready(wait_until, "eventsourcemappings", "tick", timeout=90)
        # The worker's identity was granted under the chart's RBAC (the escalation check passed).
        admin_rbac = client.RbacAuthorizationV1Api(k8s_api)
        role = admin_rbac.read_namespaced_role("esm-tick", namespace)
        assert role.rules[0].resources == ["eventsourcemappings/status"]
        assert admin_rbac.read_namespaced_role_binding("esm-tick", namespace).role_ref.name == "esm-tick"
        assert core.read_namespaced_service_account("esm-tick", namespace)
        events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=rbac").items
        assert any(e.reason == "EnvironmentsReady" or e.reason == "OnDemand" for e in events)
        assert "Forbidden" not in op.log.read_text(), op.tail()
    finally:
        op.stop()
        sys.stderr.write(f"\n--- operator log ---\n{op.tail()}\n")
        Path(sa_config).unlink(missing_ok=True)


def test_monitors_render_only_where_the_prometheus_operator_is(helm: str) -> None:
    on = "metrics.serviceMonitor.enabled=true"
    without = {d["kind"] for d in render(helm, "r", "lamina-system", on)}
    assert not {"ServiceMonitor", "PodMonitor"} & without
    args = ["template", "r", str(CHART), "--kube-version", KUBE_VERSION, "--set", on]
    done = run_helm(helm, *args, "--api-versions", "monitoring.coreos.com/v1")
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    monitors = {d["kind"]: d for d in docs if d["kind"] in ("ServiceMonitor", "PodMonitor")}
    assert monitors["ServiceMonitor"]["spec"]["endpoints"][0]["port"] == "http"
    assert monitors["PodMonitor"]["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    operator = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "r-lamina-operator"
    )
    container = operator["spec"]["template"]["spec"]["containers"][0]
    assert "--metrics-port=8082" in container["args"]
    assert {"name": "metrics", "containerPort": 8082, "protocol": "TCP"} in container["ports"]
    selector = monitors["PodMonitor"]["spec"]["selector"]["matchLabels"]
    assert selector.items() <= operator["spec"]["template"]["metadata"]["labels"].items()
