"""EventSourceMapping -> a Deployment of its worker (``lamina worker esm``), one replica, zero when
disabled, plus the identity the worker writes its status with. Schedules run in the same worker kind;
their ticks are claimed in Redis, so a second replica (during a rollout, or by mistake) never fires a
tick twice.

The worker gets its configuration through its environment:

- ``LAMINA_ESM``: the mapping as JSON (apiVersion, kind, metadata.name/namespace, spec);
- ``LAMINA_SECRET_<hash of name/key>`` (:func:`lamina.api.common.secret_env_name`): each Secret key the spec
  reads (``urlFrom`` broker URLs, Kafka TLS/SASL and SQS credentials), resolved by the kubelet from an
  *optional* ``secretKeyRef``: a missing Secret does not keep the worker from starting, it shows in the
  mapping's status with the Secret's name;
- ``LAMINA_GATEWAY_URL``: where to invoke the function; ``LAMINA_REDIS_URL``: schedule tick claims.

A Kubernetes source's pod runs as the ServiceAccount the mapping names (``source.kubernetes.
serviceAccountName``) and watches with it; the operator grants that account nothing. The worker
still writes its status with the mapping's own account, through that account's token Secret
(``esm-<name>-status-token``) mounted at ``/var/run/lamina/status-token``.

Otherwise its only Kubernetes API access is writing what it does (``state``, ``lastProcessingResult``,
``iteratorAgeMs``, fire times) into its own mapping's ``status``: a ServiceAccount per mapping, bound
to a Role that allows ``get``/``patch`` on ``eventsourcemappings/status`` of that one mapping by name.
A compromised worker can therefore misreport its own mapping and nothing else.

The same ServiceAccount is the mapping's identity at the gateway: the worker presents a token minted
for the gateway's audience (a projected serviceAccountToken, ``LAMINA_GATEWAY_TOKEN_FILE``), and the
Role grants ``invoke`` on the mapping's function (and on its onFailure function, when that is one of
the same namespace), nothing else. Creating the mapping is checked against its author's own right to
invoke (the chart's ValidatingAdmissionPolicy), so a mapping grants nobody more than they had.

Redis credentials for schedule tick claims (the ``ticks`` user, limited to tick keys) come from the
mapping's own Secret, so they are not in the pod spec.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lamina.api import EventSourceMapping
from lamina.api.common import secret_env_name
from lamina.resources import labels, names
from lamina.resources.meta import digest, metadata
from lamina.resources.pods import container_security_context, hardened_pod
from lamina.resources.settings import Settings

WORKER_COMMAND = ["lamina", "worker", "esm"]
STATUS_TOKEN_DIR = "/var/run/lamina/status-token"
TOKEN_DIR = "/var/run/secrets/lamina"
TOKEN_FILE = f"{TOKEN_DIR}/token"
TOKEN_SECONDS = 3600
RBAC_GROUP = "rbac.authorization.k8s.io"
RBAC_API_VERSION = f"{RBAC_GROUP}/v1"


def mapping_document(esm: EventSourceMapping) -> dict[str, Any]:
    """What the worker is told about its mapping (no uid, status or other metadata)."""
    return {
        "apiVersion": esm.api_version,
        "kind": esm.kind,
        "metadata": {"name": esm.name, "namespace": esm.metadata.namespace},
        "spec": esm.spec.to_dict(),
    }


def worker_env(esm: EventSourceMapping, settings: Settings) -> list[dict[str, Any]]:
    spec = esm.spec
    env: list[dict[str, Any]] = [
        {
            "name": "LAMINA_ESM",
            "value": json.dumps(mapping_document(esm), sort_keys=True, separators=(",", ":")),
        },
        {"name": "LAMINA_GATEWAY_URL", "value": settings.gateway_url},
        {"name": "AWS_REGION", "value": settings.region},
    ]
    if settings.redis_url:
        env.append({"name": "LAMINA_REDIS_URL", "value": settings.redis_url})
        secret = mapping_secret(esm, settings)
        if secret is not None:
            name = secret["metadata"]["name"]
            env += [
                {"name": var, "valueFrom": {"secretKeyRef": {"name": name, "key": var}}}
                for var in sorted(secret["stringData"])
            ]
    for name, key, _required in spec.secret_keys():
        ref = {"name": name, "key": key, "optional": True}
        env.append({"name": secret_env_name(name, key), "valueFrom": {"secretKeyRef": ref}})
    if spec.source.kubernetes is not None:
        env.append({"name": "LAMINA_STATUS_TOKEN_DIR", "value": STATUS_TOKEN_DIR})
    env.append({"name": "LAMINA_GATEWAY_TOKEN_FILE", "value": TOKEN_FILE})
    return env


def _identity(esm: EventSourceMapping) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """(pod ServiceAccount, extra volumes, extra mounts). A Kubernetes source's pod runs as the
    ServiceAccount its mapping names, so that it watches with exactly that account's permissions; it
    writes its status with the mapping's own account, whose token Secret is mounted read-only."""
    watched = esm.spec.source.kubernetes
    if watched is None:
        # The one pod lamina gives a token: it may patch its own mapping's status, nothing else.
        return names.mapping_service_account(esm.name), [], []
    volume = {
        "name": "status-token",
        "secret": {"secretName": names.mapping_status_token(esm.name), "defaultMode": 0o440},
    }
    mount = {"name": "status-token", "mountPath": STATUS_TOKEN_DIR, "readOnly": True}
    return watched.service_account_name, [volume], [mount]


def mapping_secret(esm: EventSourceMapping, settings: Settings) -> dict[str, Any] | None:
    """The mapping's own Secret (the Redis ``ticks`` user's credentials), or None when there are
    none to keep; created once under a name derived from its content, like a function's."""
    if not settings.redis_url or not settings.redis_ticks_password:
        return None
    values = {"LAMINA_REDIS_USERNAME": "ticks", "LAMINA_REDIS_PASSWORD": settings.redis_ticks_password}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": metadata(
            names.mapping_secret(esm.name, digest(values)),
            esm,
            labels.mapping_labels(esm.name, esm.spec.function_name.partition(":")[0]),
        ),
        "stringData": values,
    }


def build_mapping(esm: EventSourceMapping, settings: Settings) -> dict[str, Any]:
    """The worker Deployment of ``esm``."""
    ns = esm.metadata.namespace
    fn = esm.function
    env = worker_env(esm, settings)
    chash = digest({"image": settings.worker_image, "env": env})
    account, volumes, mounts = _identity(esm)
    pod = hardened_pod(
        {
            "serviceAccountName": account,
            "automountServiceAccountToken": True,
            "terminationGracePeriodSeconds": 30,
            "containers": [
                {
                    "name": "worker",
                    "image": settings.worker_image,
                    "imagePullPolicy": settings.image_pull_policy,
                    "command": [*WORKER_COMMAND, "--namespace", ns, "--name", esm.name],
                    "env": env,
                    "resources": {
                        "requests": {"cpu": "50m", "memory": "96Mi"},
                        "limits": {"memory": "256Mi"},
                    },
                    "securityContext": container_security_context(),
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                    "volumeMounts": [
                        {"name": "tmp", "mountPath": "/tmp"},
                        {"name": "gateway-token", "mountPath": TOKEN_DIR, "readOnly": True},
                        *mounts,
                    ],
                }
            ],
            "volumes": [
                {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                {
                    # The identity the worker invokes with: a token only the gateway accepts.
                    "name": "gateway-token",
                    "projected": {
                        "sources": [
                            {
                                "serviceAccountToken": {
                                    "audience": settings.token_audience,
                                    "expirationSeconds": TOKEN_SECONDS,
                                    "path": "token",
                                }
                            }
                        ]
                    },
                },
                *volumes,
            ],
        }
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(
            names.mapping_deployment(esm.name),
            esm,
            labels.mapping_labels(esm.name, fn),
            {labels.CONFIG_HASH: chash},
        ),
        "spec": {
            "replicas": 1 if esm.spec.enabled else 0,
            "selector": {"matchLabels": labels.mapping_selector(esm.name)},
            "revisionHistoryLimit": 3,
            # One consumer per mapping: the old worker stops before the new one starts.
            "strategy": {"type": "Recreate"},
            "template": {
                "metadata": {
                    "labels": {**labels.mapping_labels(esm.name, fn), **labels.mapping_selector(esm.name)},
                    "annotations": {labels.CONFIG_HASH: chash},
                },
                "spec": pod,
            },
        },
    }


def invoked_functions(esm: EventSourceMapping) -> list[str]:
    """The functions of its own namespace a mapping's worker invokes: its function, and its onFailure
    function destination (one in another namespace needs a RoleBinding there)."""
    names_ = [esm.spec.function_name.partition(":")[0]]
    on_failure = esm.spec.destination_config.on_failure if esm.spec.destination_config else None
    target = on_failure.function if on_failure is not None else None
    if target is not None and target.namespace in (None, esm.metadata.namespace):
        names_.append(target.name.partition(":")[0])
    return sorted(set(names_))


def build_mapping_identity(esm: EventSourceMapping) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding of ``esm``'s worker, in the order to apply them.

    The Role names the mapping in ``resourceNames``, so one mapping's token cannot touch another's
    status, and it grants no read of the spec: the worker is given the spec in ``LAMINA_ESM``.
    """
    account = names.mapping_service_account(esm.name)
    child_labels = labels.mapping_labels(esm.name, esm.function)
    group = esm.api_version.split("/", 1)[0]
    service_account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(account, esm, child_labels),
    }
    role = {
        "apiVersion": RBAC_API_VERSION,
        "kind": "Role",
        "metadata": metadata(account, esm, child_labels),
        "rules": [
            {
                "apiGroups": [group],
                "resources": ["eventsourcemappings/status"],
                "resourceNames": [esm.name],
                "verbs": ["get", "patch"],
            },
            {
                "apiGroups": [group],
                "resources": ["functions"],
                "resourceNames": invoked_functions(esm),
                "verbs": ["invoke"],
            },
        ],
    }
    binding = {
        "apiVersion": RBAC_API_VERSION,
        "kind": "RoleBinding",
        "metadata": metadata(account, esm, child_labels),
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "Role", "name": account},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": esm.metadata.namespace}],
    }
    objects: list[dict[str, Any]] = [service_account, role, binding]
    if esm.spec.source.kubernetes is not None:
        # The token controller fills it with a token of ``account``; the worker reads it from its mount.
        token_meta = metadata(
            names.mapping_status_token(esm.name),
            esm,
            child_labels,
            {"kubernetes.io/service-account.name": account},
        )
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/service-account-token",
                "metadata": token_meta,
            }
        )
    return objects


@dataclass(frozen=True)
class WorkerState:
    """The mapping's Ready condition and Lambda-style ``state`` derived from its worker Deployment."""

    ready: bool
    reason: str
    message: str
    state: str


def worker_state(deployment: Mapping[str, Any] | None, enabled: bool) -> WorkerState:
    if not enabled:
        return WorkerState(
            True, "Disabled", "the mapping is disabled; its worker is scaled to zero", "Disabled"
        )
    if deployment is None:
        return WorkerState(False, "Creating", "waiting for the worker Deployment", "Creating")
    status = deployment.get("status") or {}
    generation = (deployment.get("metadata") or {}).get("generation") or 0
    if (status.get("observedGeneration") or 0) < generation or (status.get("updatedReplicas") or 0) < 1:
        return WorkerState(False, "Updating", "the worker is being updated", "Updating")
    if (status.get("readyReplicas") or 0) < 1:
        return WorkerState(False, "WorkerNotReady", "the worker is not ready yet", "Creating")
    return WorkerState(True, "WorkerRunning", "the worker is consuming", "Enabled")
