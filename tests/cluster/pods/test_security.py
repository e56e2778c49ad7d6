"""Issue 9 on real pods: what a function pod takes from whom, and a function calling another with the
execution credentials lamina gives it, decided by RBAC."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.cluster.pods.conftest import RELEASE, SYSTEM_NS, Lamina, function_yaml, unique, wait_for

ECHO = "def handler(event, context):\n    return {'echo': event}\n"

#: Calls another function through the gateway with boto3 and the credentials in its environment (the
#: function's execution credentials): what a Lambda does with its execution role.
CALLER = f"""
import boto3, botocore.config, json
def handler(event, context):
    lam = boto3.client(
        "lambda",
        endpoint_url="http://{RELEASE}-gateway.{SYSTEM_NS}.svc:8080",
        config=botocore.config.Config(retries={{"max_attempts": 0}}),
    )
    try:
        r = lam.invoke(FunctionName=event["target"], Payload=json.dumps({{"from": "caller"}}))
    except lam.exceptions.ClientError as e:
        return {{"error": e.response["Error"]["Code"]}}
    return json.loads(r["Payload"].read())
"""


def in_cluster_network(node_cluster: Any, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run a command in the cluster's network namespace: where a pod's neighbours are."""
    realnode = sys.modules["lamina_test_controlplane"].realnode
    cmd = [*realnode.RealNode(node_cluster.state_dir).nsenter(), *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


POST_INVOKE = """
import sys, urllib.error, urllib.request
headers = dict(a.split(": ", 1) for a in sys.argv[2:])
req = urllib.request.Request(sys.argv[1], data=b'{"x": 1}', method="POST", headers=headers)
try:
    with urllib.request.urlopen(req, timeout=20) as r:
        print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
"""


def test_a_function_pod_refuses_invoke_without_its_secret_and_has_a_network_policy(
    lamina: Lamina, node_cluster: Any
) -> None:
    """A neighbour that reaches the pod's IP (no NetworkPolicy enforcement on this node's bridge CNI)
    still cannot invoke it: the pod's server wants the invoke secret only the gateway holds. The
    gateway's own calls keep working, and the pod's ingress policy admits the gateway alone."""
    name = unique("guarded")
    lamina.apply(function_yaml(name, ECHO, provisionedConcurrency=1))
    lamina.wait_ready(name)
    r, body = lamina.invoke(name, {"n": 1})
    assert "FunctionError" not in r and body == {"echo": {"n": 1}}
    [pod] = [p for p in lamina.pods(name) if p.status.phase == "Running"]
    url = f"http://{pod.status.pod_ip}:8080/invoke"
    for headers in ([], ["Lamina-Invoke-Secret: guessed"]):
        done = in_cluster_network(node_cluster, sys.executable, "-c", POST_INVOKE, url, *headers)
        status, _, text = done.stdout.strip().partition(" ")
        assert status == "403", (headers, done.stdout, done.stderr)
        assert "Lamina-Invoke-Secret" in json.loads(text)["message"] and "guessed" not in text
    r, body = lamina.invoke(name, {"n": 2})  # the environment was not spent
    assert body == {"echo": {"n": 2}}
    assert [p.metadata.name for p in lamina.pods(name)] == [pod.metadata.name]

    policy = client.NetworkingV1Api(lamina.api).read_namespaced_network_policy(f"fn-{name}", lamina.namespace)
    [rule] = policy.spec.ingress
    [peer] = rule._from
    assert peer.namespace_selector.match_labels == {"kubernetes.io/metadata.name": SYSTEM_NS}
    assert peer.pod_selector.match_labels["app.kubernetes.io/component"] == "gateway"
    env = {e.name: e for e in pod.spec.containers[0].env}
    assert env["LAMINA_INVOKE_SECRET"].value is None  # only a reference to the function's Secret
    assert env["LAMINA_INVOKE_SECRET"].value_from.secret_key_ref.name.startswith(f"fn-{name}-")


@pytest.fixture
def caller_account(lamina: Lamina) -> Iterator[str]:
    core, rbac = lamina.core, client.RbacAuthorizationV1Api(lamina.api)
    account = unique("caller-sa")
    core.create_namespaced_service_account(lamina.namespace, {"metadata": {"name": account}})
    yield account
    with contextlib.suppress(ApiException):
        rbac.delete_namespaced_role_binding(account, lamina.namespace)
    with contextlib.suppress(ApiException):
        rbac.delete_namespaced_role(account, lamina.namespace)
    with contextlib.suppress(ApiException):
        core.delete_namespaced_service_account(account, lamina.namespace)


def test_a_function_calls_another_with_its_execution_credentials_as_rbac_allows(
    lamina: Lamina, caller_account: str
) -> None:
    """A function running as a ServiceAccount calls another through the gateway with boto3 and the
    AWS_* credentials lamina put in its environment: AccessDeniedException until a RoleBinding lets
    that account invoke the target, then the call goes through, with no restart."""
    caller, target = unique("caller"), unique("callee")
    lamina.apply(function_yaml(target, ECHO, provisionedConcurrency=1))
    lamina.apply(
        function_yaml(
            caller, CALLER, provisionedConcurrency=1, serviceAccountName=caller_account, timeoutSeconds=30
        )
    )
    lamina.wait_ready(target)
    lamina.wait_ready(caller)
    _, body = lamina.invoke(caller, {"target": target})
    assert body == {"error": "AccessDeniedException"}, body

    rbac = client.RbacAuthorizationV1Api(lamina.api)
    rbac.create_namespaced_role(
        lamina.namespace,
        {
            "metadata": {"name": caller_account},
            "rules": [
                {
                    "apiGroups": ["lamina.dev"],
                    "resources": ["functions"],
                    "resourceNames": [target],
                    "verbs": ["invoke"],
                }
            ],
        },
    )
    rbac.create_namespaced_role_binding(
        lamina.namespace,
        {
            "metadata": {"name": caller_account},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": caller_account},
            "subjects": [{"kind": "ServiceAccount", "name": caller_account, "namespace": lamina.namespace}],
        },
    )
    body = wait_for(
        lambda: (b := lamina.invoke(caller, {"target": target})[1]) and "echo" in b and b,
        30,
        "the caller allowed once its account may invoke the target",
        interval=1,
    )
    assert body == {"echo": {"from": "caller"}}
    pod = next(p for p in lamina.pods(caller) if p.status.phase == "Running")
    env = {e.name: e for e in pod.spec.containers[0].env}
    assert env["AWS_SECRET_ACCESS_KEY"].value_from.secret_key_ref is not None  # not in the pod spec
    assert pod.spec.service_account_name == caller_account
