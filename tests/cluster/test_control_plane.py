"""The test control plane behaves like a cluster: controllers, scheduler, kwok node, GC, version."""

from __future__ import annotations

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.cluster.conftest import cp_mod

pytestmark = pytest.mark.cluster

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: probe
  labels: {app: probe}
spec:
  replicas: 2
  selector:
    matchLabels: {app: probe}
  template:
    metadata:
      labels: {app: probe}
    spec:
      containers:
        - name: runtime
          image: lamina/runtime:dev
          ports: [{containerPort: 8080}]
          resources:
            requests: {cpu: 100m, memory: 128Mi}
"""

CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gcprobes.test.lamina.dev
spec:
  group: test.lamina.dev
  scope: Namespaced
  names: {plural: gcprobes, singular: gcprobe, kind: GcProbe, listKind: GcProbeList}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              x-kubernetes-preserve-unknown-fields: true
"""


def test_server_reports_pinned_version(k8s_api, control_plane, pinned_versions):
    if control_plane is None:
        pytest.skip("external cluster from $KUBECONFIG: its version is not ours to pin")
    info = client.VersionApi(k8s_api).get_code()
    pinned = pinned_versions["KUBERNETES_VERSION"]
    assert info.git_version == pinned
    assert (info.major, info.minor) == ("1", pinned.split(".")[1])


def test_fake_node_is_ready_and_schedulable(k8s_api, control_plane):
    if control_plane is None:
        pytest.skip("kwok-node-0 exists only on the local test control plane")
    node = client.CoreV1Api(k8s_api).read_node("kwok-node-0")
    assert node.metadata.labels["type"] == "kwok"
    assert node.metadata.annotations["kwok.x-k8s.io/node"] == "fake"
    assert node.status.allocatable["pods"] == "110"
    ready = {c.type: c.status for c in node.status.conditions}
    assert ready.get("Ready") == "True"
    # With a real node, kwok's node only takes pods that tolerate it (see KWOK_NAMESPACE_ANNOTATIONS).
    taints = [{"key": t.key, "value": t.value, "effect": t.effect} for t in node.spec.taints or []]
    assert taints == ([cp_mod.KWOK_TAINT] if control_plane.real_node else [])
    assert not node.spec.unschedulable


def test_deployment_runs_pods_and_gc_removes_them(k8s_api, namespace, apply_yaml, wait_until, control_plane):
    apps, core = client.AppsV1Api(k8s_api), client.CoreV1Api(k8s_api)
    apply_yaml(DEPLOYMENT, namespace=namespace)
    deploy = apps.read_namespaced_deployment("probe", namespace)

    def replicasets():
        return [
            rs
            for rs in apps.list_namespaced_replica_set(namespace).items
            if any(o.uid == deploy.metadata.uid for o in rs.metadata.owner_references or [])
        ]

    (rs,) = wait_until(replicasets, timeout=60, message="ReplicaSet of Deployment probe")

    def ready_pods():
        pods = [
            p
            for p in core.list_namespaced_pod(namespace, label_selector="app=probe").items
            if any(o.uid == rs.metadata.uid for o in p.metadata.owner_references or [])
        ]
        ok = [
            p
            for p in pods
            if p.status.phase == "Running"
            and p.status.pod_ip
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        ]
        return ok if len(ok) == 2 else None

    pods = wait_until(ready_pods, timeout=90, message="2 Running/Ready pods")
    for pod in pods:
        if control_plane is not None:
            assert pod.spec.node_name == "kwok-node-0"
        assert pod.spec.service_account_name == "default"
        assert pod.status.pod_ip
    wait_until(
        lambda: (apps.read_namespaced_deployment("probe", namespace).status.ready_replicas or 0) == 2,
        timeout=60,
        message="Deployment readyReplicas=2",
    )

    apps.delete_namespaced_deployment("probe", namespace, propagation_policy="Background")
    wait_until(lambda: not replicasets(), timeout=90, message="ReplicaSet garbage-collected")
    wait_until(
        lambda: not core.list_namespaced_pod(namespace, label_selector="app=probe").items,
        timeout=90,
        message="pods garbage-collected and deleted",
    )


def test_configmap_owned_by_custom_object_is_collected(k8s_api, namespace, apply_yaml, wait_until):
    apply_yaml(CRD)
    (owner,) = apply_yaml(
        {"apiVersion": "test.lamina.dev/v1", "kind": "GcProbe", "metadata": {"name": "owner"}, "spec": {}},
        namespace=namespace,
    )
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_config_map(
        namespace,
        {
            "metadata": {
                "name": "owned",
                "ownerReferences": [
                    {
                        "apiVersion": "test.lamina.dev/v1",
                        "kind": "GcProbe",
                        "name": "owner",
                        "uid": owner["metadata"]["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "data": {"k": "v"},
        },
    )
    client.CustomObjectsApi(k8s_api).delete_namespaced_custom_object(
        "test.lamina.dev", "v1", namespace, "gcprobes", "owner", propagation_policy="Background"
    )

    def gone():
        try:
            core.read_namespaced_config_map("owned", namespace)
        except ApiException as e:
            if e.status == 404:
                return True
            raise
        return False

    # The garbage collector learns about new CRDs on its discovery resync (every 30 s).
    wait_until(gone, timeout=120, interval=0.5, message="owned ConfigMap garbage-collected")


def test_each_control_plane_on_the_machine_claims_a_pod_cidr_of_its_own(tmp_path, monkeypatch) -> None:
    """Clusters sharing a pod CIDR give their first pods the same loopback IPs (kwok hands them out in
    order): one cluster's gateway then reaches another cluster's pod. Each state dir claims its own
    /16, keeps it, and gives it back; a claim whose state dir is gone is taken over."""
    monkeypatch.setattr(cp_mod, "POD_CIDR_OCTETS", range(100, 103))  # three to share out
    registry = tmp_path / "registry"
    dirs = [tmp_path / f"cluster-{n}" for n in range(5)]
    for d in dirs:
        d.mkdir()
    cidrs = [cp_mod.claim_pod_cidr(d, registry) for d in dirs[:3]]
    assert sorted(cidrs) == ["127.100.0.0/16", "127.101.0.0/16", "127.102.0.0/16"]
    assert cp_mod.claim_pod_cidr(dirs[1], registry) == cidrs[1]  # the same again
    with pytest.raises(cp_mod.ControlPlaneError, match="every pod CIDR"):
        cp_mod.claim_pod_cidr(dirs[3], registry)
    cp_mod.release_pod_cidr(dirs[0], registry)
    assert cp_mod.claim_pod_cidr(dirs[3], registry) == cidrs[0]  # given back: taken again
    dirs[2].rmdir()  # its cluster is gone without giving it back
    assert cp_mod.claim_pod_cidr(dirs[4], registry) == cidrs[2]
