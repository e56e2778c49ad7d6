"""`helm upgrade` with changed values, then `helm uninstall`: nothing of the release is left but the CRDs.

A release of its own (``lamina-lc`` watching ``lamina-lc-fns``), so the session's release keeps serving.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.cluster.conftest import apply_objects
from tests.cluster.pods.auth import AccessKey, grant_access_key
from tests.cluster.pods.conftest import CHART, function_yaml, wait_for
from tests.support.local_mode import lambda_client

RELEASE = "lamina-lc"
SYSTEM = "lamina-lc"
FUNCTIONS = "lamina-lc-fns"


def install(helm: Callable[..., Any], values: Path, *sets: str) -> None:
    args = [
        "upgrade",
        "--install",
        RELEASE,
        str(CHART),
        "-n",
        SYSTEM,
        "--create-namespace",
        "-f",
        str(values),
    ]
    args += ["--set", f"operator.watchNamespaces={{{FUNCTIONS}}}", "--set", "gateway.service.type=NodePort"]
    for s in sets:
        args += ["--set", s]
    helm(*args, "--wait", "--timeout", "5m")


def invoke(node_ip: str, port: int, name: str, key: AccessKey, region: str = "us-east-1") -> Any:
    """Invoke signed with ``key`` for ``region``: the gateway takes signatures for its own region only."""
    client_ = lambda_client(
        f"http://{node_ip}:{port}", read_timeout=150, key=key.key_id, secret=key.secret, region=region
    )
    r = client_.invoke(FunctionName=name, Payload=b"{}")
    return json.loads(r["Payload"].read())


def invoke_or_none(*args: Any) -> Any:
    """:func:`invoke`, None while a gateway of the old values (the old region) still answers."""
    try:
        return invoke(*args)
    except ClientError:
        return None


def release_objects(api: client.ApiClient) -> list[str]:
    """Every object labelled as part of the release, cluster-wide."""
    selector = f"app.kubernetes.io/instance={RELEASE}"
    core, apps, rbac = client.CoreV1Api(api), client.AppsV1Api(api), client.RbacAuthorizationV1Api(api)
    found = []
    for kind, items in (
        ("Deployment", apps.list_deployment_for_all_namespaces(label_selector=selector).items),
        ("Pod", core.list_pod_for_all_namespaces(label_selector=selector).items),
        ("Service", core.list_service_for_all_namespaces(label_selector=selector).items),
        ("ServiceAccount", core.list_service_account_for_all_namespaces(label_selector=selector).items),
        ("ConfigMap", core.list_config_map_for_all_namespaces(label_selector=selector).items),
        ("Secret", core.list_secret_for_all_namespaces(label_selector=selector).items),
        ("ClusterRole", rbac.list_cluster_role(label_selector=selector).items),
        ("ClusterRoleBinding", rbac.list_cluster_role_binding(label_selector=selector).items),
        ("RoleBinding", rbac.list_role_binding_for_all_namespaces(label_selector=selector).items),
    ):
        found += [f"{kind}/{o.metadata.name}" for o in items]
    return found


def test_helm_upgrade_with_changed_values_then_uninstall_leaves_only_the_crds(
    helm: Callable[..., Any], image_values: Path, node_cluster: Any, k8s_api: client.ApiClient
) -> None:
    core = client.CoreV1Api(k8s_api)
    with contextlib.suppress(ApiException):
        core.create_namespace({"metadata": {"name": FUNCTIONS}})
    try:
        install(helm, image_values)
        key = grant_access_key(k8s_api, SYSTEM, FUNCTIONS, "lamina-lc-tester")
        port = core.read_namespaced_service(f"{RELEASE}-gateway", SYSTEM).spec.ports[0].node_port
        code = "import os\ndef handler(event, context):\n    return os.environ['AWS_REGION']\n"
        apply_objects(k8s_api, function_yaml("where", code, provisionedConcurrency=1), namespace=FUNCTIONS)
        custom = client.CustomObjectsApi(k8s_api)

        def ready() -> bool:
            fn = custom.get_namespaced_custom_object(
                "lamina.dev", "v1alpha1", FUNCTIONS, "functions", "where"
            )
            conds = (fn.get("status") or {}).get("conditions") or []
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

        wait_for(ready, 180, "Function where Ready")
        assert invoke(node_cluster.host, port, "where", key) == "us-east-1"

        # Changed values: another region (the operator re-renders every Function) and two gateways.
        install(helm, image_values, "region=eu-west-1", "gateway.replicas=2")
        gateways = client.AppsV1Api(k8s_api).read_namespaced_deployment(f"{RELEASE}-gateway", SYSTEM)
        assert gateways.status.ready_replicas == 2
        wait_for(
            lambda: invoke_or_none(node_cluster.host, port, "where", key, "eu-west-1") == "eu-west-1",
            180,
            "the new region in pods (and in the gateway's signature scope)",
        )
    finally:
        with contextlib.suppress(ApiException):  # while its operator runs (it may hold a finalizer)
            custom = client.CustomObjectsApi(k8s_api)
            custom.delete_namespaced_custom_object("lamina.dev", "v1alpha1", FUNCTIONS, "functions", "where")
        helm("uninstall", RELEASE, "-n", SYSTEM, "--wait", "--timeout", "3m", check=False)

    wait_for(lambda: not release_objects(k8s_api), 120, "every object of the release gone")
    assert helm("status", RELEASE, "-n", SYSTEM, check=False).returncode != 0
    ext = client.ApiextensionsV1Api(k8s_api)
    crds = {c.metadata.name for c in ext.list_custom_resource_definition().items}
    assert {"functions.lamina.dev", "layers.lamina.dev", "eventsourcemappings.lamina.dev"} <= crds
