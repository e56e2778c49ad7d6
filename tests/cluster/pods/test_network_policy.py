"""lamina's NetworkPolicies enforced on the real node (issue 9, item 4).

The node's CNI (bridge + host-local) enforces nothing, so this module runs a NetworkPolicy controller
next to it for its own tests: kube-router's (only ``--run-firewall``), built from its Go module by
scripts/build-kube-router, in the cluster's network namespace, where it programs iptables and ipsets
from the policies the API server holds. It removes its rules when the module ends
(``--cleanup-config``), so the other tests see the node as before.

What is checked, with pods as the neighbours: a pod that is not the gateway cannot connect to a
function's pod (while it can connect to a pod no policy selects, and the gateway still invokes the
function); a function with ``spec.network.egress: []`` cannot open a connection to another pod, and one
whose egress names that pod's address and port can.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.cluster.pods.conftest import (
    REAL_NODE,
    RELEASE,
    SYSTEM_NS,
    Lamina,
    function_yaml,
    unique,
    wait_for,
)

pytestmark = pytest.mark.builds("kube-router")

REPO = Path(__file__).resolve().parents[3]
SERVICE_RANGE = "10.0.0.0/24"  # the test cluster's Services (docs/test-cluster.md)

#: Prints "open" or "blocked": a TCP connection to host:port within 3 seconds.
PROBE = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
    print("open")
except OSError as e:
    print("blocked", type(e).__name__)
"""

#: A function that reports whether it can connect out to event["host"]:event["port"].
CONNECTS = """
import socket
def handler(event, context):
    try:
        socket.create_connection((event["host"], event["port"]), timeout=3).close()
        return "open"
    except OSError as e:
        return "blocked " + type(e).__name__
"""


def in_netns(node_cluster: Any) -> list[str]:
    realnode = sys.modules["lamina_test_controlplane"].realnode
    return list(realnode.RealNode(node_cluster.state_dir).nsenter())


def kube_router_binary() -> str:
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-kube-router")],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        pytest.fail(f"scripts/build-kube-router failed:\n{done.stderr[-3000:]}", pytrace=False)
    return lines[-1]


@pytest.fixture(scope="module")
def enforced(
    node_cluster: Any, lamina_release: Lamina, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """kube-router's NetworkPolicy controller running on the real node for this module."""
    binary = kube_router_binary()
    netns = in_netns(node_cluster)
    log = tmp_path_factory.mktemp("kube-router") / "kube-router.log"
    args = [
        f"--kubeconfig={node_cluster.kubeconfig}",
        f"--hostname-override={REAL_NODE}",
        "--run-firewall=true",
        "--run-router=false",
        "--run-service-proxy=false",
        "--enable-cni=false",
        f"--service-cluster-ip-range={SERVICE_RANGE}",
        "--health-port=0",
        "--metrics-port=0",
        "--iptables-sync-period=30s",
        "-v=1",
    ]
    with log.open("w") as out:
        proc = subprocess.Popen([*netns, binary, *args], stdout=out, stderr=subprocess.STDOUT)

    def programmed() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"kube-router exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        rules = subprocess.run([*netns, "iptables-save"], capture_output=True, text=True, check=False).stdout
        return "KUBE-NWPLCY-" in rules and "KUBE-POD-FW-" in rules

    try:
        wait_for(programmed, 120, "kube-router's policy chains in the node's iptables", interval=1)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        subprocess.run(
            [*netns, binary, "--cleanup-config", f"--kubeconfig={node_cluster.kubeconfig}"],
            capture_output=True,
            timeout=120,
            check=False,
        )
        if os.environ.get("LAMINA_KEEP_KUBE_ROUTER_LOG"):
            print(log.read_text())


def probe_from_pod(lamina: Lamina, host: str, port: int) -> str:
    """Run :data:`PROBE` in a throwaway pod of the functions' namespace (the gateway's image, which has
    Python; labels no policy admits) and return what it printed."""
    image = next(
        p.spec.containers[0].image
        for p in lamina.core.list_namespaced_pod(
            SYSTEM_NS,
            label_selector=f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=gateway",
        ).items
    )
    name = f"probe-{uuid.uuid4().hex[:6]}"
    lamina.core.create_namespaced_pod(
        lamina.namespace,
        {
            "metadata": {"name": name, "labels": {"app": "neighbour"}},
            "spec": {
                "restartPolicy": "Never",
                "nodeName": REAL_NODE,
                "automountServiceAccountToken": False,
                "containers": [
                    {
                        "name": "probe",
                        "image": image,
                        "imagePullPolicy": "Never",
                        "command": ["python", "-c", PROBE, host, str(port)],
                    }
                ],
            },
        },
    )
    try:

        def finished() -> str | None:
            pod = lamina.core.read_namespaced_pod(name, lamina.namespace)
            if pod.status.phase in ("Succeeded", "Failed"):
                return str(lamina.core.read_namespaced_pod_log(name, lamina.namespace)).strip()
            return None

        return str(wait_for(finished, 120, f"probe pod {name}", interval=0.5))
    finally:
        with contextlib.suppress(ApiException):
            lamina.core.delete_namespaced_pod(name, lamina.namespace, grace_period_seconds=0)


def running_pod(lamina: Lamina, function: str) -> client.V1Pod:
    return wait_for(
        lambda: next(
            (p for p in lamina.pods(function) if p.status.phase == "Running" and p.status.pod_ip), None
        ),
        120,
        f"a running pod of {function}",
    )


def policed(node_cluster: Any, *pods: client.V1Pod) -> None:
    """Wait until kube-router has put each pod behind its firewall chain (it does so on the pod's
    event, a moment after the pod runs): a rule that sends the pod's traffic to a KUBE-POD-FW chain."""
    netns = in_netns(node_cluster)

    def programmed() -> bool:
        rules = subprocess.run([*netns, "iptables-save"], capture_output=True, text=True, check=False).stdout
        lines = [line for line in rules.splitlines() if "KUBE-POD-FW-" in line]
        return all(any(f"{p.status.pod_ip}/32" in line for line in lines) for p in pods)

    wait_for(programmed, 60, "kube-router's firewall chains for the function pods", interval=0.5)


def gateway_pod_ip(lamina: Lamina) -> str:
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=gateway"
    return str(lamina.core.list_namespaced_pod(SYSTEM_NS, label_selector=selector).items[0].status.pod_ip)


def test_only_the_gateway_reaches_a_function_pod(lamina: Lamina, node_cluster: Any, enforced: None) -> None:
    name = unique("fenced")
    lamina.apply(
        function_yaml(name, "def handler(event, context):\n    return 'ok'\n", provisionedConcurrency=1)
    )
    lamina.wait_ready(name)
    pod = running_pod(lamina, name)
    policed(node_cluster, pod)
    assert probe_from_pod(lamina, gateway_pod_ip(lamina), 8080) == "open"  # no policy selects the gateway
    assert probe_from_pod(lamina, pod.status.pod_ip, 8080).startswith("blocked")
    r, body = lamina.invoke(name, {})  # the gateway is the one peer the policy admits
    assert "FunctionError" not in r and body == "ok"


def test_egress_follows_spec_network(lamina: Lamina, node_cluster: Any, enforced: None) -> None:
    """The destination is the gateway's pod (no policy selects it): ``egress: []`` leaves a function
    only DNS; an egress rule naming the pod's address and port opens exactly that."""
    host, port = gateway_pod_ip(lamina), 8080
    closed, opened = unique("closed"), unique("opened")
    lamina.apply(function_yaml(closed, CONNECTS, provisionedConcurrency=1, network={"egress": []}))
    allowed = {"egress": [{"to": [{"cidr": f"{host}/32"}], "ports": [{"port": port}]}]}
    lamina.apply(function_yaml(opened, CONNECTS, provisionedConcurrency=1, network=allowed))
    lamina.wait_ready(closed)
    lamina.wait_ready(opened)
    policed(node_cluster, running_pod(lamina, closed), running_pod(lamina, opened))
    event = {"host": host, "port": port}
    assert lamina.invoke(opened, event)[1] == "open"
    assert lamina.invoke(closed, event)[1].startswith("blocked")
