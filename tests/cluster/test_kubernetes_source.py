"""Kubernetes object changes as a mapping source, on the test control plane: the source itself (event
shape, selectors, resuming), the operator's permission check, and the worker process the
operator's Deployment describes (watching as the mapping's ServiceAccount, writing its status and its
resourceVersion with its own account's token)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from kubernetes import client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_operator_reconcile import GROUP, VERSION, Cluster, Operator, container, function

from lamina.eventsources.config import MappingConfig
from lamina.eventsources.kubernetes import GAP_DETAIL_TYPE, KubernetesSource, MemoryCheckpoint, Watched
from lamina.eventsources.mapping import MappingWorker
from lamina.eventsources.timing import Backoff, Timing
from lamina.kubeapi import api_client
from lamina_runtime.protocol import InvocationResult
from tests.cluster.tokens import token_kubeconfig
from tests.support.local_mode import REPO, LocalServer

FAST = Timing(
    poll_wait=0.2, function_error=Backoff(0.05, 0.5), throttle=Backoff(0.05, 0.5), broker=Backoff(0.2, 1)
)


class Recorder:
    """The function: keeps every EventBridge event of every batch."""

    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []

    @property
    def events(self) -> list[dict[str, Any]]:
        return [e for b in self.batches for e in b]

    def changes(self) -> list[tuple[str, str]]:
        return [
            (e["detail"]["type"], e["detail"]["name"])
            for e in self.events
            if e["detail-type"] != GAP_DETAIL_TYPE
        ]

    async def __call__(self, function_name: str, payload: bytes) -> InvocationResult:
        self.batches.append(json.loads(payload)["Records"])
        return InvocationResult("r", b"null")


def worker(
    kubeconfig: str,
    namespace: str,
    function: Recorder,
    checkpoint: MemoryCheckpoint,
    *,
    kind: str = "ConfigMap",
    api_version: str = "v1",
    selector: str | None = None,
    types: tuple[str, ...] = ("ADDED", "MODIFIED", "DELETED"),
    starting_position: str = "LATEST",
) -> MappingWorker:
    watched = Watched(api_version, kind, namespace, selector, frozenset(types), "default")
    source = KubernetesSource(
        watched,
        api_client=lambda: api_client(kubeconfig),
        checkpoint=checkpoint,
        starting_position=starting_position,
        save_interval=0.1,
    )
    config = MappingConfig(name="watch", function_name="fn", batch_size=10, maximum_batching_window_seconds=1)
    return MappingWorker(config, source, function, timing=FAST)


async def until(predicate: Callable[[], Any], limit: float = 60, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def config_map(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}, "data": {"v": "1"}}


async def test_changes_arrive_as_eventbridge_events_in_batches(kubeconfig, namespace, k8s_api):
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_config_map(namespace, config_map("before", app="shop"))
    core.create_namespaced_config_map(namespace, config_map("unlabelled"))
    function, checkpoint = Recorder(), MemoryCheckpoint()
    w = worker(
        kubeconfig,
        namespace,
        function,
        checkpoint,
        selector="app=shop",
        types=("ADDED", "DELETED"),
        starting_position="TRIM_HORIZON",
    )
    w.start()
    try:
        await until(lambda: ("ADDED", "before") in function.changes(), what="the existing object as ADDED")
        core.create_namespaced_config_map(namespace, config_map("web", app="shop"))
        core.patch_namespaced_config_map("web", namespace, {"data": {"v": "2"}})  # MODIFIED: not wanted
        core.create_namespaced_config_map(namespace, config_map("other", app="blog"))  # not selected
        core.delete_namespaced_config_map("web", namespace)
        await until(lambda: ("DELETED", "web") in function.changes(), what="the deletion")
    finally:
        await w.stop()
    assert function.changes() == [("ADDED", "before"), ("ADDED", "web"), ("DELETED", "web")]
    event = next(e for e in function.events if e["detail"]["name"] == "web")
    assert event["source"] == "lamina.kubernetes"
    assert event["detail-type"] == "Kubernetes Object Change"
    assert event["version"] == "0" and event["id"] and event["time"].endswith("Z")
    assert event["resources"] == [f"v1/namespaces/{namespace}/configmaps/web"]
    detail = event["detail"]
    assert (detail["apiVersion"], detail["kind"], detail["namespace"]) == ("v1", "ConfigMap", namespace)
    assert detail["object"]["metadata"]["name"] == "web"
    assert detail["object"]["metadata"]["labels"] == {"app": "shop"}
    assert detail["resourceVersion"] == detail["object"]["metadata"]["resourceVersion"]
    assert checkpoint.value is not None


async def test_a_restarted_worker_resumes_from_the_kept_resource_version(kubeconfig, namespace, k8s_api):
    core = client.CoreV1Api(k8s_api)
    checkpoint = MemoryCheckpoint()
    first = Recorder()
    w = worker(kubeconfig, namespace, first, checkpoint, starting_position="TRIM_HORIZON")
    w.start()
    try:
        core.create_namespaced_config_map(namespace, config_map("one"))
        await until(lambda: ("ADDED", "one") in first.changes(), what="the first change")
        await until(lambda: checkpoint.value is not None, what="a checkpoint")
    finally:
        await w.stop()
    kept = checkpoint.value
    # While no worker runs:
    core.create_namespaced_config_map(namespace, config_map("two"))
    core.delete_namespaced_config_map("one", namespace)
    second = Recorder()
    w = worker(kubeconfig, namespace, second, checkpoint, starting_position="TRIM_HORIZON")
    w.start()
    try:
        await until(lambda: ("DELETED", "one") in second.changes(), what="the missed changes")
        await asyncio.sleep(1.0)
    finally:
        await w.stop()
    assert second.changes() == [("ADDED", "two"), ("DELETED", "one")], "resumed without replaying"
    assert checkpoint.value != kept


class Relay:
    """A TCP relay in front of the API server: stopping it refuses new connections and cuts the open
    ones, as an API server that goes away does; starting it again serves on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


async def test_an_api_server_down_at_start_and_gone_mid_stream_is_reported_and_nothing_is_lost(
    kubeconfig, namespace, k8s_api, tmp_path
):
    """The API server is the Kubernetes source's broker: unreachable at start, the mapping says so in
    its status; cut off while watching, it says so again and, once back, resumes the watch from its
    resourceVersion: the changes made meanwhile arrive once each, with no gap and no replay."""
    doc = yaml.safe_load(await asyncio.to_thread(Path(kubeconfig).read_text))
    server = urlsplit(doc["clusters"][0]["cluster"]["server"])
    relay = Relay((server.hostname, server.port))
    await relay.start()
    await relay.stop()  # down at start; the port stays the relay's
    doc["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{relay.port}"
    relayed = tmp_path / "relayed.kubeconfig"
    await asyncio.to_thread(relayed.write_text, yaml.safe_dump(doc))
    core = client.CoreV1Api(k8s_api)
    function, checkpoint = Recorder(), MemoryCheckpoint()
    w = worker(
        str(relayed), namespace, function, checkpoint, selector="app=relay", starting_position="TRIM_HORIZON"
    )
    unavailable = "PROBLEM: kubernetes source unavailable"
    w.start()
    try:
        await until(lambda: w.status.last_processing_result == unavailable, what="down at start reported")
        core.create_namespaced_config_map(namespace, config_map("one", app="relay"))
        await relay.start()
        await until(lambda: ("ADDED", "one") in function.changes(), what="the change once it is up")
        errors = w.status.broker_errors
        await relay.stop()  # mid-stream: the watch is cut
        core.create_namespaced_config_map(namespace, config_map("two", app="relay"))
        core.delete_namespaced_config_map("one", namespace)
        await until(lambda: w.status.broker_errors > errors, what="the lost API server reported")
        assert w.status.last_processing_result == unavailable
        await relay.start()
        await until(
            lambda: ("DELETED", "one") in function.changes(), what="the changes made while it was away"
        )
        await until(lambda: w.status.last_processing_result == "OK", what="OK again")
    finally:
        await w.stop()
        await relay.stop()
    assert function.changes() == [("ADDED", "one"), ("ADDED", "two"), ("DELETED", "one")]
    assert not [e for e in function.events if e["detail-type"] == GAP_DETAIL_TYPE], "resumed, not relisted"


def gadget_crd(group: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"gadgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                    },
                }
            ],
        },
    }


async def test_a_position_the_api_server_no_longer_keeps_is_relisted_with_a_gap_event(
    kubeconfig, namespace, k8s_api
):
    """A real 410 Gone: changing a CRD makes the API server rebuild that type's watch cache, which
    then refuses every older resourceVersion ("too old resource version"). A running worker's watch
    ends and cannot resume; a restarted worker's kept position is too old. Either way the worker
    lists again, sends a Kubernetes Watch Gap event naming the lost position and what exists now,
    then the differences it can tell (resync=true), and watches on."""
    group = f"{namespace}.lamina.test"
    ext = client.ApiextensionsV1Api(k8s_api)
    objects = client.CustomObjectsApi(k8s_api)
    ext.create_custom_resource_definition(gadget_crd(group))

    def established() -> bool:
        crd = ext.read_custom_resource_definition(f"gadgets.{group}")
        return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

    def create(name: str) -> None:
        body = {"apiVersion": f"{group}/v1", "kind": "Gadget", "metadata": {"name": name}}
        objects.create_namespaced_custom_object(group, "v1", namespace, "gadgets", body)

    def rebuild_the_watch_cache(column: str) -> None:
        patch = [
            {
                "op": "add",
                "path": "/spec/versions/0/additionalPrinterColumns",
                "value": [{"name": column, "type": "date", "jsonPath": ".metadata.creationTimestamp"}],
            }
        ]
        ext.patch_custom_resource_definition(f"gadgets.{group}", patch)

    def gaps(function: Recorder) -> list[dict[str, Any]]:
        return [e["detail"] for e in function.events if e["detail-type"] == GAP_DETAIL_TYPE]

    def resynced(function: Recorder) -> list[tuple[str, str]]:
        return [
            (e["detail"]["type"], e["detail"]["name"])
            for e in function.events
            if e["detail-type"] != GAP_DETAIL_TYPE and e["detail"].get("resync")
        ]

    try:
        await until(established, what="the CRD established")
        checkpoint = MemoryCheckpoint()
        first = Recorder()
        kind = {"kind": "Gadget", "api_version": f"{group}/v1"}
        w = worker(kubeconfig, namespace, first, checkpoint, starting_position="TRIM_HORIZON", **kind)
        w.start()
        try:
            create("a")
            await until(lambda: ("ADDED", "a") in first.changes(), what="the first change")
            await until(lambda: checkpoint.value is not None, what="a checkpoint")
            seen = checkpoint.value
            rebuild_the_watch_cache("Made")  # the running worker's watch ends and cannot resume
            await until(lambda: gaps(first), what="the running worker's gap event")
            create("b")
            await until(lambda: ("ADDED", "b") in first.changes(), what="a change after the gap")
        finally:
            await w.stop()
        gap = gaps(first)[0]
        assert gap["reason"] == "ResourceVersionTooOld" and gap["workerKnewObjects"] is True
        assert int(gap["lastResourceVersion"]) >= int(seen) and int(gap["resourceVersion"]) > int(seen)
        assert [o["name"] for o in gap["objects"]] == ["a"]
        assert resynced(first) == [], "nothing changed during the gap: nothing is reported twice"
        assert first.changes() == [("ADDED", "a"), ("ADDED", "b")]

        kept = checkpoint.value
        assert kept is not None
        # While no worker runs: changes, then the position is lost.
        objects.delete_namespaced_custom_object(group, "v1", namespace, "gadgets", "a")
        create("c")
        rebuild_the_watch_cache("Born")
        await until(established, what="the CRD established again")
        second = Recorder()
        w = worker(kubeconfig, namespace, second, checkpoint, starting_position="TRIM_HORIZON", **kind)
        w.start()
        try:
            await until(lambda: gaps(second), what="the restarted worker's gap event")
            create("d")
            await until(lambda: ("ADDED", "d") in second.changes(), what="a change after the gap")
        finally:
            await w.stop()
        gap = gaps(second)[0]
        assert gap["lastResourceVersion"] == kept and gap["workerKnewObjects"] is False
        assert sorted(o["name"] for o in gap["objects"]) == ["b", "c"]
        # A restarted worker does not know what it had seen: what exists comes as resynced ADDED
        # (TRIM_HORIZON), the deletion of "a" during the gap is only visible in the gap's list.
        assert sorted(resynced(second)) == [("ADDED", "b"), ("ADDED", "c")]
        assert second.changes()[-1] == ("ADDED", "d")
        assert second.events[0]["detail-type"] == GAP_DETAIL_TYPE
    finally:
        ext.delete_custom_resource_definition(f"gadgets.{group}")


WATCHER_ROLE = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "Role",
    "metadata": {"name": "configmap-watcher"},
    "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}],
}


def watching_mapping(name: str, account: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "EventSourceMapping",
        "metadata": {"name": name},
        "spec": {
            "functionName": "consumer",
            "batchSize": 10,
            "maximumBatchingWindowSeconds": 1,
            "startingPosition": "LATEST",
            "source": {
                "kubernetes": {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "labelSelector": "app=shop",
                    "serviceAccountName": account,
                }
            },
        },
    }


CONSUMER = """
apiVersion: lamina.dev/v1alpha1
kind: Function
metadata: {name: consumer, namespace: NAMESPACE}
spec:
  handler: index.handler
  code:
    inline: |
      import json
      def handler(event, context):
          with open("OUT", "a") as out:
              for e in event["Records"]:
                  d = e["detail"]
                  out.write(json.dumps([e["detail-type"], d.get("type"), d.get("name")]) + "\\n")
          return None
"""


def status_kubeconfig(core: client.CoreV1Api, kubeconfig: str, namespace: str, secret: str) -> str:
    """A kubeconfig with the token the token controller put in the mapping's status-token Secret."""
    data = core.read_namespaced_secret(secret, namespace).data or {}
    token = base64.b64decode(data["token"]).decode()
    admin = yaml.safe_load(Path(kubeconfig).read_text())
    cluster = admin["clusters"][0]["cluster"]
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "status", "user": {"token": token}}],
        "contexts": [{"name": "s", "context": {"cluster": "c", "user": "status", "namespace": namespace}}],
        "current-context": "s",
    }
    path = Path(kubeconfig).with_name(f"status-{namespace}.kubeconfig")
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_operator_checks_the_accounts_permissions_and_the_worker_watches_as_it(
    namespace: str,
    kubeconfig: str,
    k8s_api: client.ApiClient,
    apply_yaml: Callable[..., list[dict]],
    wait_until: Callable[..., Any],
    tmp_path: Path,
) -> None:
    apply_yaml(sorted((REPO / "crds").glob("*.yaml")))
    cluster = Cluster(k8s_api, namespace)
    core = client.CoreV1Api(k8s_api)
    rbac = client.RbacAuthorizationV1Api(k8s_api)
    out = tmp_path / "events.jsonl"
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "consumer.yaml").write_text(
        CONSUMER.replace("NAMESPACE", namespace).replace("OUT", str(out))
    )
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "watcher"}})
    op = Operator(kubeconfig, namespace).start()
    gateway: LocalServer | None = None
    workers: list[subprocess.Popen[bytes]] = []
    configs: list[str] = []
    try:
        cluster.create("functions", function("consumer"))
        cluster.create("eventsourcemappings", watching_mapping("shop", "watcher"))

        # No permission at all: blocked, naming what is missing; nothing runs.
        ready = cluster.wait_reason(wait_until, "eventsourcemappings", "shop", "ServiceAccountCannotWatch")
        assert ready["status"] == "False"
        assert "ServiceAccount watcher may not list and watch configmaps in namespace" in ready["message"]
        assert "(missing permission: list, watch)" in ready["message"]
        assert cluster.deployment("esm-shop") is None

        # list alone is not enough.
        rbac.create_namespaced_role(namespace, WATCHER_ROLE)
        binding = {
            "metadata": {"name": "configmap-watcher"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-watcher"},
            "subjects": [{"kind": "ServiceAccount", "name": "watcher", "namespace": namespace}],
        }
        rbac.create_namespaced_role_binding(namespace, binding)

        def names_watch() -> bool:
            conds = (cluster.get("eventsourcemappings", "shop").get("status") or {}).get("conditions") or []
            return any("(missing permission: watch)" in c.get("message", "") for c in conds)

        wait_until(names_watch, timeout=60, message="Ready names the missing watch")

        rbac.patch_namespaced_role(
            "configmap-watcher",
            namespace,
            {"rules": [{**WATCHER_ROLE["rules"][0], "verbs": ["list", "watch"]}]},
        )
        wait_until(lambda: cluster.deployment("esm-shop"), timeout=60, message="the worker Deployment")
        deployment = cluster.deployment("esm-shop")
        assert deployment is not None
        pod = deployment["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == "watcher"  # it watches with the named account...
        # ... and was granted nothing: the operator's RoleBindings name only the worker's own account.
        for b in rbac.list_namespaced_role_binding(namespace).items:
            if b.metadata.name.startswith("esm-"):
                assert [s.name for s in b.subjects] == ["esm-shop"]
        token_secret = wait_until(
            lambda: (core.read_namespaced_secret("esm-shop-status-token", namespace).data or {}).get("token"),
            timeout=60,
            message="the status token filled in",
        )
        assert token_secret

        # The worker as the Deployment runs it: the pod's credentials are the watcher's token; status
        # writes use the mapping's own account's token (the Secret the pod mounts).
        gateway = LocalServer([tmp_path / "m"], tmp_path / "state").start()
        watcher_config = token_kubeconfig(k8s_api, kubeconfig, namespace, "watcher")
        status_config = status_kubeconfig(core, kubeconfig, namespace, "esm-shop-status-token")
        configs += [watcher_config, status_config]
        env = {
            **os.environ,
            **{e["name"]: e["value"] for e in container(deployment)["env"] if "value" in e},
            "LAMINA_GATEWAY_URL": gateway.url,
            "KUBECONFIG": watcher_config,
            "LAMINA_STATUS_KUBECONFIG": status_config,
            "LAMINA_STATUS_INTERVAL": "0.5",
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("LAMINA_STATUS_TOKEN_DIR", None)  # (a pod's mount; the kubeconfig above stands in)

        def start_worker(log: Path) -> subprocess.Popen[bytes]:
            proc = subprocess.Popen(
                [sys.executable, "-m", "lamina.cli", *container(deployment)["command"][1:]],
                env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=REPO,
            )  # fmt: skip
            workers.append(proc)
            return proc

        def lines() -> list[list[Any]]:
            return [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []

        def status() -> dict[str, Any]:
            return cluster.get("eventsourcemappings", "shop").get("status") or {}

        first = start_worker(tmp_path / "worker-1.log")
        # The worker keeps its first position once it has listed (LATEST: changes from then on);
        # "Enabled" alone may be the operator's word for a Ready pod.
        wait_until(
            lambda: status().get("watchResourceVersion"), timeout=60, message="the worker's first position"
        )
        core.create_namespaced_config_map(namespace, config_map("web", app="shop"))
        core.create_namespaced_config_map(namespace, config_map("ignored", app="blog"))
        wait_until(
            lambda: ["Kubernetes Object Change", "ADDED", "web"] in lines(), timeout=60, message="ADDED web"
        )
        kept = wait_until(
            lambda: status().get("watchResourceVersion"), timeout=30, message="the position kept"
        )
        first.terminate()
        first.wait(30)

        # Changes while no worker runs are delivered by the next one, and nothing before them again.
        core.delete_namespaced_config_map("web", namespace)
        second = start_worker(tmp_path / "worker-2.log")
        wait_until(
            lambda: ["Kubernetes Object Change", "DELETED", "web"] in lines(), timeout=60, message="DELETED"
        )
        assert lines().count(["Kubernetes Object Change", "ADDED", "web"]) == 1, lines()
        assert not [x for x in lines() if x[2] == "ignored"]
        wait_until(lambda: status().get("watchResourceVersion") != kept, timeout=30, message="position moved")
        wait_until(lambda: status().get("lastProcessingResult") == "OK", timeout=30, message="OK reported")
        second.terminate()
        second.wait(30)
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for log in sorted(tmp_path.glob("worker-*.log")):
            sys.stderr.write(f"\n--- {log.name} ---\n{log.read_text()}\n")
        if gateway is not None:
            gateway.stop()
            sys.stderr.write(f"\n--- gateway log ---\n{gateway.output()[-4000:]}\n")
        op.stop()
        sys.stderr.write(f"\n--- operator log ---\n{op.tail()}\n")
        op.log.unlink(missing_ok=True)
        for path in configs:
            Path(path).unlink(missing_ok=True)


LOCAL_WATCH = """
apiVersion: lamina.dev/v1alpha1
kind: Function
metadata: {name: consumer}
spec:
  handler: index.handler
  code:
    inline: |
      import json
      def handler(event, context):
          with open("OUT", "a") as out:
              for e in event["Records"]:
                  d = e["detail"]
                  out.write(json.dumps([d.get("type"), d.get("name"), d.get("namespace")]) + "\\n")
---
apiVersion: lamina.dev/v1alpha1
kind: EventSourceMapping
metadata: {name: watch}
spec:
  functionName: consumer
  startingPosition: LATEST
  source:
    kubernetes:
      apiVersion: v1
      kind: ConfigMap
      namespace: NAMESPACE
      labelSelector: app=shop
      serviceAccountName: default
"""


def test_local_mode_watches_the_cluster_kubeconfig_names_and_resumes_after_a_restart(
    kubeconfig: str, namespace: str, k8s_api: client.ApiClient, wait_until: Callable[..., Any], tmp_path: Path
) -> None:
    core = client.CoreV1Api(k8s_api)
    out = tmp_path / "events.jsonl"
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "watch.yaml").write_text(
        LOCAL_WATCH.replace("NAMESPACE", namespace).replace("OUT", str(out))
    )
    state = tmp_path / "state"
    position = state / "mappings" / "default" / "watch.resource-version"

    def lines() -> list[list[Any]]:
        return [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []

    server = LocalServer([tmp_path / "m"], state, env={"KUBECONFIG": kubeconfig}).start()
    try:
        wait_until(position.exists, timeout=60, message="the first position kept in the state directory")
        core.create_namespaced_config_map(namespace, config_map("web", app="shop"))
        wait_until(lambda: ["ADDED", "web", namespace] in lines(), timeout=60, message="ADDED web")
    finally:
        server.stop()
    core.delete_namespaced_config_map("web", namespace)  # while lamina local is down
    server = LocalServer([tmp_path / "m"], state, env={"KUBECONFIG": kubeconfig}).start()
    try:
        wait_until(
            lambda: ["DELETED", "web", namespace] in lines(), timeout=60, message="the missed deletion"
        )
        assert lines().count(["ADDED", "web", namespace]) == 1, "resumed, not replayed"
    finally:
        server.stop()
