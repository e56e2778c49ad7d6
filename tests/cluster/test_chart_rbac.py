"""Least privilege in the chart, read off the rendered manifests (issue 9, item 5): no wildcard verb or
resource anywhere, no cluster-wide Secret read, namespaced bindings with watchNamespaces, and the
gateway's Deployment and pod writes narrowed by a ValidatingAdmissionPolicy."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_chart import helm, render  # noqa: F401 - the fixture is reused

RELEASE, NAMESPACE = "r", "lamina-system"
VALUE_SETS = {
    "defaults": [],
    "two-namespaces": ["operator.watchNamespaces={team-a,team-b}"],
    "destination-secrets": ["operator.watchNamespaces={team-a}", "gateway.secretNamespaces={team-a}"],
    "auth-off-external-redis": [
        "auth.enabled=false",
        "networkPolicy.enabled=false",
        "redis.enabled=false",
        "redis.url=redis://redis.example:6379/0",
    ],
}
READ = {"get", "list", "watch"}
#: What a cluster-wide binding may still grant with watchNamespaces set: cluster-scoped kinds only.
#: Asking the API server to authenticate a token or decide an RBAC question grants access to no
#: object; namespace objects (their pool-size annotation) say nothing of what is in them.
CLUSTER_SCOPED = {
    ("authentication.k8s.io", "tokenreviews", "create"),
    ("authorization.k8s.io", "subjectaccessreviews", "create"),
    ("", "namespaces", "get"),
    ("", "namespaces", "list"),
    ("", "namespaces", "watch"),
}


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request: pytest.FixtureRequest, helm: str) -> tuple[str, list[dict[str, Any]]]:  # noqa: F811
    return request.param, render(helm, RELEASE, NAMESPACE, *VALUE_SETS[request.param])


def roles(docs: list[dict[str, Any]]) -> dict[tuple[str, str | None, str], list[dict[str, Any]]]:
    """(kind, namespace, name) -> rules of every Role and ClusterRole."""
    return {
        (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d.get("rules") or []
        for d in docs
        if d["kind"] in ("Role", "ClusterRole")
    }


def bound_rules(docs: list[dict[str, Any]], binding: dict[str, Any]) -> list[dict[str, Any]]:
    ref = binding["roleRef"]
    namespace = None if ref["kind"] == "ClusterRole" else binding["metadata"]["namespace"]
    found = roles(docs).get((ref["kind"], namespace, ref["name"]))
    assert found is not None, f"{binding['kind']} {binding['metadata']['name']} binds a role the chart lacks"
    return found


def grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (g, r, v)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


def test_no_wildcard_verb_resource_or_group(rendered) -> None:
    _, docs = rendered
    for (kind, ns, name), rules in roles(docs).items():
        for rule in rules:
            for field in ("verbs", "resources", "apiGroups", "resourceNames", "nonResourceURLs"):
                assert not any("*" in item for item in rule.get(field, [])), f"{kind} {ns}/{name}: {rule}"


def test_no_cluster_wide_secret_read(rendered) -> None:
    _, docs = rendered
    for binding in (d for d in docs if d["kind"] == "ClusterRoleBinding"):
        secret_reads = {
            v for g, r, v in grants(bound_rules(docs, binding)) if g == "" and r == "secrets"
        } & READ
        assert not secret_reads, (
            f"ClusterRoleBinding {binding['metadata']['name']} reads Secrets cluster-wide"
        )


def test_with_watch_namespaces_every_binding_is_namespaced(rendered) -> None:
    case, docs = rendered
    if "watchNamespaces" not in " ".join(VALUE_SETS[case]):
        pytest.skip("this value set watches the whole cluster")
    for binding in (d for d in docs if d["kind"] == "ClusterRoleBinding"):
        granted = grants(bound_rules(docs, binding))
        assert granted <= CLUSTER_SCOPED, f"{binding['metadata']['name']} binds {granted - CLUSTER_SCOPED}"
    namespaced = {d["metadata"]["namespace"] for d in docs if d["kind"] == "RoleBinding"}
    assert {"team-a"} <= namespaced


def subject_rules(
    docs: list[dict[str, Any]], account: str
) -> list[tuple[str | None, set[tuple[str, str, str]]]]:
    """(namespace or None for cluster-wide, grants) of every binding whose subject is ``account``."""
    out = []
    for binding in (d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        if any(s.get("name") == account for s in binding.get("subjects") or []):
            out.append((binding["metadata"].get("namespace"), grants(bound_rules(docs, binding))))
    return out


def test_the_gateway_reads_no_users_secret(rendered) -> None:
    case, docs = rendered
    opted_in = any(arg.startswith("gateway.secretNamespaces") for arg in VALUE_SETS[case])
    allowed = {NAMESPACE} | ({"team-a"} if opted_in else set())
    for namespace, granted in subject_rules(docs, f"{RELEASE}-lamina-gateway"):
        if any(r == "secrets" for _, r, _ in granted):
            assert namespace in allowed, f"the gateway reads Secrets in {namespace or 'every namespace'}"
        assert not any(r == "deployments/scale" for _, r, _ in granted)


def test_the_gateway_may_patch_only_lamina_deployments_and_pods(rendered) -> None:
    _, docs = rendered
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"}
    bindings = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding"]
    for kind in ("deployments", "pods"):
        policy = policies[f"{RELEASE}-lamina-gateway-{kind}"]
        user = f"system:serviceaccount:{NAMESPACE}:{RELEASE}-lamina-gateway"
        assert user in policy["spec"]["matchConditions"][0]["expression"]
        assert [r["resources"] for r in policy["spec"]["matchConstraints"]["resourceRules"]] == [[kind]]
        assert any(b["spec"]["policyName"] == policy["metadata"]["name"] for b in bindings)
    # What RBAC grants on Deployments is exactly what the policy narrows.
    for _, granted in subject_rules(docs, f"{RELEASE}-lamina-gateway"):
        assert {v for g, r, v in granted if r == "deployments"} <= {"patch"}


def test_the_operator_reads_secret_metadata_only_in_watched_namespaces(rendered) -> None:
    _case, docs = rendered
    for namespace, granted in subject_rules(docs, f"{RELEASE}-lamina-operator"):
        reads = {v for g, r, v in granted if r == "secrets"} & READ
        if reads:
            assert namespace is not None and reads == {"get"}, (
                f"operator reads Secrets in {namespace}: {reads}"
            )
        assert {v for g, r, v in granted if r == "secrets"} <= {"get", "create"}


def test_bundled_redis_has_a_password_fsyncs_always_and_its_own_network_policy(rendered) -> None:
    case, docs = rendered
    redis = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == f"{RELEASE}-lamina-redis"
    ]
    if not redis:
        assert "redis.enabled=false" in VALUE_SETS[case]
        return
    container = redis[0]["spec"]["template"]["spec"]["containers"][0]
    command = " ".join(container["args"])
    assert "--appendfsync always" in command
    # Each ACL rule its own argument (one quoted string would be read as a user name with spaces).
    assert '--user default on ">$REDIS_PASSWORD"' in command and '"~lamina:tick:*"' in command
    secret_env = {
        e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e
    }
    assert secret_env["REDIS_PASSWORD"] == f"{RELEASE}-lamina-redis"
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert [p["metadata"]["name"] for p in policies] == [f"{RELEASE}-lamina-redis"]
    sources = policies[0]["spec"]["ingress"][0]["from"]
    assert sources[0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    assert sources[1]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "lamina-eventsource-worker"}
