"""From pydantic's JSON Schema to a Kubernetes *structural* OpenAPI v3 schema.

The apiserver only prunes, defaults and runs CEL on structural schemas: every node typed, no
``$ref``, no ``anyOf``/``oneOf`` that change types, no ``additionalProperties: false``. The models
stay the single source of truth; this module only rewrites their schema into that dialect.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

# Keys the apiserver understands and we keep, in the order they are written out.
KEY_ORDER = (
    "description",
    "type",
    "format",
    "enum",
    "pattern",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "maxProperties",
    "default",
    "nullable",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "x-kubernetes-validations",
)
KNOWN_FORMATS = {"date-time", "date", "int32", "int64", "byte", "duration"}


class SchemaError(ValueError):
    """The model uses a construct that has no structural equivalent."""


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline ``$ref`` and collapse Optional's ``anyOf [X, null]`` into X (siblings win)."""
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**_resolve(target, defs), **node}
    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        if sorted(b.get("type", "") for b in branches) == ["integer", "string"]:
            # int | str (a port number or name): Kubernetes' own int-or-string.
            return {**node, "x-kubernetes-int-or-string": True}
        if len(branches) != 1:
            raise SchemaError(f"unions are not structural: {branches}")
        node = {**_resolve(branches[0], defs), **node}
    return node


def structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Rewrite one JSON Schema node (and its children) into a structural schema node."""
    node = _resolve(node, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "$defs") or (key == "default" and value is None):
            continue
        if key == "additionalProperties":
            if isinstance(value, dict):
                out[key] = structural(value, defs)
            continue  # `false` is implied by pruning and is not allowed next to properties
        if key == "const":
            out["enum"] = [value]
        elif key == "properties":
            out[key] = {name: structural(child, defs) for name, child in value.items()}
        elif key == "items":
            out[key] = structural(value, defs)
        elif key == "patternProperties":
            # Not structural: the value schema becomes additionalProperties, the key pattern a CEL rule.
            [(pattern, child)] = value.items()
            out["additionalProperties"] = structural(child, defs)
            rule = {"rule": f"self.all(k, k.matches({pattern!r}))", "message": f"keys must match {pattern}"}
            out.setdefault("x-kubernetes-validations", []).append(rule)
        elif key == "format":
            if value in KNOWN_FORMATS:
                out[key] = value
        elif key in ("exclusiveMinimum", "exclusiveMaximum", "oneOf", "allOf", "not"):
            raise SchemaError(f"{key} has no structural equivalent here")
        else:
            out[key] = value
    if (
        "type" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
        and not out.get("x-kubernetes-int-or-string")
    ):
        if "properties" in out:
            out["type"] = "object"
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True  # free JSON, e.g. `Any`
    return ordered(out)


def ordered(node: dict[str, Any]) -> dict[str, Any]:
    """Keys in a fixed, readable order so generated YAML is stable and diffable."""
    rank = {k: i for i, k in enumerate(KEY_ORDER)}
    return {k: node[k] for k in sorted(node, key=lambda k: (rank.get(k, len(rank)), k))}


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural schema of a model, as written on the wire (camelCase)."""
    raw = model.model_json_schema(by_alias=True)
    return structural(raw, raw.get("$defs", {}))


def walk(node: Any):
    """Every dict in a schema tree (for checks such as "no $ref anywhere")."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)
