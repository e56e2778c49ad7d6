"""``spec.network`` of a Function: where its environments may connect, in NetworkPolicy's own terms
(Lambda's VPC configuration, for a cluster).

Without ``network`` a function gets the installation's default egress (open, as a Lambda outside a
VPC; the chart's ``networkPolicy.defaultEgress: deny`` closes it). With ``network.egress`` set, egress
is exactly those rules (an empty list: none at all), plus DNS unless ``allowDns: false``. Ingress is
never configurable: only the gateway reaches a function's environments.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from lamina.api.common import FieldError, LaminaModel

MAX_RULES = 32
MAX_PEERS = 32


class SelectorRequirement(LaminaModel):
    key: str = Field(min_length=1, max_length=317)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _values_match_operator(self) -> SelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise FieldError("values", f"is required with operator {self.operator}")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise FieldError("values", f"must be empty with operator {self.operator}")
        return self


class LabelSelector(LaminaModel):
    """A Kubernetes label selector (``{}`` selects everything)."""

    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[SelectorRequirement] = Field(default_factory=list, max_length=16)


class Peer(LaminaModel):
    """Where a function may connect: an address block (``cidr``, optional ``except``), or pods chosen
    by ``namespaceSelector`` and/or ``podSelector`` (a NetworkPolicyPeer)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.cidr) != (has(self.namespaceSelector) || has(self.podSelector))",
                    "message": "a peer is either a cidr or selectors (namespaceSelector, podSelector)",
                },
                {"rule": "!has(self.except) || has(self.cidr)", "message": "except goes with cidr"},
            ]
        }
    )

    cidr: str | None = Field(default=None, max_length=49, description="An address block, e.g. 10.0.0.0/8.")
    except_: list[str] | None = Field(
        default=None, alias="except", max_length=16, description="Blocks inside cidr that are excluded."
    )
    namespace_selector: LabelSelector | None = None
    pod_selector: LabelSelector | None = None

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"must be an address block such as 10.0.0.0/8 (got {value!r})") from None
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Peer:
        selectors = self.namespace_selector is not None or self.pod_selector is not None
        if (self.cidr is not None) == selectors:
            raise ValueError("a peer is either a cidr or selectors (namespaceSelector, podSelector)")
        if self.except_ is not None:
            if self.cidr is None:
                raise FieldError("except", "goes with cidr")
            outer = ipaddress.ip_network(self.cidr, strict=False)
            for block in self.except_:
                try:
                    inner = ipaddress.ip_network(block, strict=False)
                except ValueError:
                    raise FieldError("except", f"{block!r} is not an address block") from None
                if inner.version != outer.version or not inner.subnet_of(outer):  # type: ignore[arg-type]
                    raise FieldError("except", f"{block} is not inside {self.cidr}")
        return self


class Port(LaminaModel):
    port: int | str | None = Field(default=None, description="A number, or a named port of the peer.")
    end_port: int | None = Field(default=None, ge=1, le=65535, description="Last port of a range.")
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"

    @field_validator("port")
    @classmethod
    def _port(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and not 1 <= value <= 65535:
            raise ValueError("must be between 1 and 65535")
        if isinstance(value, str) and not (0 < len(value) <= 15):
            raise ValueError("a named port has 1 to 15 characters")
        return value

    @model_validator(mode="after")
    def _range(self) -> Port:
        if self.end_port is not None and not (isinstance(self.port, int) and self.end_port >= self.port):
            raise FieldError("endPort", "needs a numeric port not greater than it")
        return self


class EgressRule(LaminaModel):
    """Connections to any of ``to`` (everywhere when empty) on any of ``ports`` (all when empty)."""

    to: list[Peer] = Field(default_factory=list, max_length=MAX_PEERS)
    ports: list[Port] = Field(default_factory=list, max_length=MAX_PEERS)


class NetworkSpec(LaminaModel):
    """Egress of a function's environments (see the module's docs)."""

    egress: list[EgressRule] | None = Field(
        default=None,
        max_length=MAX_RULES,
        description="Allowed connections; unset: the installation's default; []: none.",
    )
    allow_dns: bool = Field(default=True, description="Keep DNS (port 53) open when egress is limited.")
