"""Warm pools as data: which functions take pool pods, the pool Deployments, the hand-over."""

from __future__ import annotations

from dataclasses import replace

import pytest

from lamina.resources import Settings, labels
from lamina.resources.pool import (
    DEPLOYMENT_PATH,
    POOL_PATH,
    PoolKey,
    UnresolvedReference,
    build_pool,
    cold_start_path,
    handover,
    handover_environment,
    inline_files,
    layer_paths,
    pool_key,
    pool_size,
    pools_wanted,
    source_doc,
)
from tests.unit.test_resources_function import SETTINGS, function

POOLED = replace(SETTINGS, pool_size=3)


def test_pool_keys_follow_the_runtime_image_and_memory() -> None:
    assert pool_key(function({"memoryMB": 256})) == PoolKey("python3.12", 256)
    assert pool_key(function({"runtime": "python3.11"})) == PoolKey("python3.11", 128)
    # A custom runtime's bootstrap runs in the python3.12 image: it shares that pool.
    custom = function({"runtime": "provided.al2023", "handler": "function.handler"})
    assert pool_key(custom) == PoolKey("python3.12", 128)
    assert PoolKey.parse("python3.12-128") == PoolKey("python3.12", 128)
    assert PoolKey("python3.12", 128).deployment == "lamina-pool-python3-12-128"


def test_who_takes_the_pool_and_why_not() -> None:
    assert cold_start_path(function(), POOLED, 3).path == POOL_PATH
    off = cold_start_path(function(), POOLED, 0)
    assert (off.path, off.reason) == (DEPLOYMENT_PATH, "no warm pool in this namespace (pool size 0)")
    sized = replace(POOLED, pool_memory_sizes=(128, 512))
    assert cold_start_path(function({"memoryMB": 512}), sized, 3).path == POOL_PATH
    odd = cold_start_path(function({"memoryMB": 300}), sized, 3)
    assert (odd.path, odd.reason) == (DEPLOYMENT_PATH, "no pool of 300 MB (pools: 128, 512 MB)")
    s3 = function({"code": {"s3": {"bucket": "code-bucket", "key": "k.zip"}}})
    assert cold_start_path(s3, POOLED, 3).path == DEPLOYMENT_PATH
    url = function({"code": {"url": "https://example.com/c.zip", "sha256": "ab" * 32}})
    assert cold_start_path(url, POOLED, 3).path == POOL_PATH  # the claimed pod fetches it itself
    own = cold_start_path(function({"serviceAccountName": "reports-writer"}), POOLED, 3)
    assert own.path == DEPLOYMENT_PATH and "reports-writer" in own.reason
    walled = cold_start_path(function({"network": {"egress": []}}), POOLED, 3)
    assert walled.path == DEPLOYMENT_PATH and "spec.network.egress" in walled.reason
    # Only DNS kept open by the default: the installation's egress, which the pool's pods share.
    default = cold_start_path(function({"network": {"allowDns": False}}), POOLED, 3)
    assert default.path == POOL_PATH


def test_one_pool_per_runtime_and_size_in_use() -> None:
    fns = [
        function(name="a"),
        function({"memoryMB": 256}, name="b"),
        function({"memoryMB": 256}, name="c"),
        function({"code": {"s3": {"bucket": "code-bucket", "key": "k.zip"}}}, name="d"),  # Deployment path
    ]
    assert pools_wanted(fns, POOLED, 3) == {PoolKey("python3.12", 128): 3, PoolKey("python3.12", 256): 3}
    assert pools_wanted(fns, POOLED, 0) == {}


def test_a_namespace_annotation_overrides_the_pool_size() -> None:
    assert pool_size(POOLED, None) == 3
    assert pool_size(POOLED, {"metadata": {"annotations": {labels.POOL_SIZE: "5"}}}) == 5
    assert pool_size(POOLED, {"metadata": {"annotations": {labels.POOL_SIZE: "0"}}}) == 0
    assert pool_size(POOLED, {"metadata": {"annotations": {labels.POOL_SIZE: "many"}}}) == 3


def test_pool_pods_are_generic_hardened_and_hold_no_credentials() -> None:
    dep = build_pool("team-a", PoolKey("python3.12", 256), 3, POOLED)
    assert dep["metadata"]["name"] == "lamina-pool-python3-12-256"
    assert "ownerReferences" not in dep["metadata"]  # shared by every function of that size
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["selector"]["matchLabels"] == {
        labels.NAME: labels.POOL_APP,
        labels.POOL: "python3.12-256",
        labels.POOL_STATE: labels.IDLE,  # a claimed pod leaves the pool; its ReplicaSet refills it
    }
    pod = dep["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    assert pod["shareProcessNamespace"] is True  # a pool pod deleted while starting stops at once
    assert pod["securityContext"]["runAsNonRoot"] is True
    [c] = pod["containers"]
    assert c["image"] == "registry.example/runtime:python3.12"
    assert c["command"][-1] == "--pool"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["resources"]["limits"]["memory"] == "320Mi"  # 256 + the runtime server's 64
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/tmp", "/var/task", "/opt/layers"}
    assert all("secret" not in str(v).lower() for v in pod["volumes"])
    assert all("valueFrom" not in e for e in c["env"])
    assert labels.FUNCTION not in dep["spec"]["template"]["metadata"]["labels"]


def test_the_hand_over_carries_what_the_deployment_would_have() -> None:
    fn = function(
        {
            "layers": ["shared"],
            "environment": {"GREETING": "hi"},
            "environmentFrom": [{"name": "DB_PASSWORD", "secretKeyRef": {"name": "db", "key": "password"}}],
        }
    )
    paths = layer_paths(["shared"])
    assert paths == ["/opt/layers/0-shared"]
    env = handover_environment(fn, POOLED, paths, {"DB_PASSWORD": "pw"})
    assert env["GREETING"] == "hi" and env["DB_PASSWORD"] == "pw"
    assert env["LAMINA_LAYERS"] == "/opt/layers/0-shared" and env["LAMINA_HANDLER"] == "index.handler"
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "hello" and env["AWS_REGION"] == "eu-west-1"
    with pytest.raises(UnresolvedReference, match="DB_PASSWORD"):
        handover_environment(fn, POOLED, paths, {})
    body = handover(
        env,
        source_doc(inline_files(fn)),
        [source_doc(url="https://example.com/l.zip", sha256="AB" * 32)],
        "secret",
    )
    assert body["code"] == {"files": {"index.py": "def handler(e, c):\n    return 1\n"}}
    assert body["layers"] == [{"url": "https://example.com/l.zip", "sha256": "ab" * 32}]
    assert body["invokeSecret"] == "secret"


def test_pool_settings_from_the_environment() -> None:
    s = Settings.from_env({"LAMINA_POOL_SIZE": "2", "LAMINA_POOL_MEMORY_SIZES": "128, 256"})
    assert (s.pool_size, s.pool_memory_sizes) == (2, (128, 256))
    assert Settings.from_env({}).pool_size == 0
    with pytest.raises(ValueError, match="LAMINA_POOL_SIZE"):
        Settings.from_env({"LAMINA_POOL_SIZE": "-1"})
