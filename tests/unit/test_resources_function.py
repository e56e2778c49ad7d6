"""Function -> Deployment / Service / code ConfigMap (pure builders, no cluster)."""

from __future__ import annotations

from typing import Any

import pytest

from lamina.api import Function, parse_object
from lamina.resources import (
    LayerArtifact,
    Settings,
    build_function,
    deployment_readiness,
    desired_replicas,
    labels,
)

SHA = "ab" * 32
SETTINGS = Settings(runtime_image="registry.example/runtime:{runtime}", region="eu-west-1")


def function(spec: dict[str, Any] | None = None, name: str = "hello", **meta: Any) -> Function:
    body = {"handler": "index.handler", "code": {"inline": "def handler(e, c):\n    return 1\n"}}
    body.update(spec or {})
    metadata = {"name": name, "namespace": "team-a", "uid": "uid-1", "generation": 1, **meta}
    obj = parse_object(
        {"apiVersion": "lamina.dev/v1alpha1", "kind": "Function", "metadata": metadata, "spec": body}
    )
    assert isinstance(obj, Function)
    return obj


def container(deployment: dict[str, Any], name: str = "function") -> dict[str, Any]:
    pod = deployment["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] + pod.get("initContainers", []) if c["name"] == name)


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(deployment)["env"]}


def test_inline_code_becomes_index_py_mounted_at_task_root() -> None:
    res = build_function(function(), SETTINGS)
    assert res.code_config_map is not None
    assert res.code_config_map["metadata"]["name"] == "hello-code"
    assert res.code_config_map["data"] == {"index.py": "def handler(e, c):\n    return 1\n"}
    pod = res.deployment["spec"]["template"]["spec"]
    assert {"name": "code", "configMap": {"name": "hello-code"}} in pod["volumes"]
    assert {"name": "code", "mountPath": "/var/task", "readOnly": True} in container(res.deployment)[
        "volumeMounts"
    ]
    assert "initContainers" not in pod
    assert [o["kind"] for o in res.objects()] == ["ConfigMap", "Service", "Deployment"]


def test_config_map_code_is_mounted_and_its_content_is_hashed() -> None:
    fn = function({"code": {"configMap": {"name": "src"}}})
    with pytest.raises(ValueError, match="ConfigMap src"):
        build_function(fn, SETTINGS)
    res = build_function(fn, SETTINGS, code_config_map={"data": {"app.py": "x = 1"}})
    assert res.code_config_map is None
    pod = res.deployment["spec"]["template"]["spec"]
    assert {"name": "code", "configMap": {"name": "src"}} in pod["volumes"]
    other = build_function(fn, SETTINGS, code_config_map={"data": {"app.py": "x = 2"}})
    assert other.config_hash != res.config_hash
    assert other.code_digest != res.code_digest


def test_url_code_is_fetched_by_an_init_container_into_an_empty_dir() -> None:
    res = build_function(
        function({"code": {"url": "https://example.com/f.zip", "sha256": SHA.upper()}}), SETTINGS
    )
    pod = res.deployment["spec"]["template"]["spec"]
    assert {"name": "code", "emptyDir": {"sizeLimit": "250Mi"}} in pod["volumes"]
    fetch = container(res.deployment, "fetch-code")
    assert fetch["command"] == [
        "python",
        "-m",
        "lamina_runtime",
        "fetch",
        "https://example.com/f.zip",
        SHA,
        "/var/task",
    ]
    assert fetch["image"] == "registry.example/runtime:python3.12"
    assert {"name": "code", "mountPath": "/var/task"} in fetch["volumeMounts"]
    assert res.code_digest == SHA


@pytest.mark.parametrize(
    ("memory", "cpu"),
    [(128, "100m"), (1769, "1000m"), (3538, "2000m"), (10240, "5789m")],
)
def test_memory_is_request_and_limit_and_cpu_follows_it(memory: int, cpu: str) -> None:
    res = build_function(function({"memoryMB": memory}), SETTINGS)
    resources = container(res.deployment)["resources"]
    # memoryMB is enforced by the runtime on the worker; the limit adds the pod server's share.
    assert resources["requests"] == {"cpu": cpu, "memory": f"{memory + 64}Mi"}
    assert resources["limits"] == {"memory": f"{memory + 64}Mi"}
    assert env_of(res.deployment)["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == str(memory)


def test_environment_lambda_variables_then_user_then_references() -> None:
    fn = function(
        {
            "runtime": "python3.11",
            "timeoutSeconds": 30,
            "environment": {"STAGE": "prod", "AWS_REGION": "us-west-2"},
            "environmentFrom": [
                {"name": "DB_PASSWORD", "secretKeyRef": {"name": "db", "key": "password"}},
                {"name": "LEVEL", "configMapKeyRef": {"name": "cfg", "key": "level"}},
            ],
        }
    )
    res = build_function(fn, SETTINGS)
    env = env_of(res.deployment)
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "hello"
    assert env["_HANDLER"] == env["LAMINA_HANDLER"] == "index.handler"
    assert env["LAMBDA_TASK_ROOT"] == "/var/task"
    assert env["LAMINA_TIMEOUT_SECONDS"] == "30"
    assert env["AWS_EXECUTION_ENV"] == "AWS_Lambda_python3.11"
    assert env["LAMINA_RUNTIME"] == "python3.11"
    assert env["AWS_REGION"] == "us-west-2"  # the user's value replaces the default
    assert env["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert env["STAGE"] == "prod"
    assert env["DB_PASSWORD"] == {"secretKeyRef": {"name": "db", "key": "password"}}
    assert env["LEVEL"] == {"configMapKeyRef": {"name": "cfg", "key": "level"}}
    names = [e["name"] for e in container(res.deployment)["env"]]
    assert len(names) == len(set(names)), "server-side apply refuses duplicate env names"
    assert "LAMINA_LAYERS" not in env
    assert container(res.deployment)["image"] == "registry.example/runtime:python3.11"


@pytest.mark.parametrize(("provisioned", "init_type"), [(0, "on-demand"), (2, "provisioned-concurrency")])
def test_initialization_type_follows_provisioned_concurrency(provisioned: int, init_type: str) -> None:
    """A Deployment with provisioned concurrency holds the provisioned environments: their runtime
    omits Init Duration and fails instead of serving after a failed INIT (AWS_LAMBDA_INITIALIZATION_TYPE,
    a name reserved by the runtime: the API refuses it in spec.environment)."""
    fn = function({"provisionedConcurrency": provisioned})
    assert env_of(build_function(fn, SETTINGS).deployment)["AWS_LAMBDA_INITIALIZATION_TYPE"] == init_type


@pytest.mark.parametrize("runtime", ["provided.al2023", "provided.al2"])
def test_custom_runtime_carries_its_runtime_and_runs_in_the_python_image(runtime: str) -> None:
    """The runtime server reads LAMINA_RUNTIME to run the bootstrap; like Lambda, no AWS_EXECUTION_ENV."""
    res = build_function(function({"runtime": runtime, "handler": "function.handler"}), SETTINGS)
    env = env_of(res.deployment)
    assert env["LAMINA_RUNTIME"] == runtime
    assert env["_HANDLER"] == "function.handler"
    assert "AWS_EXECUTION_ENV" not in env
    assert container(res.deployment)["image"] == "registry.example/runtime:python3.12"


def test_layers_mounted_in_order_and_listed_in_lamina_layers() -> None:
    fn = function({"layers": ["deps", "utils"]})
    arts = [
        LayerArtifact("deps", 2, "11" * 32, url="https://example.com/deps.zip"),
        LayerArtifact("utils", 1, "22" * 32, config_map="layer-utils-222222222222"),
    ]
    res = build_function(fn, SETTINGS, arts)
    env = env_of(res.deployment)
    assert env["LAMINA_LAYERS"] == "/opt/layers/0-deps:/opt/layers/1-utils"
    pod = res.deployment["spec"]["template"]["spec"]
    assert {"name": "layer-1", "configMap": {"name": "layer-utils-222222222222"}} in pod["volumes"]
    assert {"name": "layer-0", "emptyDir": {"sizeLimit": "250Mi"}} in pod["volumes"]
    fetch = container(res.deployment, "fetch-layer-0")
    assert fetch["command"][-3:] == ["https://example.com/deps.zip", "11" * 32, "/opt/layers/0-deps"]
    mounts = {m["mountPath"]: m["name"] for m in container(res.deployment)["volumeMounts"]}
    assert mounts["/opt/layers/0-deps"] == "layer-0" and mounts["/opt/layers/1-utils"] == "layer-1"
    with pytest.raises(ValueError, match=r"do not match spec\.layers"):
        build_function(fn, SETTINGS, list(reversed(arts)))


def test_hardened_pod() -> None:
    res = build_function(function({"code": {"url": "https://example.com/f.zip", "sha256": SHA}}), SETTINGS)
    pod = res.deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["shareProcessNamespace"] is True  # pause is PID 1: an early SIGTERM is not dropped
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in pod["containers"] + pod["initContainers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]


def test_serves_on_8080_with_healthz_readiness() -> None:
    res = build_function(function({"timeoutSeconds": 60}), SETTINGS)
    c = container(res.deployment)
    assert c["command"][-4:] == ["--host", "0.0.0.0", "--port", "8080"]
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert res.deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 65


def test_labels_selector_owner_and_service() -> None:
    res = build_function(function({"provisionedConcurrency": 3, "reservedConcurrency": 5}), SETTINGS)
    dep, svc = res.deployment, res.service
    assert dep["metadata"]["name"] == svc["metadata"]["name"] == "fn-hello"
    sel = {"app.kubernetes.io/name": "lamina-function", "lamina.dev/function": "hello"}
    assert dep["spec"]["selector"] == {"matchLabels": sel}
    assert sel.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["selector"] == sel
    assert svc["spec"]["clusterIP"] == "None"
    assert dep["spec"]["replicas"] == 3
    assert dep["metadata"]["annotations"][labels.PROVISIONED] == "3"
    for obj in res.objects():
        assert obj["metadata"]["namespace"] == "team-a"
        assert obj["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "lamina.dev/v1alpha1",
                "kind": "Function",
                "name": "hello",
                "uid": "uid-1",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]


def test_parent_labels_are_not_copied_to_children() -> None:
    res = build_function(function(labels={"app.kubernetes.io/instance": "argo-app"}), SETTINGS)
    for obj in res.objects():
        assert "app.kubernetes.io/instance" not in obj["metadata"]["labels"]


def test_long_function_names_still_give_dns_label_children() -> None:
    name = "f" * 63
    res = build_function(function(name=name), SETTINGS)
    for obj in (res.deployment, res.service):
        assert len(obj["metadata"]["name"]) <= 63
    assert (
        build_function(function(name="f" * 62 + "g"), SETTINGS).service["metadata"]["name"]
        != (res.service["metadata"]["name"])
    )


def template_hash(res: Any) -> str:
    return res.deployment["spec"]["template"]["metadata"]["annotations"][labels.CONFIG_HASH]


@pytest.mark.parametrize(
    ("change", "rolls"),
    [
        ({"code": {"inline": "def handler(e, c):\n    return 2\n"}}, True),
        ({"memoryMB": 256}, True),
        ({"environment": {"A": "1"}}, True),
        ({"handler": "index.other"}, True),
        ({"reservedConcurrency": 7}, False),
        ({"provisionedConcurrency": 2}, False),
        ({"idleTimeoutSeconds": 60}, False),
        ({"async": {"maximumRetryAttempts": 0}}, False),
        ({"logging": {"logFormat": "JSON"}}, True),
    ],
)
def test_config_hash_changes_with_what_environments_are_made_of(change: dict[str, Any], rolls: bool) -> None:
    base = build_function(function(), SETTINGS)
    changed = build_function(function(change), SETTINGS)
    assert (template_hash(changed) != template_hash(base)) is rolls


def test_config_hash_ignores_metadata_but_follows_layer_content() -> None:
    base = build_function(function(), SETTINGS)
    relabelled = build_function(
        function(labels={"team": "x"}, annotations={"note": "y"}, generation=9), SETTINGS
    )
    assert template_hash(relabelled) == template_hash(base)
    fn = function({"layers": ["deps"]})
    one = build_function(fn, SETTINGS, [LayerArtifact("deps", 1, "11" * 32, config_map="layer-deps-1")])
    two = build_function(fn, SETTINGS, [LayerArtifact("deps", 2, "22" * 32, config_map="layer-deps-2")])
    assert template_hash(one) != template_hash(two)


def test_builder_is_deterministic() -> None:
    assert build_function(function(), SETTINGS) == build_function(function(), SETTINGS)


# ------------------------------------------------------------------------------------ observed state


def deployment(desired: int, generation: int = 2, observed: int = 2, **status: int) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": desired},
        "status": {"observedGeneration": observed, **status},
    }


@pytest.mark.parametrize(
    ("dep", "provisioned", "ready", "reason"),
    [
        (None, 0, False, "Deploying"),
        (deployment(0, observed=1), 0, False, "Deploying"),
        (deployment(0), 0, True, "OnDemand"),
        (
            deployment(2, replicas=2, updatedReplicas=2, readyReplicas=2, availableReplicas=2),
            2,
            True,
            "EnvironmentsReady",
        ),
        (
            deployment(2, replicas=2, updatedReplicas=2, readyReplicas=1, availableReplicas=1),
            2,
            False,
            "RollingOut",
        ),
        (
            deployment(2, replicas=3, updatedReplicas=2, readyReplicas=3, availableReplicas=3),
            2,
            False,
            "RollingOut",
        ),
        (
            deployment(2, replicas=2, updatedReplicas=1, readyReplicas=2, availableReplicas=2),
            2,
            False,
            "RollingOut",
        ),
        # the gateway scaled down below provisioned for a moment: the rollout is complete but short
        (
            deployment(1, replicas=1, updatedReplicas=1, readyReplicas=1, availableReplicas=1),
            2,
            False,
            "WaitingForEnvironments",
        ),
    ],
)
def test_deployment_readiness(dep: Any, provisioned: int, ready: bool, reason: str) -> None:
    r = deployment_readiness(dep, provisioned)
    assert (r.ready, r.reason) == (ready, reason)


@pytest.mark.parametrize(
    ("current", "previous", "provisioned", "want"),
    [
        (None, None, 2, 2),  # new Deployment
        (1, 2, 2, 2),  # below provisioned: raise
        (5, 2, 2, None),  # on-demand environments above provisioned: the gateway's business
        (2, 2, 2, None),
        (3, 3, 1, 1),  # provisioned lowered, nothing on demand: follow
        (4, 3, 1, None),  # provisioned lowered while on-demand environments run: the gateway reaps
        (3, None, 1, None),  # unknown history: leave it
    ],
)
def test_desired_replicas(
    current: int | None, previous: int | None, provisioned: int, want: int | None
) -> None:
    assert desired_replicas(current, previous, provisioned) == want


def test_s3_code_is_fetched_by_an_init_container_with_secret_references_only() -> None:
    from dataclasses import dataclass

    from lamina.api import parse_object
    from lamina.resources import Settings, build_function

    @dataclass(frozen=True)
    class Resolved:
        sha256: str
        version_id: str | None

    fn = parse_object(
        {
            "apiVersion": "lamina.dev/v1alpha1",
            "kind": "Function",
            "metadata": {"name": "f", "namespace": "ns", "uid": "u"},
            "spec": {
                "handler": "app.handler",
                "code": {
                    "s3": {
                        "bucket": "code-bucket",
                        "key": "f/app.zip",
                        "endpoint": "http://minio.storage:9000",
                        "credentialsSecret": {"name": "s3-creds"},
                    }
                },
            },
        }
    )
    res = build_function(fn, Settings(), s3_code=Resolved("ab" * 32, "v-3"))  # type: ignore[arg-type]
    assert res.code_digest == "ab" * 32
    pod = res.deployment["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["command"][:4] == ["python", "-m", "lamina_runtime", "fetch-s3"]
    assert ["--version-id", "v-3"] == init["command"][init["command"].index("--version-id") :][:2]
    assert init["command"][-4:] == ["code-bucket", "f/app.zip", "ab" * 32, "/var/task"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in init["env"]}
    assert refs["AWS_ACCESS_KEY_ID"] == {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID", "optional": False}
    assert refs["AWS_SESSION_TOKEN"]["optional"] is True
    assert all("value" not in e for e in init["env"])
    other = build_function(fn, Settings(), s3_code=Resolved("cd" * 32, "v-4"))  # type: ignore[arg-type]
    assert other.config_hash != res.config_hash  # a new object version rolls the environments


def test_functions_can_call_the_gateway_with_credentials_boto3_signs_with() -> None:
    env = env_of(build_function(function(), SETTINGS).deployment)
    assert env["AWS_ENDPOINT_URL_LAMBDA"] == SETTINGS.gateway_url
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "eu-west-1"
    # placeholders until execution credentials are handed out, shaped as AWS's so that boto3 signs
    assert len(env["AWS_ACCESS_KEY_ID"]) == 20 and len(env["AWS_SECRET_ACCESS_KEY"]) == 40
    own = env_of(
        build_function(
            function({"environment": {"AWS_ENDPOINT_URL_LAMBDA": "https://x"}}), SETTINGS
        ).deployment
    )
    assert own["AWS_ENDPOINT_URL_LAMBDA"] == "https://x"  # the function's own value wins


def test_logging_config_becomes_lambdas_variables() -> None:
    plain = env_of(build_function(function(), SETTINGS).deployment)
    assert "AWS_LAMBDA_LOG_FORMAT" not in plain and "AWS_LAMBDA_LOG_LEVEL" not in plain
    assert plain["AWS_LAMBDA_LOG_GROUP_NAME"] == "/aws/lambda/hello"
    assert plain["LAMINA_SYSTEM_LOG_LEVEL"] == "INFO"
    logging = {
        "logFormat": "JSON",
        "applicationLogLevel": "DEBUG",
        "systemLogLevel": "WARN",
        "logGroup": "/x/y",
    }
    env = env_of(build_function(function({"logging": logging}), SETTINGS).deployment)
    assert env["AWS_LAMBDA_LOG_FORMAT"] == "JSON" and env["AWS_LAMBDA_LOG_LEVEL"] == "DEBUG"
    assert env["LAMINA_SYSTEM_LOG_LEVEL"] == "WARN" and env["AWS_LAMBDA_LOG_GROUP_NAME"] == "/x/y"
    json_default = env_of(build_function(function({"logging": {"logFormat": "JSON"}}), SETTINGS).deployment)
    assert json_default["AWS_LAMBDA_LOG_LEVEL"] == "INFO"
