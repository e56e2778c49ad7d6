"""Layer -> artifact and EventSourceMapping -> worker Deployment and its identity (pure builders,
no cluster)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lamina.api import EventSourceMapping, Layer, parse_object
from lamina.api.common import secret_env_name
from lamina.resources import (
    LayerArtifact,
    NotSupported,
    Settings,
    build_layer,
    build_mapping,
    build_mapping_identity,
    names,
    worker_state,
)
from lamina.resources.eventsourcemapping import mapping_secret
from lamina.resources.layer import next_revision, stale_revisions
from lamina.resources.meta import config_map_digest

SHA = "cd" * 32


def layer(spec: dict[str, Any]) -> Layer:
    obj = parse_object(
        {
            "apiVersion": "lamina.dev/v1alpha1",
            "kind": "Layer",
            "metadata": {"name": "deps", "uid": "L1"},
            "spec": spec,
        }
    )
    assert isinstance(obj, Layer)
    return obj


def test_url_layer_is_referenced_with_its_sha256_as_revision_digest() -> None:
    build = build_layer(layer({"url": "https://example.com/deps.zip", "sha256": SHA.upper()}))
    assert build.config_map is None
    art = build.artifact(1, "deps")
    assert (art.digest, art.url, art.artifact) == (
        SHA,
        "https://example.com/deps.zip",
        "https://example.com/deps.zip",
    )
    assert LayerArtifact.from_status("deps", {"artifact": art.artifact, "digest": SHA, "revision": 1}) == art


def test_config_map_layer_is_copied_into_an_immutable_revision_named_after_its_digest() -> None:
    source = {"metadata": {"name": "src", "labels": {"x": "y"}}, "data": {"helpers.py": "A = 1"}}
    build = build_layer(layer({"configMap": {"name": "src"}}), source)
    cm = build.config_map
    assert cm is not None
    assert cm["immutable"] is True
    assert cm["data"] == {"helpers.py": "A = 1"}
    assert build.digest == config_map_digest(source)
    assert cm["metadata"]["name"] == names.layer_config_map("deps", build.digest)
    assert cm["metadata"]["ownerReferences"][0]["kind"] == "Layer"
    assert cm["metadata"]["ownerReferences"][0]["controller"] is True
    art = build.artifact(4, "deps")
    assert art.artifact == f"configmap:{cm['metadata']['name']}"
    assert (
        LayerArtifact.from_status("deps", {"artifact": art.artifact, "digest": build.digest, "revision": 4})
        == art
    )
    # Metadata of the source does not make a new revision; content does.
    relabelled = build_layer(layer({"configMap": {"name": "src"}}), {**source, "metadata": {"name": "src"}})
    assert relabelled.digest == build.digest
    edited = build_layer(layer({"configMap": {"name": "src"}}), {"data": {"helpers.py": "A = 2"}})
    assert edited.digest != build.digest
    assert edited.config_map["metadata"]["name"] != cm["metadata"]["name"]  # type: ignore[index]


def test_requirements_layers_are_not_supported_in_a_cluster() -> None:
    with pytest.raises(NotSupported, match="requirements"):
        build_layer(layer({"requirements": ["requests==2.32.3"]}))


def test_artifact_from_status_needs_a_ready_status() -> None:
    with pytest.raises(ValueError, match="no artifact"):
        LayerArtifact.from_status("deps", {"revision": 1})


@pytest.mark.parametrize(
    ("status", "digest", "want"),
    [(None, "a", 1), ({"revision": 1, "digest": "a"}, "a", 1), ({"revision": 1, "digest": "a"}, "b", 2)],
)
def test_revision_numbers_follow_content(status: Any, digest: str, want: int) -> None:
    assert next_revision(status, digest) == want


def test_stale_revisions_keep_the_newest_and_the_current() -> None:
    cms = [
        {"metadata": {"name": f"r{i}", "creationTimestamp": f"2026-01-0{i}T00:00:00Z"}} for i in range(1, 6)
    ]
    assert sorted(stale_revisions(cms, current="r5")) == ["r1", "r2"]
    # A current revision that is older than others (content reverted) is never deleted.
    assert "r1" not in stale_revisions(cms, current="r1")
    assert len(stale_revisions(cms, current="r1")) == 2


# ------------------------------------------------------------------------------ EventSourceMapping


def mapping(spec: dict[str, Any]) -> EventSourceMapping:
    body = {"functionName": "hello", **spec}
    obj = parse_object(
        {
            "apiVersion": "lamina.dev/v1alpha1",
            "kind": "EventSourceMapping",
            "metadata": {"name": "orders", "namespace": "team-a", "uid": "E1"},
            "spec": body,
        }
    )
    assert isinstance(obj, EventSourceMapping)
    return obj


SETTINGS = Settings(
    worker_image="registry.example/lamina:1", gateway_url="http://gw:8080", redis_url="redis://r:6379"
)


def env_of(dep: dict[str, Any]) -> dict[str, Any]:
    c = dep["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def test_broker_mapping_runs_one_worker_with_secret_urls_from_env() -> None:
    esm = mapping(
        {
            "source": {
                "redis": {"urlFrom": {"secretKeyRef": {"name": "redis", "key": "url"}}, "stream": "orders"}
            },
            "destinationConfig": {"onFailure": {"rabbitmq": {"url": "amqp://mq/", "queue": "dlq"}}},
        }
    )
    dep = build_mapping(esm, SETTINGS)
    assert dep["metadata"]["name"] == "esm-orders"
    assert dep["spec"]["replicas"] == 1
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "registry.example/lamina:1"
    assert c["command"] == ["lamina", "worker", "esm", "--namespace", "team-a", "--name", "orders"]
    env = env_of(dep)
    # Optional: a missing Secret does not keep the worker from starting; it names it in the status.
    assert env[secret_env_name("redis", "url")] == {
        "secretKeyRef": {"name": "redis", "key": "url", "optional": True}
    }
    assert not [k for k in env if k.startswith("LAMINA_SECRET_") and k != secret_env_name("redis", "url")]
    assert env["LAMINA_GATEWAY_URL"] == "http://gw:8080"
    doc = json.loads(env["LAMINA_ESM"])
    assert doc["metadata"] == {"name": "orders", "namespace": "team-a"}
    assert doc["spec"]["source"]["redis"]["stream"] == "orders"
    assert parse_object(doc).name == "orders"  # the worker can validate what it is given
    # The one pod with a token: its own ServiceAccount, which may only write this mapping's status.
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "esm-orders"
    assert dep["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    assert dep["spec"]["template"]["spec"]["shareProcessNamespace"] is True
    assert dep["metadata"]["ownerReferences"][0]["kind"] == "EventSourceMapping"
    assert dep["metadata"]["labels"]["lamina.dev/function"] == "hello"


def test_disabled_mapping_scales_the_worker_to_zero() -> None:
    esm = mapping({"source": {"nats": {"url": "nats://n:4222", "subject": "s"}}, "enabled": False})
    assert build_mapping(esm, SETTINGS)["spec"]["replicas"] == 0
    state = worker_state(None, enabled=False)
    assert (state.ready, state.state) == (True, "Disabled")


def test_schedule_mapping_gets_redis_for_tick_claims() -> None:
    esm = mapping({"source": {"schedule": {"expression": "rate(5 minutes)"}}})
    env = env_of(build_mapping(esm, SETTINGS))
    assert env["LAMINA_REDIS_URL"] == "redis://r:6379"
    assert not [k for k in env if k.startswith("LAMINA_SECRET_")]


def test_spec_change_rolls_the_worker() -> None:
    a = build_mapping(mapping({"source": {"schedule": {"expression": "rate(5 minutes)"}}}), SETTINGS)
    b = build_mapping(mapping({"source": {"schedule": {"expression": "rate(6 minutes)"}}}), SETTINGS)
    key = "lamina.dev/config-hash"
    assert (
        a["spec"]["template"]["metadata"]["annotations"][key]
        != b["spec"]["template"]["metadata"]["annotations"][key]
    )


@pytest.mark.parametrize(
    ("status", "ready", "state"),
    [
        ({"observedGeneration": 1, "updatedReplicas": 1, "readyReplicas": 1}, True, "Enabled"),
        ({"observedGeneration": 1, "updatedReplicas": 1, "readyReplicas": 0}, False, "Creating"),
        ({"observedGeneration": 0}, False, "Updating"),
    ],
)
def test_worker_state(status: dict[str, int], ready: bool, state: str) -> None:
    ws = worker_state({"metadata": {"generation": 1}, "status": status}, enabled=True)
    assert (ws.ready, ws.state) == (ready, state)


def test_worker_identity_may_only_write_its_own_status_and_invoke_its_function() -> None:
    esm = mapping({"source": {"schedule": {"expression": "rate(5 minutes)"}}})
    account, role, binding = build_mapping_identity(esm)
    assert [o["kind"] for o in (account, role, binding)] == ["ServiceAccount", "Role", "RoleBinding"]
    for obj in (account, role, binding):
        meta = obj["metadata"]
        assert (meta["name"], meta["namespace"]) == ("esm-orders", "team-a")
        [owner] = meta["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
            "EventSourceMapping",
            "orders",
            "E1",
            True,
        )
        assert meta["labels"]["lamina.dev/eventsourcemapping"] == "orders"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "lamina-operator"
    assert role["apiVersion"] == binding["apiVersion"] == "rbac.authorization.k8s.io/v1"
    assert role["rules"] == [
        {
            "apiGroups": ["lamina.dev"],
            "resources": ["eventsourcemappings/status"],
            "resourceNames": ["orders"],
            "verbs": ["get", "patch"],
        },
        {
            "apiGroups": ["lamina.dev"],
            "resources": ["functions"],
            "resourceNames": ["hello"],
            "verbs": ["invoke"],
        },
    ]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "esm-orders",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "esm-orders", "namespace": "team-a"}]
    pod = build_mapping(esm, SETTINGS)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    # The identity it invokes with: a token for the gateway's audience, refreshed by the kubelet.
    [token] = [v for v in pod["volumes"] if v["name"] == "gateway-token"]
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "lamina"
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["LAMINA_GATEWAY_TOKEN_FILE"] == "/var/run/secrets/lamina/token"


def test_a_same_namespace_on_failure_function_may_be_invoked_too() -> None:
    esm = mapping(
        {
            "functionName": "hello:live",
            "source": {"redis": {"url": "redis://r:6379", "stream": "s"}},
            "destinationConfig": {"onFailure": {"function": {"name": "dead-letters"}}},
        }
    )
    _, role, _ = build_mapping_identity(esm)
    assert role["rules"][1]["resourceNames"] == ["dead-letters", "hello"]
    elsewhere = mapping(
        {
            "source": {"redis": {"url": "redis://r:6379", "stream": "s"}},
            "destinationConfig": {"onFailure": {"function": {"name": "dl", "namespace": "ops"}}},
        }
    )
    assert build_mapping_identity(elsewhere)[1]["rules"][1]["resourceNames"] == ["hello"]


def test_the_workers_redis_credentials_are_in_the_mappings_own_secret() -> None:
    esm = mapping({"source": {"schedule": {"expression": "rate(5 minutes)"}}})
    settings = Settings(worker_image="w", redis_url="redis://r:6379/0", redis_ticks_password="tickspw")
    secret = mapping_secret(esm, settings)
    assert secret is not None and secret["stringData"] == {
        "LAMINA_REDIS_USERNAME": "ticks",
        "LAMINA_REDIS_PASSWORD": "tickspw",
    }
    env = env_of(build_mapping(esm, settings))
    assert env["LAMINA_REDIS_PASSWORD"] == {
        "secretKeyRef": {"name": secret["metadata"]["name"], "key": "LAMINA_REDIS_PASSWORD"}
    }
    assert "tickspw" not in str(build_mapping(esm, settings))
    assert mapping_secret(esm, SETTINGS) is None  # no ticks password configured: nothing to keep


def test_long_mapping_names_give_a_valid_service_account_name() -> None:
    name = names.mapping_service_account("m" * 80)
    assert len(name) <= 63 and name.startswith("esm-")
    assert name != names.mapping_service_account("m" * 81)


def test_kafka_and_sqs_credentials_come_from_optional_secret_refs() -> None:
    esm = mapping(
        {
            "source": {
                "kafka": {
                    "bootstrapServers": ["k:9093"],
                    "topic": "orders",
                    "tls": {"caCertificate": {"secretKeyRef": {"name": "kafka-ca", "key": "ca.crt"}}},
                    "sasl": {"secretRef": {"name": "kafka-user"}},
                }
            },
            "destinationConfig": {
                "onFailure": {
                    "sqs": {
                        "queueUrl": "http://sqs:9324/0/dlq",
                        "credentials": {"secretRef": {"name": "aws"}},
                    }
                }
            },
        }
    )
    env = env_of(build_mapping(esm, SETTINGS))
    expected = [
        ("kafka-ca", "ca.crt"),
        ("kafka-user", "username"),
        ("kafka-user", "password"),
        ("aws", "accessKeyId"),
        ("aws", "secretAccessKey"),
        ("aws", "sessionToken"),
    ]
    for name, key in expected:
        assert env[secret_env_name(name, key)] == {
            "secretKeyRef": {"name": name, "key": key, "optional": True}
        }
    assert "password" not in json.dumps(env["LAMINA_ESM"]).replace('"password"', "")  # names only


def test_kubernetes_source_runs_as_the_named_service_account_and_writes_status_with_its_own() -> None:
    esm = mapping(
        {
            "source": {
                "kubernetes": {"apiVersion": "apps/v1", "kind": "Deployment", "serviceAccountName": "watcher"}
            }
        }
    )
    dep = build_mapping(esm, SETTINGS)
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "watcher"
    assert {
        "name": "status-token",
        "secret": {"secretName": "esm-orders-status-token", "defaultMode": 0o440},
    } in (pod["volumes"])
    mounts = pod["containers"][0]["volumeMounts"]
    assert {"name": "status-token", "mountPath": "/var/run/lamina/status-token", "readOnly": True} in mounts
    assert env_of(dep)["LAMINA_STATUS_TOKEN_DIR"] == "/var/run/lamina/status-token"
    objects = build_mapping_identity(esm)
    kinds = [o["kind"] for o in objects]
    assert kinds == ["ServiceAccount", "Role", "RoleBinding", "Secret"]
    secret = objects[-1]
    assert secret["type"] == "kubernetes.io/service-account-token"
    assert secret["metadata"]["annotations"]["kubernetes.io/service-account.name"] == "esm-orders"
    # Nothing is granted to the account the mapping names.
    binding = objects[2]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "esm-orders", "namespace": "team-a"}]
