"""CustomResourceDefinitions of the lamina kinds, built from the api models' schemas."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from lamina.api import (
    ALIAS_VERSIONS_EXIST,
    GROUP,
    VERSION,
    EventSourceMapping,
    EventSourceMappingSpec,
    EventSourceMappingStatus,
    Function,
    FunctionSpec,
    FunctionStatus,
    Layer,
    LayerSpec,
    LayerStatus,
)
from lamina.crdgen.schema import model_schema, ordered, walk

READY = '.status.conditions[?(@.type=="Ready")]'
CATEGORIES = ["lamina"]
VALIDATION_KEYS = ("rule", "message", "messageExpression", "reason", "fieldPath", "optionalOldSelf")


def column(name: str, path: str, type_: str = "string", priority: int = 0, desc: str = "") -> dict[str, Any]:
    """One additionalPrinterColumn."""
    col: dict[str, Any] = {"name": name, "type": type_, "jsonPath": path}
    if desc:
        col["description"] = desc
    if priority:
        col["priority"] = priority
    return col


READY_COLUMNS = [
    column("Ready", f"{READY}.status", desc="Whether the resource is ready"),
    column("Reason", f"{READY}.reason", priority=1, desc="Why it is (not) ready"),
]
AGE = column("Age", ".metadata.creationTimestamp", "date")


@dataclass(frozen=True)
class Kind:
    """Everything that differs between the three CRDs."""

    model: type[BaseModel]
    spec: type[BaseModel]
    status: type[BaseModel]
    plural: str
    columns: list[dict[str, Any]]
    short_names: list[str] = field(default_factory=list)
    rules: list[dict[str, Any]] = field(default_factory=list)  # CEL on the whole object (spec and status)

    @property
    def kind(self) -> str:
        return self.model.__name__

    @property
    def filename(self) -> str:
        return f"{GROUP}_{self.plural}.yaml"


KINDS = [
    Kind(
        Function,
        FunctionSpec,
        FunctionStatus,
        "functions",
        [
            column("Runtime", ".spec.runtime"),
            column("Memory", ".spec.memoryMB", "integer", desc="Memory in MB"),
            *READY_COLUMNS,
            column("Environments", ".status.readyEnvironments", "integer", desc="Ready environments"),
            AGE,
        ],
        ["fn"],
        [ALIAS_VERSIONS_EXIST],
    ),
    Kind(
        Layer,
        LayerSpec,
        LayerStatus,
        "layers",
        [column("Revision", ".status.revision", "integer"), *READY_COLUMNS, AGE],
    ),
    Kind(
        EventSourceMapping,
        EventSourceMappingSpec,
        EventSourceMappingStatus,
        "eventsourcemappings",
        [
            column("Function", ".spec.functionName"),
            column("Source", ".status.source"),
            column("State", ".status.state"),
            *READY_COLUMNS,
            AGE,
        ],
        ["esm"],
    ),
]


def _tidy(schema: dict[str, Any]) -> dict[str, Any]:
    """Plain-text descriptions and CEL entries with `rule` first, in place."""
    for node in walk(schema):
        if isinstance(node.get("description"), str):
            node["description"] = re.sub(r"``([^`]+)``", r"\1", node["description"])
        rules = node.get("x-kubernetes-validations")
        if rules:
            node["x-kubernetes-validations"] = [{k: r[k] for k in VALIDATION_KEYS if k in r} for r in rules]
    return schema


def crd(kind: Kind) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    root = ordered(
        {
            "description": (kind.model.__doc__ or "").strip(),
            "type": "object",
            "required": ["spec"],
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"type": "object"},
                "spec": model_schema(kind.spec),
                "status": model_schema(kind.status),
            },
            **({"x-kubernetes-validations": kind.rules} if kind.rules else {}),
        }
    )
    names: dict[str, Any] = {
        "kind": kind.kind,
        "listKind": f"{kind.kind}List",
        "plural": kind.plural,
        "singular": kind.kind.lower(),
    }
    if kind.short_names:
        names["shortNames"] = kind.short_names
    names["categories"] = CATEGORIES
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{kind.plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "lamina"},
        },
        "spec": {
            "group": GROUP,
            "names": names,
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": kind.columns,
                    "schema": {"openAPIV3Schema": _tidy(root)},
                }
            ],
        },
    }
