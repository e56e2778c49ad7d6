"""`helm install` on the real node: the chart's own pods, accounts and images, reachable from outside."""

from __future__ import annotations

import json
import urllib.request

from kubernetes import client

from tests.cluster.pods.conftest import RELEASE, SYSTEM_NS, Lamina


def test_the_release_runs_as_pods_on_the_real_node_with_the_built_images(lamina: Lamina) -> None:
    pods = lamina.core.list_namespaced_pod(SYSTEM_NS, label_selector=f"app.kubernetes.io/instance={RELEASE}")
    by_component = {p.metadata.labels["app.kubernetes.io/component"]: p for p in pods.items}
    assert set(by_component) == {"operator", "gateway", "redis"}
    values = lamina.values.read_text()
    for component, pod in by_component.items():
        assert pod.spec.node_name == "lamina-node", component
        assert pod.status.phase == "Running", component
        assert pod.status.pod_ip.startswith("10.244."), component
        image = pod.spec.containers[0].image
        repository, tag = image.rsplit(":", 1)
        assert repository in values and tag in values, (component, image)
        # Non-root on a read-only root, as the chart says; the kubelet enforced it (the pod runs).
        ctx = pod.spec.containers[0].security_context
        assert ctx.read_only_root_filesystem is True and ctx.allow_privilege_escalation is False
    assert by_component["operator"].spec.service_account_name == f"{RELEASE}-operator"
    assert by_component["gateway"].spec.service_account_name == f"{RELEASE}-gateway"


def test_the_operator_holds_the_charts_rbac_and_no_more(lamina: Lamina) -> None:
    auth = client.AuthorizationV1Api(lamina.api)

    def allowed(user: str, verb: str, resource: str, group: str = "", namespace: str | None = None) -> bool:
        review = auth.create_subject_access_review(
            {
                "spec": {
                    "user": user,
                    "groups": ["system:serviceaccounts", f"system:serviceaccounts:{SYSTEM_NS}"],
                    "resourceAttributes": {
                        "verb": verb,
                        "resource": resource,
                        "group": group,
                        **({"namespace": namespace} if namespace else {}),
                    },
                }
            }
        )
        return bool(review.status.allowed)

    operator = f"system:serviceaccount:{SYSTEM_NS}:{RELEASE}-operator"
    gateway = f"system:serviceaccount:{SYSTEM_NS}:{RELEASE}-gateway"
    ns = lamina.namespace
    assert allowed(operator, "patch", "deployments", "apps", ns)
    assert allowed(operator, "patch", "functions", "lamina.dev", ns)
    assert not allowed(operator, "delete", "nodes")
    assert not allowed(operator, "list", "secrets", namespace=ns)
    # The gateway sets replicas by patching the Deployment (a ValidatingAdmissionPolicy limits it to
    # lamina's own and to replicas); it reads no Secret where functions live.
    assert allowed(gateway, "patch", "deployments", "apps", ns)
    assert not allowed(gateway, "create", "deployments", "apps", ns)
    assert not allowed(gateway, "get", "secrets", namespace=ns)
    assert allowed(gateway, "create", "tokenreviews", "authentication.k8s.io")


def test_logs_of_a_pod_on_the_node_are_readable(lamina: Lamina) -> None:
    """`kubectl logs`: the API server reaches the kubelet on the node's IP."""
    pod = lamina.core.list_namespaced_pod(
        SYSTEM_NS, label_selector=f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator"
    ).items[0]
    text = lamina.core.read_namespaced_pod_log(pod.metadata.name, SYSTEM_NS, tail_lines=200)
    assert text.strip(), "the operator's log is empty"


def test_the_gateway_answers_through_its_node_port(lamina: Lamina) -> None:
    with urllib.request.urlopen(f"{lamina.gateway_url}/healthz", timeout=10) as r:
        assert r.status == 200
    functions = lamina.lambda_client().list_functions()["Functions"]
    assert isinstance(functions, list)
    with urllib.request.urlopen(f"{lamina.gateway_url}/metrics", timeout=10) as r:
        assert b"lamina" in r.read()
    json.dumps(functions)  # what boto3 decoded is plain data
