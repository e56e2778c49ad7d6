"""Authentication and RBAC on the test control plane (issue 9): boto3 with real SigV4 signatures
against `lamina gateway --auth`, access keys from Secrets, bearer tokens minted with TokenRequest,
RoleBindings that take effect at run time, function pods that refuse /invoke without their secret, and
the chart's admission policies.

The gateway and the operator run as the chart's ServiceAccounts with exactly the chart's RBAC (and its
ValidatingAdmissionPolicies); the test plays the kubelet for kwok's pods (PodRunner) and resolves their
Secret references as the kubelet would.
"""

from __future__ import annotations

import base64
import datetime
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from botocore.exceptions import ClientError
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_chart import helm, render  # noqa: F401 - the fixture is reused
from test_end_to_end import HANDLER
from test_operator_reconcile import GROUP, VERSION, Cluster, function

from lamina.auth.credentials import invoke_secret
from tests.cluster.stack import Gateway, LaminaStack, PodRunner
from tests.cluster.tokens import token_kubeconfig
from tests.support.local_mode import lambda_client

KEY = "installation-key-of-the-auth-test-0123456789"
ALICE = ("AKIDALICE00000000001", "alice-secret")  # a ServiceAccount with invoke on greeter
BOB = ("AKIDBOB0000000000001", "bob-secret")  # a user with no RBAC at first


def access_key_secret(name: str, key: tuple[str, str], **identity: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "lamina.dev/access-key",
        "metadata": {"name": name},
        "stringData": {"accessKeyId": key[0], "secretAccessKey": key[1], **identity},
    }


def invoke_role(name: str, *functions: str, verbs: tuple[str, ...] = ("invoke",)) -> dict[str, Any]:
    rule: dict[str, Any] = {"apiGroups": ["lamina.dev"], "resources": ["functions"], "verbs": list(verbs)}
    if functions:
        rule["resourceNames"] = list(functions)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name},
        "rules": [rule],
    }


def binding(name: str, role: str, subject: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
        "subjects": [subject],
    }


class Secured:
    def __init__(self, cluster: Cluster, gateway: Gateway, pods: PodRunner, namespace: str) -> None:
        self.cluster, self.gateway, self.pods, self.namespace = cluster, gateway, pods, namespace

    def client(self, key: tuple[str, str], region: str = "us-east-1", token: str | None = None) -> Any:
        return lambda_client(self.url, 90, key=key[0], secret=key[1], region=region, token=token)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}"


def cleanup_cluster_scoped(k8s_api: client.ApiClient, release: str) -> None:
    selector = f"app.kubernetes.io/instance={release}"
    rbac = client.RbacAuthorizationV1Api(k8s_api)
    admission = client.AdmissionregistrationV1Api(k8s_api)
    for item in rbac.list_cluster_role_binding(label_selector=selector).items:
        rbac.delete_cluster_role_binding(item.metadata.name)
    for item in rbac.list_cluster_role(label_selector=selector).items:
        rbac.delete_cluster_role(item.metadata.name)
    for item in admission.list_validating_admission_policy_binding(label_selector=selector).items:
        admission.delete_validating_admission_policy_binding(item.metadata.name)
    for item in admission.list_validating_admission_policy(label_selector=selector).items:
        admission.delete_validating_admission_policy(item.metadata.name)


@pytest.fixture
def secured(
    helm: str,  # noqa: F811
    k8s_api: client.ApiClient,
    kubeconfig: str,
    namespace: str,
    apply_yaml: Any,
    tmp_path: Path,
    wait_until: Any,
    python312: str,
) -> Iterator[Secured]:
    release = f"a{namespace.rsplit('-', 1)[-1]}"
    docs = render(helm, release, namespace, f"operator.watchNamespaces={{{namespace}}}", crds=True)
    kinds = {
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
    apply_yaml([d for d in docs if d["kind"] in kinds], namespace=namespace)
    apply_yaml(
        [
            access_key_secret("alice-key", ALICE, serviceAccount=f"{namespace}/alice"),
            access_key_secret("bob-key", BOB, user="bob", groups="testers"),
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "alice"}},
            invoke_role("greeter-invoker", "greeter", verbs=("invoke", "get")),
            binding(
                "alice-invokes-greeter",
                "greeter-invoker",
                {"kind": "ServiceAccount", "name": "alice", "namespace": namespace},
            ),
        ],
        namespace=namespace,
    )
    gateway_config = token_kubeconfig(k8s_api, kubeconfig, namespace, f"{release}-lamina-gateway")
    operator_config = token_kubeconfig(k8s_api, kubeconfig, namespace, f"{release}-lamina-operator")
    env = {"LAMINA_AUTH_KEY": KEY, "LAMINA_REGION": "us-east-1"}
    try:
        # Stopped (and their logs written) before the chart's cluster-scoped objects go.
        with LaminaStack(k8s_api, kubeconfig, namespace, tmp_path, python312) as stack:
            stack.operator(env=env, kubeconfig=operator_config)
            gateway = stack.gateway(
                "--auth",
                "--access-key-namespace",
                namespace,
                "--cache-denied-seconds",
                "1",
                env=env,
                kubeconfig=gateway_config,
            )
            pods = stack.kubelet()
            cluster = Cluster(k8s_api, namespace)
            cluster.create(
                "functions", function("greeter", code={"inline": HANDLER}, provisionedConcurrency=1)
            )
            cluster.create("functions", function("private", code={"inline": HANDLER}))
            secured = Secured(cluster, gateway, pods, namespace)
            wait_until(lambda: _invocable(secured), timeout=120, message="greeter answers alice")
            yield secured
    finally:
        for path in (gateway_config, operator_config):
            Path(path).unlink(missing_ok=True)
        cleanup_cluster_scoped(k8s_api, release)


def _invocable(secured: Secured) -> bool:
    try:
        response = secured.client(ALICE).invoke(FunctionName="greeter", Payload=b'{"name": "x"}')
    except Exception:
        return False
    return response["StatusCode"] == 200 and "FunctionError" not in response


def error_of(call: Any) -> tuple[str, int, str]:
    with pytest.raises(ClientError) as info:
        call()
    response = info.value.response
    return (
        response["Error"]["Code"],
        response["ResponseMetadata"]["HTTPStatusCode"],
        response["Error"]["Message"],
    )


def greet(lam: Any, name: str = "greeter") -> dict[str, Any]:
    return json.loads(lam.invoke(FunctionName=name, Payload=b'{"name": "auth"}')["Payload"].read())


def test_boto3_signatures_are_verified_and_rbac_decides(secured: Secured, k8s_api: client.ApiClient) -> None:
    alice = secured.client(ALICE)
    assert greet(alice)["greeting"] == "hello auth"
    # Wrong secret, skewed clock, another region, an unknown key: Lambda's errors, nothing runs.
    assert error_of(lambda: greet(secured.client((ALICE[0], "wrong"))))[:2] == (
        "InvalidSignatureException",
        403,
    )
    skewed = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) - datetime.timedelta(minutes=7)
    with mock.patch("botocore.auth.get_current_datetime", return_value=skewed):
        code, status, message = error_of(lambda: greet(alice))
    assert (code, status) == ("InvalidSignatureException", 403) and message.startswith("Signature expired")
    code, _, message = error_of(lambda: greet(secured.client(ALICE, region="eu-central-1")))
    assert code == "InvalidSignatureException" and "eu-central-1" in message
    assert error_of(lambda: greet(secured.client(("AKIDNOBODY0000000001", "x"))))[:2] == (
        "UnrecognizedClientException",
        403,
    )
    # Alice's Role names greeter only.
    code, status, message = error_of(lambda: greet(alice, "private"))
    assert (code, status) == ("AccessDeniedException", 403)
    assert f"system:serviceaccount:{secured.namespace}:alice" in message
    # No list verb: ListFunctions shows only what she may get.
    assert [f["FunctionName"] for f in alice.list_functions()["Functions"]] == ["greeter"]
    assert alice.get_function(FunctionName="greeter")["Configuration"]["FunctionName"] == "greeter"

    # Bob may do nothing until a RoleBinding, added now, lets him.
    bob = secured.client(BOB)
    code, status, message = error_of(lambda: greet(bob))
    assert (code, status) == ("AccessDeniedException", 403) and "User: bob is not authorized" in message
    rbac = client.RbacAuthorizationV1Api(k8s_api)
    rbac.create_namespaced_role(secured.namespace, invoke_role("all-functions", verbs=("invoke", "list")))
    rbac.create_namespaced_role_binding(
        secured.namespace,
        binding(
            "bob-invokes",
            "all-functions",
            {"kind": "User", "name": "bob", "apiGroup": "rbac.authorization.k8s.io"},
        ),
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            assert greet(bob, "private")["greeting"] == "hello auth"
            break
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "AccessDeniedException"
            assert time.monotonic() < deadline, "the RoleBinding never took effect"
            time.sleep(0.5)
    assert {f["FunctionName"] for f in bob.list_functions()["Functions"]} == {"greeter", "private"}


def curl(*args: str) -> tuple[int, str]:
    """curl as a pod would run it: status code and body."""
    done = subprocess.run(
        ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", *args], capture_output=True, text=True, timeout=60
    )
    body, _, code = done.stdout.rpartition("\n")
    return int(code or 0), body


def test_a_token_minted_with_token_request_invokes_with_its_service_accounts_rights(
    secured: Secured, k8s_api: client.ApiClient
) -> None:
    core = client.CoreV1Api(k8s_api)
    ns = secured.namespace
    # alice's token for the gateway's audience: accepted; one for the API server's: refused.
    token = core.create_namespaced_service_account_token(
        "alice", ns, {"spec": {"audiences": ["lamina"], "expirationSeconds": 600}}
    ).status.token
    url = f"{secured.url}/2015-03-31/functions/greeter/invocations"
    status, body = curl(
        "-X", "POST", "-H", f"Authorization: Bearer {token}", "--data", '{"name": "curl"}', url
    )
    assert status == 200 and json.loads(body)["greeting"] == "hello curl"
    status, body = curl(
        "-X",
        "POST",
        "-H",
        f"Authorization: Bearer {token}",
        "--data",
        "{}",
        url.replace("greeter", "private"),
    )
    assert status == 403 and "not authorized" in json.loads(body)["message"]
    api_token = core.create_namespaced_service_account_token(
        "alice", ns, {"spec": {"expirationSeconds": 600}}
    ).status.token
    status, body = curl("-X", "POST", "-H", f"Authorization: Bearer {api_token}", "--data", "{}", url)
    assert (
        status == 403
        and json.loads(body)["message"] == "The security token included in the request is invalid."
    )
    status, body = curl("-X", "POST", "--data", "{}", url)
    assert status == 403 and json.loads(body)["message"] == "Missing Authentication Token"
    # The HTTP trigger takes the same token.
    status, body = curl("-H", f"Authorization: Bearer {token}", f"{secured.url}/url/greeter/")
    assert status == 200


def test_pods_refuse_invoke_without_their_secret(secured: Secured) -> None:
    endpoints = list(secured.pods.endpoints.values())
    assert endpoints
    endpoint = endpoints[0]
    status, body = curl("-X", "POST", "--data", "{}", f"http://{endpoint}/invoke")
    assert status == 403 and "Lamina-Invoke-Secret" in body
    wrong = invoke_secret(KEY.encode(), secured.namespace, "private")  # another function's secret
    status, _ = curl(
        "-X", "POST", "-H", f"Lamina-Invoke-Secret: {wrong}", "--data", "{}", f"http://{endpoint}/invoke"
    )
    assert status == 403
    right = invoke_secret(KEY.encode(), secured.namespace, "greeter")
    status, body = curl(
        "-X", "POST", "-H", f"Lamina-Invoke-Secret: {right}", "--data", "{}", f"http://{endpoint}/invoke"
    )
    assert status == 200 and json.loads(body)["greeting"] == "hello world"
    # The function's own Secret holds it; the pod spec only refers to it.
    dep = secured.cluster.deployment("fn-greeter")
    assert dep is not None and right not in json.dumps(dep)


def test_a_functions_execution_credentials_act_as_its_service_account(
    secured: Secured, k8s_api: client.ApiClient
) -> None:
    core = client.CoreV1Api(k8s_api)
    dep = secured.cluster.deployment("fn-greeter")
    assert dep is not None
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    ref = env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]
    secret = core.read_namespaced_secret(ref["name"], secured.namespace).data
    creds = {
        k: base64.b64decode(secret[k]).decode()
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
    }
    lam = secured.client(
        (creds["AWS_ACCESS_KEY_ID"], creds["AWS_SECRET_ACCESS_KEY"]), token=creds["AWS_SESSION_TOKEN"]
    )
    code, _, message = error_of(lambda: greet(lam, "private"))
    assert code == "AccessDeniedException" and f"system:serviceaccount:{secured.namespace}:default" in message
    client.RbacAuthorizationV1Api(k8s_api).create_namespaced_role_binding(
        secured.namespace,
        binding(
            "default-invokes-greeter",
            "greeter-invoker",
            {"kind": "ServiceAccount", "name": "default", "namespace": secured.namespace},
        ),
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            assert greet(lam)["greeting"] == "hello auth"
            break
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "AccessDeniedException" and time.monotonic() < deadline
            time.sleep(0.5)
    forged = secured.client(
        (creds["AWS_ACCESS_KEY_ID"], creds["AWS_SECRET_ACCESS_KEY"]),
        token=creds["AWS_SESSION_TOKEN"][:-4] + "AAAA",
    )
    assert error_of(lambda: greet(forged))[0] == "UnrecognizedClientException"


def test_the_gateway_may_scale_only_lamina_deployments_and_change_nothing_else(
    secured: Secured, k8s_api: client.ApiClient, kubeconfig: str
) -> None:
    ns = secured.namespace
    release = f"a{ns.rsplit('-', 1)[-1]}"
    gateway_config = token_kubeconfig(k8s_api, kubeconfig, ns, f"{release}-lamina-gateway")
    try:
        apps = client.AppsV1Api(config.new_client_from_config(config_file=gateway_config))
        admin_apps = client.AppsV1Api(k8s_api)
        admin_apps.create_namespaced_deployment(
            ns,
            {
                "metadata": {"name": "not-lamina", "labels": {"app": "x"}},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": "x"}},
                    "template": {
                        "metadata": {"labels": {"app": "x"}},
                        "spec": {"containers": [{"name": "c", "image": "x"}]},
                    },
                },
            },
        )
        with pytest.raises(ApiException) as denied:
            apps.patch_namespaced_deployment("not-lamina", ns, {"spec": {"replicas": 5}})
        assert (
            denied.value.status in (403, 422)
            and "only the Deployments the lamina operator made" in denied.value.body
        )
        # Pods: patched (annotations, pool claims) and deleted (reaped pool pods) only if lamina's.
        core, admin_core = client.CoreV1Api(apps.api_client), client.CoreV1Api(k8s_api)
        admin_core.create_namespaced_pod(
            ns,
            {
                "metadata": {"name": "not-lamina", "labels": {"app": "x"}},
                "spec": {"containers": [{"name": "c", "image": "x"}]},
            },
        )
        with pytest.raises(ApiException) as denied:
            core.delete_namespaced_pod("not-lamina", ns)
        assert "only the pods the lamina operator made for Functions and warm pools" in denied.value.body
        with pytest.raises(ApiException) as denied:
            core.patch_namespaced_pod("not-lamina", ns, {"metadata": {"annotations": {"a": "b"}}})
        assert denied.value.status in (403, 422)
        with pytest.raises(ApiException) as denied:
            apps.patch_namespaced_deployment_scale("fn-greeter", ns, {"spec": {"replicas": 2}})
        assert denied.value.status == 403  # no RBAC for the scale subresource at all
        with pytest.raises(ApiException) as denied:
            apps.patch_namespaced_deployment(
                "fn-greeter", ns, {"spec": {"template": {"metadata": {"labels": {"evil": "1"}}}}}
            )
        assert "only a Deployment's replicas" in denied.value.body
        apps.patch_namespaced_deployment("fn-greeter", ns, {"spec": {"replicas": 2}})  # what it is for
    finally:
        Path(gateway_config).unlink(missing_ok=True)


def test_references_are_checked_against_their_authors_rights(
    secured: Secured, k8s_api: client.ApiClient, kubeconfig: str
) -> None:
    ns = secured.namespace
    core = client.CoreV1Api(k8s_api)
    rbac = client.RbacAuthorizationV1Api(k8s_api)
    core.create_namespaced_secret(ns, {"metadata": {"name": "db"}, "stringData": {"password": "p"}})
    core.create_namespaced_service_account(ns, {"metadata": {"name": "author"}})
    author_role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "author"},
        "rules": [
            {
                "apiGroups": ["lamina.dev"],
                "resources": ["functions", "eventsourcemappings"],
                "verbs": ["create", "get"],
            }
        ],
    }
    rbac.create_namespaced_role(ns, author_role)
    rbac.create_namespaced_role_binding(
        ns, binding("author", "author", {"kind": "ServiceAccount", "name": "author", "namespace": ns})
    )
    author_config = token_kubeconfig(k8s_api, kubeconfig, ns, "author")
    try:
        objects = client.CustomObjectsApi(config.new_client_from_config(config_file=author_config))
        reading = function(
            "reads-db", environmentFrom=[{"name": "PW", "secretKeyRef": {"name": "db", "key": "password"}}]
        )
        with pytest.raises(ApiException) as denied:
            objects.create_namespaced_custom_object(GROUP, VERSION, ns, "functions", reading)
        assert (
            denied.value.status in (403, 422)
            and "you may not read every Secret this names" in denied.value.body
        )
        assert "(db)" in denied.value.body
        mapping = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "EventSourceMapping",
            "metadata": {"name": "ticks"},
            "spec": {"functionName": "private", "source": {"schedule": {"expression": "rate(1 minute)"}}},
        }
        with pytest.raises(ApiException) as denied:
            objects.create_namespaced_custom_object(GROUP, VERSION, ns, "eventsourcemappings", mapping)
        assert (
            "you may not invoke every function" in denied.value.body and f"{ns}/private" in denied.value.body
        )
        # Granted the reads and the invoke, the same author may write both.
        rbac.create_namespaced_role(
            ns,
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "author-more"},
                "rules": [
                    {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["db"], "verbs": ["get"]},
                    {"apiGroups": ["lamina.dev"], "resources": ["functions"], "verbs": ["invoke"]},
                ],
            },
        )
        rbac.create_namespaced_role_binding(
            ns,
            binding(
                "author-more", "author-more", {"kind": "ServiceAccount", "name": "author", "namespace": ns}
            ),
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                objects.create_namespaced_custom_object(GROUP, VERSION, ns, "functions", reading)
                objects.create_namespaced_custom_object(GROUP, VERSION, ns, "eventsourcemappings", mapping)
                break
            except ApiException as exc:
                assert exc.status in (403, 422) and time.monotonic() < deadline, exc.body
                time.sleep(0.5)
    finally:
        Path(author_config).unlink(missing_ok=True)


def test_the_typed_policies_compile_without_warnings(secured: Secured, k8s_api: client.ApiClient) -> None:
    admission = client.AdmissionregistrationV1Api(k8s_api)
    release = f"a{secured.namespace.rsplit('-', 1)[-1]}"
    for name in (
        f"{release}-lamina-gateway-deployments",
        f"{release}-lamina-gateway-pods",
        f"{release}-lamina-references",
    ):
        policy = admission.read_validating_admission_policy(name)
        checking = policy.status.type_checking if policy.status else None
        warnings = (checking.expression_warnings or []) if checking else []
        assert not warnings, [w.warning for w in warnings]
