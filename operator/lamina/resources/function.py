"""Function -> the objects that run it: a Deployment of the runtime image, a headless Service and, for
inline code, a ConfigMap holding ``index.py``.

Pure: the caller reads whatever the build depends on (the user's code ConfigMap, the Layers' ready
artifacts) and passes it in; nothing here talks to a cluster.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from lamina.api import Function
from lamina.api.common import S3Location
from lamina.resources import labels, names
from lamina.resources.layer import LayerArtifact
from lamina.resources.meta import config_map_digest, digest, metadata
from lamina.resources.network import build_network_policy
from lamina.resources.pod_state import PodProblem
from lamina.resources.pods import container_security_context, hardened_pod, runtime_container
from lamina.resources.runtime_env import CREDENTIAL_VARIABLES, function_environment, system_log_level
from lamina.resources.settings import Settings
from lamina_runtime.factory import is_custom_runtime

PORT = 8080
TASK_ROOT = "/var/task"
TMP_SIZE = "512Mi"  # Lambda's default ephemeral /tmp
#: Lambda's unzipped limit (250 MB = 262,144,000 bytes): each code or layer volume the init
#: containers fill is bounded on disk too, not only by the fetch's own check of the archive.
UNZIPPED_SIZE = "250Mi"
#: The pod's runtime server lives beside the function's worker. The runtime stops a worker whose
#: resident memory passes memoryMB (Runtime.OutOfMemory, as Lambda does), so the container limit
#: leaves room for the server: the kernel's OOM killer must not get there first.
SERVER_MEMORY_HEADROOM_MB = 64
INLINE_FILE = "index.py"
#: ``-S``: the server imports the standard library and lamina_runtime (on PYTHONPATH) only, and a
#: cold start waits for its start-up: site's processing of site-packages is skipped.
SERVE_COMMAND = ["python", "-S", "-m", "lamina_runtime", "serve", "--host", "0.0.0.0", "--port", str(PORT)]
#: AWS_LAMBDA_INITIALIZATION_TYPE of a Deployment's pods: with provisioned concurrency they are the
#: provisioned environments (INIT ahead of any request: no Init Duration on their first REPORT, and an
#: INIT failure fails the environment instead of answering a call); else they start on demand.
PROVISIONED_CONCURRENCY, ON_DEMAND = "provisioned-concurrency", "on-demand"
#: ``python -m lamina_runtime fetch URL SHA256 DEST``: download a zip, check its digest, extract it.
FETCH_COMMAND = ["python", "-m", "lamina_runtime", "fetch"]
#: ``python -m lamina_runtime fetch-s3 [--endpoint E] [--version-id V] BUCKET KEY SHA256 DEST``.
FETCH_S3_COMMAND = ["python", "-m", "lamina_runtime", "fetch-s3"]
LATEST = "$LATEST"
#: Keys of a version ConfigMap that hold code files (``code.index.py``); the rest is the snapshot.
VERSION_CODE_PREFIX = "code."
#: Seconds a terminating environment gets beyond the function timeout to finish its invocation.
GRACE_SECONDS = 5


#: Keys of a function's own Secret (see :func:`function_secret`).
INVOKE_SECRET_KEY = "invoke-secret"


@dataclass(frozen=True)
class FunctionResources:
    """Everything one Function needs, as plain dicts ready for server-side apply (the Secret, which the
    operator may only create, is created, never applied)."""

    deployment: dict[str, Any]
    service: dict[str, Any]
    code_config_map: dict[str, Any] | None
    config_hash: str
    code_digest: str
    secret: dict[str, Any] | None = None
    network_policy: dict[str, Any] | None = None

    def objects(self) -> list[dict[str, Any]]:
        """In the order they should be applied (what the pods mount first)."""
        head = [self.code_config_map] if self.code_config_map is not None else []
        policy = [self.network_policy] if self.network_policy is not None else []
        return [*head, *policy, self.service, self.deployment]


def function_secret(fn: Function, values: Mapping[str, str]) -> dict[str, Any]:
    """The function's own Secret: its invoke secret (``invoke-secret``, which only the gateway also
    knows) and its execution credentials (``AWS_*``). Derived values, recomputed on every reconcile;
    named after their digest, so changed values make a new Secret rather than an update."""
    name = names.function_secret(fn.name, digest(dict(values)))
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": metadata(name, fn, labels.function_labels(fn.name)),
        "stringData": dict(values),
    }


def code_digest(
    fn: Function, code_config_map: Mapping[str, Any] | None = None, s3_code: S3Code | None = None
) -> str:
    """Digest of the function's code: of the inline text, of the ConfigMap's content, the zip's sha256,
    or the digest the operator computed of the S3 object."""
    code = fn.spec.code
    if code.s3 is not None:
        if s3_code is None:
            raise ValueError(f"Function {fn.name}: the digest of {code.s3.describe()} is needed")
        return s3_code.sha256
    if code.inline is not None:
        return hashlib.sha256(code.inline.encode()).hexdigest()
    if code.config_map is not None:
        if code_config_map is None:
            raise ValueError(f"Function {fn.name}: the content of ConfigMap {code.config_map.name} is needed")
        return config_map_digest(code_config_map)
    assert code.sha256 is not None
    return code.sha256.lower()


def config_hash(fn: Function, image: str, code: str, layers: Sequence[LayerArtifact]) -> str:
    """Digest of everything an environment is made of. It goes on the pod template, so a change of
    code, layer content or configuration rolls the environments; metadata changes do not."""
    spec = fn.spec
    return digest(
        {
            "image": image,
            "runtime": spec.runtime,
            "handler": spec.handler,
            "code": [spec.code.kind, code],
            "memoryMB": spec.memory_mb,
            "timeoutSeconds": spec.timeout_seconds,
            "environment": spec.environment,
            "environmentFrom": [e.to_dict() for e in spec.environment_from],
            "layers": [[a.name, a.digest] for a in layers],
            "logging": spec.logging.to_dict(),
            "serviceAccountName": spec.service_account_name,
        }
    )


class S3Code(Protocol):
    """The S3 object the pods fetch, as the operator resolved it."""

    @property
    def sha256(self) -> str: ...

    @property
    def version_id(self) -> str | None: ...


def build_function(
    fn: Function,
    settings: Settings,
    layers: Sequence[LayerArtifact] = (),
    code_config_map: Mapping[str, Any] | None = None,
    s3_code: S3Code | None = None,
    secret_values: Mapping[str, str] | None = None,
) -> FunctionResources:
    """The desired children of ``fn``.

    ``layers`` are the ready artifacts of ``fn.spec.layers``, in that order. ``code_config_map`` is the
    user's ConfigMap when the code comes from one (its content goes into the config hash, so editing it
    rolls the environments on the next reconcile). ``secret_values`` are the function's derived
    secrets (lamina.auth.credentials: ``invoke-secret`` and the ``AWS_*`` credentials), which go into
    its own Secret and reach the container through secretKeyRef.
    """
    if [a.name for a in layers] != list(fn.spec.layers):
        raise ValueError(
            f"Function {fn.name}: layer artifacts {[a.name for a in layers]} do not match spec.layers "
            f"{list(fn.spec.layers)}"
        )
    image = settings.image_for(fn.spec.runtime)
    code = code_digest(fn, code_config_map, s3_code)
    chash = config_hash(fn, image, code, layers)
    inline = fn.spec.code.inline
    code_cm = None
    if inline is not None:
        code_cm = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata(
                names.function_code_config_map(fn.name), fn, labels.function_labels(fn.name)
            ),
            "data": {INLINE_FILE: inline},
        }
    secret = function_secret(fn, secret_values) if secret_values else None
    secret_name = secret["metadata"]["name"] if secret is not None else None
    return FunctionResources(
        deployment=_deployment(
            fn,
            settings,
            image,
            layers,
            chash,
            s3_code,
            secret_name=secret_name,
            secret_values=secret_values or {},
        ),
        service=_service(fn),
        code_config_map=code_cm,
        config_hash=chash,
        code_digest=code,
        secret=secret,
        network_policy=build_network_policy(fn, settings) if settings.network_policies else None,
    )


def _service(fn: Function) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(names.function_service(fn.name), fn, labels.function_labels(fn.name)),
        "spec": {
            # Headless: one environment serves one request at a time, so the gateway picks pods itself.
            "clusterIP": "None",
            "selector": labels.function_selector(fn.name),
            "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}],
            "publishNotReadyAddresses": False,
        },
    }


@dataclass(frozen=True)
class VersionPods:
    """What makes a published version's Deployment differ from $LATEST's: its number, its own name and
    selector, and its code read from the version's immutable ConfigMap (files under ``code.<name>``)."""

    number: str
    config_map: str
    code_files: tuple[str, ...]
    provisioned: int


def _deployment(
    fn: Function,
    settings: Settings,
    image: str,
    layers: Sequence[LayerArtifact],
    chash: str,
    s3_code: S3Code | None = None,
    version: VersionPods | None = None,
    secret_name: str | None = None,
    secret_values: Mapping[str, str] = {},
) -> dict[str, Any]:
    spec = fn.spec
    if version is None:
        name, provisioned = names.function_deployment(fn.name), spec.provisioned_concurrency
        own_labels, selector = labels.function_labels(fn.name), labels.function_selector(fn.name)
    else:
        name, provisioned = names.version_deployment(fn.name, version.number), version.provisioned
        own_labels = labels.version_labels(fn.name, version.number)
        selector = labels.version_selector(fn.name, version.number)
    pod_labels = {**own_labels, **selector}
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    init: list[dict[str, Any]] = []

    code = spec.code
    mounts.append({"name": "code", "mountPath": TASK_ROOT, "readOnly": True})
    if version is not None and version.code_files:
        items = [{"key": f"{VERSION_CODE_PREFIX}{f}", "path": f} for f in version.code_files]
        volumes.append({"name": "code", "configMap": {"name": version.config_map, "items": items}})
    elif code.inline is not None:
        volumes.append({"name": "code", "configMap": {"name": names.function_code_config_map(fn.name)}})
    elif code.config_map is not None:
        volumes.append({"name": "code", "configMap": {"name": code.config_map.name}})
    elif code.s3 is not None:
        assert s3_code is not None
        volumes.append({"name": "code", "emptyDir": {}})
        init.append(_fetch_s3_container("fetch-code", image, settings, code.s3, s3_code, "code", TASK_ROOT))
    else:
        assert code.url is not None and code.sha256 is not None
        volumes.append({"name": "code", "emptyDir": {"sizeLimit": UNZIPPED_SIZE}})
        init.append(_fetch_container("fetch-code", image, settings, code.url, code.sha256, "code", TASK_ROOT))

    layer_paths = []
    for i, artifact in enumerate(layers):
        path = names.layer_mount_path(i, artifact.name)
        volume = f"layer-{i}"
        layer_paths.append(path)
        mounts.append({"name": volume, "mountPath": path, "readOnly": True})
        if artifact.config_map is not None:
            volumes.append({"name": volume, "configMap": {"name": artifact.config_map}})
        elif artifact.s3 is not None:
            location, version_id = artifact.s3_object()
            volumes.append({"name": volume, "emptyDir": {"sizeLimit": UNZIPPED_SIZE}})
            pinned = _Pinned(artifact.digest, version_id)
            init.append(
                _fetch_s3_container(f"fetch-layer-{i}", image, settings, location, pinned, volume, path)
            )
        else:
            assert artifact.url is not None
            volumes.append({"name": volume, "emptyDir": {"sizeLimit": UNZIPPED_SIZE}})
            init.append(
                _fetch_container(
                    f"fetch-layer-{i}", image, settings, artifact.url, artifact.digest, volume, path
                )
            )

    memory = f"{spec.memory_mb + SERVER_MEMORY_HEADROOM_MB}Mi"
    container = {
        "name": "function",
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": SERVE_COMMAND,
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "env": function_env(
            fn,
            settings,
            layer_paths,
            version.number if version else LATEST,
            initialization_type=PROVISIONED_CONCURRENCY if provisioned else ON_DEMAND,
            own_credentials=bool(secret_name),
        )
        + secret_env(fn, secret_name, secret_values),
        # Readiness for kubectl, Services and the Function's status: /healthz answers 200 only
        # after INIT, so a provisioned environment is Ready only once warm. The gateway does not wait
        # for this probe on a cold start: it probes a starting pod itself every few milliseconds.
        **runtime_container(spec.cpu_millicores, memory),
        "volumeMounts": mounts,
    }
    pod = hardened_pod(
        {
            "terminationGracePeriodSeconds": spec.timeout_seconds + GRACE_SECONDS,
            "initContainers": init,
            "containers": [container],
            "volumes": volumes,
        }
    )
    if not init:
        del pod["initContainers"]
    if spec.service_account_name:
        # Lambda's execution role: the function's own ServiceAccount, and its token (nothing else).
        pod["serviceAccountName"] = spec.service_account_name
        pod["automountServiceAccountToken"] = True
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(
            name, fn, own_labels, {labels.CONFIG_HASH: chash, labels.PROVISIONED: str(provisioned)}
        ),
        "spec": {
            "replicas": provisioned,
            "selector": {"matchLabels": selector},
            "revisionHistoryLimit": 3,
            # Never drop below the provisioned environments during a rollout.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": {labels.CONFIG_HASH: chash}},
                "spec": pod,
            },
        },
    }


def _fetch_container(
    name: str, image: str, settings: Settings, url: str, sha256: str, volume: str, dest: str
) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": [*FETCH_COMMAND, url, sha256.lower(), dest],
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": volume, "mountPath": dest}, {"name": "tmp", "mountPath": "/tmp"}],
    }


@dataclass(frozen=True)
class _Pinned:
    sha256: str
    version_id: str | None


def _fetch_s3_container(
    name: str, image: str, settings: Settings, location: S3Location, s3_code: S3Code, volume: str, dest: str
) -> dict[str, Any]:
    """``fetch-s3`` of exactly the object version the operator read, checked against its digest; the
    credentials come from the Secret by reference (the pod spec holds no key)."""
    args = [*FETCH_S3_COMMAND, "--region", location.region]
    if location.endpoint:
        args += ["--endpoint", location.endpoint]
    if s3_code.version_id:
        args += ["--version-id", s3_code.version_id]
    container = {
        "name": name,
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": [*args, location.bucket, location.key, s3_code.sha256, dest],
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": volume, "mountPath": dest}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    if location.credentials_secret is not None:
        secret = location.credentials_secret.name
        container["env"] = [
            {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": optional}}}
            for key, optional in (
                ("AWS_ACCESS_KEY_ID", False),
                ("AWS_SECRET_ACCESS_KEY", False),
                ("AWS_SESSION_TOKEN", True),
            )
        ]
    return container


def secret_env(fn: Function, secret_name: str | None, values: Mapping[str, str]) -> list[dict[str, Any]]:
    """Variables from the function's own Secret: the invoke secret the runtime server requires (the
    server takes it out of the function's environment), and the execution credentials, unless the
    function sets one of those variables itself (then it signs with its own, none of ours mixed in)."""
    if secret_name is None:
        return []
    own = set(fn.spec.environment) | {e.name for e in fn.spec.environment_from}
    variables = {"LAMINA_INVOKE_SECRET": INVOKE_SECRET_KEY} if INVOKE_SECRET_KEY in values else {}
    if not own & CREDENTIAL_VARIABLES:
        variables.update({v: v for v in sorted(CREDENTIAL_VARIABLES) if v in values})
    return [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": key}}}
        for name, key in variables.items()
    ]


def function_env(
    fn: Function,
    settings: Settings,
    layer_paths: Sequence[str],
    version: str = "$LATEST",
    initialization_type: str | None = None,
    own_credentials: bool = False,
) -> list[dict[str, Any]]:
    """The container's variables: Lambda's reserved ones and lamina's (region, the gateway's endpoint,
    credentials, logging: resources.runtime_env), then the user's (a user value replaces a default of
    the same name, such as AWS_REGION), then the Secret/ConfigMap references.
    ``initialization_type`` (AWS_LAMBDA_INITIALIZATION_TYPE) is the platform's to say, never the user's.
    With ``own_credentials`` the function's execution credentials come from its own Secret
    (:func:`secret_env`), so no placeholders are set here."""
    spec = fn.spec
    values: dict[str, str] = {
        "AWS_LAMBDA_FUNCTION_NAME": fn.name,
        "AWS_LAMBDA_FUNCTION_VERSION": version,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{fn.name}",
        "AWS_EXECUTION_ENV": f"AWS_Lambda_{spec.runtime}",
        "_HANDLER": spec.handler,
        "LAMINA_HANDLER": spec.handler,
        "LAMINA_RUNTIME": spec.runtime,  # the runtime server picks the Python worker or a bootstrap by it
        "LAMBDA_TASK_ROOT": TASK_ROOT,
        "LAMINA_TIMEOUT_SECONDS": str(spec.timeout_seconds),
        "LAMINA_SYSTEM_LOG_LEVEL": system_log_level(spec.logging),
        **function_environment(
            region=settings.region,
            gateway_url=settings.gateway_url,
            logging=spec.logging,
            credentials={} if own_credentials else None,
        ),
    }
    if is_custom_runtime(spec.runtime):
        del values["AWS_EXECUTION_ENV"]  # custom runtimes do not get one on Lambda either
    if layer_paths:
        values["LAMINA_LAYERS"] = os.pathsep.join(layer_paths)
    values.update(spec.environment)
    if initialization_type is not None:
        values["AWS_LAMBDA_INITIALIZATION_TYPE"] = initialization_type
    refs = {e.name: e for e in spec.environment_from}
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in values.items() if k not in refs]
    for ref in spec.environment_from:
        if ref.secret_key_ref is not None:
            source = {"secretKeyRef": {"name": ref.secret_key_ref.name, "key": ref.secret_key_ref.key}}
        else:
            assert ref.config_map_key_ref is not None
            source = {
                "configMapKeyRef": {"name": ref.config_map_key_ref.name, "key": ref.config_map_key_ref.key}
            }
        env.append({"name": ref.name, "valueFrom": source})
    return env


# ---------------------------------------------------------------------------------- observed state


@dataclass(frozen=True)
class Readiness:
    """What a Function's Deployment says about its environments."""

    ready: bool
    reason: str
    message: str
    ready_environments: int
    desired_environments: int


def deployment_readiness(
    deployment: Mapping[str, Any] | None, provisioned: int, problem: PodProblem | None = None
) -> Readiness:
    """Ready once the Deployment's rollout is complete and ``provisioned`` environments are ready.

    ``problem`` (from :func:`lamina.resources.pod_state.function_problem` over the function's pods)
    overrides the rollout's progress: a pod whose image cannot be pulled, whose init container or
    runtime server exits, or that cannot be scheduled makes the function not Ready, with the pod's
    reason and cause, whatever the counts say."""
    readiness = _rollout_readiness(deployment, provisioned)
    if problem is None:
        return readiness
    return Readiness(
        False, problem.reason, problem.message, readiness.ready_environments, readiness.desired_environments
    )


def _rollout_readiness(deployment: Mapping[str, Any] | None, provisioned: int) -> Readiness:
    if deployment is None:
        return Readiness(False, "Deploying", "waiting for the Deployment to be created", 0, provisioned)
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    generation = (deployment.get("metadata") or {}).get("generation") or 0
    desired = spec.get("replicas", 1)
    ready = status.get("readyReplicas") or 0
    updated = status.get("updatedReplicas") or 0
    total = status.get("replicas") or 0
    available = status.get("availableReplicas") or 0
    if (status.get("observedGeneration") or 0) < generation:
        return Readiness(
            False, "Deploying", "the Deployment controller has not seen the change yet", ready, desired
        )
    if updated < desired or total > updated or available < updated:
        return Readiness(
            False,
            "RollingOut",
            f"rolling out: {updated}/{desired} environments updated, {ready} ready",
            ready,
            desired,
        )
    if ready < provisioned:
        return Readiness(
            False,
            "WaitingForEnvironments",
            f"{ready}/{provisioned} provisioned environments ready",
            ready,
            desired,
        )
    if provisioned == 0:
        return Readiness(
            True, "OnDemand", "no provisioned concurrency: environments start on demand", ready, desired
        )
    return Readiness(
        True, "EnvironmentsReady", f"{ready}/{provisioned} provisioned environments ready", ready, desired
    )


def desired_replicas(current: int | None, previous_provisioned: int | None, provisioned: int) -> int | None:
    """The replicas the operator should set, or None to leave the field to its other writer.

    Above provisioned concurrency the gateway scales environments (it patches the Deployment's scale
    subresource), so the operator only sets replicas when the Deployment is new, when it has fewer
    than ``provisioned``, or when provisioned concurrency changed and no on-demand environments are
    running on top of the old value.
    """
    if current is None or current < provisioned:
        return provisioned
    if (
        previous_provisioned is not None
        and previous_provisioned != provisioned
        and current == previous_provisioned
    ):
        return provisioned
    return None
