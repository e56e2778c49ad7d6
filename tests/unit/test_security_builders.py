"""A Function's security children, as data (issue 9, items 3 and 4): its own Secret, its execution
identity, its NetworkPolicy and the spec.network model."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest

from lamina.api import ManifestError
from lamina.auth.credentials import function_secret_values, invoke_secret
from lamina.resources import Settings, build_function, labels
from lamina.resources.network import DNS_RULE, build_network_policy
from tests.unit.test_resources_function import container, env_of, function

KEY = b"installation-key-for-tests-0123456789"
SETTINGS = Settings(
    runtime_image="r:{runtime}",
    network_policies=True,
    gateway_namespace="lamina-system",
    gateway_pod_labels=(("app.kubernetes.io/component", "gateway"), ("app.kubernetes.io/instance", "r")),
)


def test_the_functions_own_secret_reaches_the_pod_by_reference_only() -> None:
    fn = function()
    values = function_secret_values(KEY, "team-a", "hello", "default")
    res = build_function(fn, SETTINGS, secret_values=values)
    assert res.secret is not None
    name = res.secret["metadata"]["name"]
    assert name.startswith("fn-hello-") and res.secret["stringData"]["invoke-secret"] == invoke_secret(
        KEY, "team-a", "hello"
    )
    env = env_of(res.deployment)
    assert env["LAMINA_INVOKE_SECRET"] == {"secretKeyRef": {"name": name, "key": "invoke-secret"}}
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        assert env[variable] == {"secretKeyRef": {"name": name, "key": variable}}
    assert "AKIALAMINAEXAMPLEKEY" not in str(res.deployment)  # no placeholders next to them
    assert values["invoke-secret"] not in str(res.deployment)  # only references in the pod spec
    # A function that signs with credentials of its own gets none of lamina's mixed in (a session token
    # of ours next to its key would break its signatures); the invoke secret stays.
    own = env_of(build_function(function({"environment": {"AWS_ACCESS_KEY_ID": "AKIDMINE"}}), SETTINGS,
                                secret_values=values).deployment)  # fmt: skip
    assert own["AWS_ACCESS_KEY_ID"] == "AKIDMINE" and "AWS_SESSION_TOKEN" not in own
    assert "AWS_SECRET_ACCESS_KEY" not in own and "secretKeyRef" in own["LAMINA_INVOKE_SECRET"]
    # Same values, same name: the operator creates it once and never needs to read it back.
    assert build_function(fn, SETTINGS, secret_values=values).secret == res.secret
    other = function_secret_values(KEY, "team-a", "hello", "runner")
    assert build_function(fn, SETTINGS, secret_values=other).secret["metadata"]["name"] != name  # type: ignore[index]


def test_without_a_key_there_is_no_secret_and_no_reference() -> None:
    res = build_function(function(), SETTINGS)
    assert res.secret is None
    assert "LAMINA_INVOKE_SECRET" not in env_of(res.deployment)


def pod(res: Any) -> dict[str, Any]:
    return res.deployment["spec"]["template"]["spec"]


def test_a_service_account_is_the_execution_identity_and_its_token_is_all_that_is_mounted() -> None:
    plain = pod(build_function(function(), SETTINGS))
    assert plain["automountServiceAccountToken"] is False and "serviceAccountName" not in plain
    res = build_function(function({"serviceAccountName": "runner"}), SETTINGS)
    spec = pod(res)
    assert spec["serviceAccountName"] == "runner" and spec["automountServiceAccountToken"] is True
    assert res.config_hash != build_function(function(), SETTINGS).config_hash
    assert [v["name"] for v in spec["volumes"]] == ["tmp", "code"]  # no other Secret volume
    assert not any("secret" in v for v in spec["volumes"])
    assert "imagePullSecrets" not in spec
    assert container(res.deployment)["securityContext"]["allowPrivilegeEscalation"] is False


def selects(selector: dict[str, Any], pod_labels: dict[str, str]) -> bool:
    """A label selector's meaning (matchLabels and the In operator), as the API server applies it."""
    if any(pod_labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In"
        if pod_labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def test_ingress_only_from_the_gateway_and_egress_open_by_default() -> None:
    policy = build_network_policy(function(), SETTINGS)
    assert policy["kind"] == "NetworkPolicy" and policy["metadata"]["name"] == "fn-hello"
    spec = policy["spec"]
    selected = partial(selects, spec["podSelector"])
    assert selected(labels.function_labels("hello"))
    assert selected(labels.version_labels("hello", "3"))  # published versions' pods too
    assert selected({**labels.common(labels.POOL_APP, "pool"), labels.FUNCTION: "hello"})  # claimed
    assert not selected(labels.function_labels("other"))
    assert not selected(labels.mapping_labels("orders", "hello"))  # its workers are clients
    assert spec["policyTypes"] == ["Ingress"] and "egress" not in spec
    [rule] = spec["ingress"]
    assert rule["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "lamina-system"}},
            "podSelector": {
                "matchLabels": {"app.kubernetes.io/component": "gateway", "app.kubernetes.io/instance": "r"}
            },
        }
    ]
    assert rule["ports"] == [{"port": 8080, "protocol": "TCP"}]
    assert build_function(function(), SETTINGS).network_policy == policy
    no_policies = Settings(runtime_image="r:{runtime}")
    assert build_function(function(), no_policies).network_policy is None


def test_default_deny_leaves_only_dns() -> None:
    deny = Settings(runtime_image="r", network_policies=True, default_egress="deny")
    spec = build_network_policy(function(), deny)["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"] and spec["egress"] == [DNS_RULE]


def test_spec_network_egress_in_network_policy_terms() -> None:
    network = {
        "egress": [
            {
                "to": [
                    {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]},
                    {
                        "namespaceSelector": {"matchLabels": {"team": "data"}},
                        "podSelector": {"matchLabels": {"app": "db"}},
                    },
                ],
                "ports": [{"port": 5432}, {"port": 8000, "endPort": 8100, "protocol": "UDP"}],
            },
            {"to": [{"podSelector": {"matchExpressions": [{"key": "tier", "operator": "Exists"}]}}]},
        ]
    }
    spec = build_network_policy(function({"network": network}), SETTINGS)["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    first, second, dns = spec["egress"]
    assert first["to"] == [
        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
        {
            "namespaceSelector": {"matchLabels": {"team": "data"}},
            "podSelector": {"matchLabels": {"app": "db"}},
        },
    ]
    assert first["ports"] == [
        {"port": 5432, "protocol": "TCP"},
        {"port": 8000, "endPort": 8100, "protocol": "UDP"},
    ]
    assert second == {
        "to": [{"podSelector": {"matchExpressions": [{"key": "tier", "operator": "Exists", "values": []}]}}]
    }
    assert dns == DNS_RULE
    closed = build_network_policy(function({"network": {"egress": [], "allowDns": False}}), SETTINGS)["spec"]
    assert closed["egress"] == []  # nothing at all may leave


@pytest.mark.parametrize(
    ("network", "complaint"),
    [
        ({"egress": [{"to": [{"cidr": "10.0.0.0/8", "podSelector": {}}]}]}, "either a cidr or selectors"),
        ({"egress": [{"to": [{"cidr": "10.0.0.0/33"}]}]}, "must be an address block"),
        (
            {"egress": [{"to": [{"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"]}]}]},
            "is not inside 10.0.0.0/8",
        ),
        ({"egress": [{"ports": [{"port": 70000}]}]}, "between 1 and 65535"),
        ({"egress": [{"ports": [{"port": "http", "endPort": 90}]}]}, "endPort"),
        (
            {"egress": [{"to": [{"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}]}]},
            "values",
        ),
        ({"ingress": []}, "ingress"),
    ],
)
def test_bad_network_specs_are_refused_naming_the_field(network: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ManifestError) as info:
        function({"network": network})
    assert "spec.network" in str(info.value) and complaint in str(info.value)
