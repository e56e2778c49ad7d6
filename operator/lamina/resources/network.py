"""Function -> its NetworkPolicy: ingress only from the gateway, egress as ``spec.network`` says.

Ingress to a function's environments is only ever the gateway's (event-source workers and the async
dispatcher invoke through the gateway too), on the runtime server's port. Egress: without
``spec.network``, the installation's default (``allow``: no egress rule at all, like a Lambda outside
a VPC; ``deny``: nothing but DNS); with it, exactly its rules plus DNS unless ``allowDns: false``.
"""

from __future__ import annotations

from typing import Any

from lamina.api import Function
from lamina.api.network import EgressRule, LabelSelector, Peer
from lamina.resources import labels, names
from lamina.resources.meta import metadata
from lamina.resources.settings import Settings

PORT = 8080
NAMESPACE_NAME = "kubernetes.io/metadata.name"
#: DNS, wherever the cluster's resolver is (kube-dns in kube-system, node-local caches...).
DNS_RULE: dict[str, Any] = {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}


def _selector(selector: LabelSelector) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if selector.match_labels:
        out["matchLabels"] = dict(selector.match_labels)
    if selector.match_expressions:
        out["matchExpressions"] = [e.to_dict() for e in selector.match_expressions]
    return out


def _peer(peer: Peer) -> dict[str, Any]:
    if peer.cidr is not None:
        block: dict[str, Any] = {"cidr": peer.cidr}
        if peer.except_:
            block["except"] = list(peer.except_)
        return {"ipBlock": block}
    out: dict[str, Any] = {}
    if peer.namespace_selector is not None:
        out["namespaceSelector"] = _selector(peer.namespace_selector)
    if peer.pod_selector is not None:
        out["podSelector"] = _selector(peer.pod_selector)
    return out


def _egress_rule(rule: EgressRule) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if rule.to:
        out["to"] = [_peer(p) for p in rule.to]
    if rule.ports:
        out["ports"] = [p.to_dict() for p in rule.ports]
    return out


def egress_rules(fn: Function, settings: Settings) -> list[dict[str, Any]] | None:
    """The policy's egress rules, or None when egress is open (no Egress policy type)."""
    network = fn.spec.network
    if network is None or network.egress is None:
        return None if settings.default_egress == "allow" else [DNS_RULE]
    rules = [_egress_rule(r) for r in network.egress]
    if network.allow_dns:
        rules.append(DNS_RULE)
    return rules


def environments_of(function: str) -> dict[str, Any]:
    """Every environment of ``function``: $LATEST's pods, each published version's, and a warm pool
    pod once claimed for it (it then carries the function's label); not its mapping workers, which
    carry the function's label too but are clients, not servers."""
    return {
        "matchLabels": {labels.FUNCTION: function},
        "matchExpressions": [
            {
                "key": labels.NAME,
                "operator": "In",
                "values": [labels.FUNCTION_APP, labels.FUNCTION_VERSION_APP, labels.POOL_APP],
            }
        ],
    }


def build_network_policy(fn: Function, settings: Settings) -> dict[str, Any]:
    """The NetworkPolicy that isolates ``fn``'s environments (every version's pods)."""
    gateway = {
        "namespaceSelector": {"matchLabels": {NAMESPACE_NAME: settings.gateway_namespace}},
        "podSelector": {"matchLabels": dict(settings.gateway_pod_labels)},
    }
    spec: dict[str, Any] = {
        "podSelector": environments_of(fn.name),
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [gateway], "ports": [{"port": PORT, "protocol": "TCP"}]}],
    }
    egress = egress_rules(fn, settings)
    if egress is not None:
        spec["policyTypes"].append("Egress")
        spec["egress"] = egress
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(names.function_network_policy(fn.name), fn, labels.function_labels(fn.name)),
        "spec": spec,
    }
