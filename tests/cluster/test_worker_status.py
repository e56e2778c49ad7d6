"""An EventSourceMapping's worker writes its state into the mapping's status, against a real API
server, with the token of the ServiceAccount the operator made for it (and nothing more).

The worker runs as a local process with the environment its Deployment's container has (kwok only
pretends to run the pod), invoking through `lamina local` as the gateway, consuming a real Redis.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_operator_reconcile import GROUP, VERSION, Cluster, Operator, container, function

from tests.cluster.tokens import token_kubeconfig
from tests.support.local_mode import REPO, LocalServer

CONSUMER = """
apiVersion: lamina.dev/v1alpha1
kind: Function
metadata: {name: consumer, namespace: NAMESPACE}
spec:
  handler: index.handler
  code:
    inline: |
      def handler(event, context):
          return "ok"
"""


def mapping(name: str, source: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "EventSourceMapping",
        "metadata": {"name": name},
        "spec": {"functionName": "consumer", "startingPosition": "TRIM_HORIZON", "source": source},
    }


def container_env(deployment: dict[str, Any], core: client.CoreV1Api, namespace: str) -> dict[str, str]:
    """The worker container's environment as the kubelet would resolve it (values and secretKeyRefs)."""
    env: dict[str, str] = {}
    for item in container(deployment).get("env") or []:
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        secret = core.read_namespaced_secret(ref["name"], namespace)
        env[item["name"]] = base64.b64decode(secret.data[ref["key"]]).decode()
    return env


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_worker_reports_its_state_with_a_token_for_its_own_mapping_only(
    private_redis: Any,
    namespace: str,
    kubeconfig: str,
    k8s_api: client.ApiClient,
    apply_yaml: Callable[..., list[dict]],
    wait_until: Callable[..., Any],
    tmp_path: Path,
) -> None:
    assert private_redis.url.startswith("redis://127.0.0.1:"), private_redis.url
    apply_yaml(sorted((REPO / "crds").glob("*.yaml")))
    cluster = Cluster(k8s_api, namespace)
    core = client.CoreV1Api(k8s_api)
    rbac = client.RbacAuthorizationV1Api(k8s_api)

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "consumer.yaml").write_text(CONSUMER.replace("NAMESPACE", namespace))
    gateway: LocalServer | None = None
    worker: subprocess.Popen[bytes] | None = None
    sa_config: str | None = None
    op = Operator(kubeconfig, namespace).start()
    try:
        gateway = LocalServer([tmp_path / "m"], tmp_path / "state").start()
        assert gateway.url.startswith("http://127.0.0.1:")
        cluster.create("functions", function("consumer"))
        orders = cluster.create(
            "eventsourcemappings",
            mapping("orders", {"redis": {"url": private_redis.url, "stream": "orders"}}),
        )
        cluster.create(
            "eventsourcemappings",
            mapping("other", {"schedule": {"expression": "rate(1 hour)"}}),
        )
        cluster.wait_ready(wait_until, "eventsourcemappings", "orders", timeout=90)

        # The operator made the worker's identity, owned by the mapping, and the pod uses it.
        account = core.read_namespaced_service_account("esm-orders", namespace)
        role = rbac.read_namespaced_role("esm-orders", namespace)
        binding = rbac.read_namespaced_role_binding("esm-orders", namespace)
        for obj in (account, role, binding):
            [owner] = obj.metadata.owner_references
            assert (owner.kind, owner.uid, owner.controller) == (
                "EventSourceMapping",
                orders["metadata"]["uid"],
                True,
            )
        # Its own status, and invoking its own function (the gateway checks that with RBAC).
        assert [(r.resources, r.resource_names, r.verbs) for r in role.rules] == [
            (["eventsourcemappings/status"], ["orders"], ["get", "patch"]),
            (["functions"], ["consumer"], ["invoke"]),
        ]
        assert binding.subjects[0].name == "esm-orders"
        deployment = cluster.deployment("esm-orders")
        assert deployment is not None
        pod = deployment["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == "esm-orders"
        assert pod["automountServiceAccountToken"] is True

        sa_config = token_kubeconfig(k8s_api, kubeconfig, namespace, "esm-orders")
        env = {
            **os.environ,
            **container_env(deployment, core, namespace),
            "LAMINA_GATEWAY_URL": gateway.url,
            "KUBECONFIG": sa_config,
            "LAMINA_STATUS_INTERVAL": "0.5",
            "PYTHONUNBUFFERED": "1",
        }
        log = tmp_path / "worker.log"
        worker = subprocess.Popen(
            [sys.executable, "-m", "lamina.cli", *container(deployment)["command"][1:]],
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        records = redis.Redis.from_url(private_redis.url)
        for i in range(3):
            records.xadd("orders", {"body": f"order-{i}"})

        def reported() -> dict[str, Any] | None:
            assert worker is not None and worker.poll() is None, log.read_text()
            status = cluster.get("eventsourcemappings", "orders").get("status") or {}
            return status if status.get("lastProcessingResult") == "OK" else None

        status = wait_until(reported, timeout=60, message="the worker's lastProcessingResult OK")
        assert status["state"] == "Enabled"
        assert status["iteratorAgeMs"] >= 0
        assert status["source"]  # the operator's keys are untouched
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True", status
        assert status["observedGeneration"] == orders["metadata"]["generation"]
        managers = cluster.get("eventsourcemappings", "orders")["metadata"]["managedFields"]
        [mine] = [m for m in managers if m["manager"] == "lamina-worker"]
        assert mine["subresource"] == "status"
        assert set(mine["fieldsV1"]["f:status"]) <= {"f:state", "f:lastProcessingResult", "f:iteratorAgeMs"}

        # Least privilege is real: that token may not touch another mapping, nor its own spec.
        objects = client.CustomObjectsApi(config.new_client_from_config(config_file=sa_config))
        for attempt in (
            lambda: objects.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, "eventsourcemappings", "other", {"status": {"state": "Enabled"}}
            ),
            lambda: objects.get_namespaced_custom_object_status(
                GROUP, VERSION, namespace, "eventsourcemappings", "other"
            ),
            lambda: objects.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, "eventsourcemappings", "orders", {"spec": {"batchSize": 1}}
            ),
            lambda: core_as(sa_config).list_namespaced_secret(namespace),
        ):
            with pytest.raises(ApiException) as denied:
                attempt()
            assert denied.value.status == 403
        # ... while its own status is its to read.
        own = objects.get_namespaced_custom_object_status(
            GROUP, VERSION, namespace, "eventsourcemappings", "orders"
        )
        assert own["status"]["lastProcessingResult"] == "OK"
        assert "Forbidden" not in log.read_text(), log.read_text()
    finally:
        if worker is not None:
            stop(worker)
            sys.stderr.write(f"\n--- worker log ---\n{(tmp_path / 'worker.log').read_text()}\n")
        if gateway is not None:
            gateway.stop()
        op.stop()
        sys.stderr.write(f"\n--- operator log ---\n{op.tail()}\n")
        op.log.unlink(missing_ok=True)
        if sa_config is not None:
            Path(sa_config).unlink(missing_ok=True)


def core_as(kubeconfig: str) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
