"""Turning pydantic's validation errors into one readable line per problem.

A line reads ``Function hello: spec.timeoutSeconds: must be between 1 and 900 (got 0)``: the object,
the field as written in YAML (camelCase, ``[i]`` for list items), and the rule that was broken.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from lamina.api.common import PATTERN_RULES, FieldError


class ManifestError(Exception):
    """One or more problems with manifests; ``str()`` gives one line per problem."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("\n".join(self.problems))


def show(value: Any) -> str:
    """A short rendering of a user value for ``(got ...)``."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, str):
        text = repr(value)
    elif isinstance(value, dict | list):
        text = "an object" if isinstance(value, dict) else "a list"
    else:
        text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def format_loc(loc: Sequence[str | int]) -> str:
    """``("spec", "layers", 2)`` -> ``spec.layers[2]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _unwrap(tp: Any) -> Any:
    """Strip Optional[...] so the walk sees the real type."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
    return tp


def _constraints(root: type[BaseModel], loc: Sequence[str | int]) -> list[Any]:
    """The annotated_types constraints (Ge, Le, ...) of the field at ``loc``, if it can be found."""
    tp: Any = root
    meta: list[Any] = []
    for part in loc:
        tp = _unwrap(tp)
        if typing.get_origin(tp) is typing.Annotated:
            tp = typing.get_args(tp)[0]
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            info = _find_field(tp, str(part))
            if info is None:
                return []
            tp, meta = info.annotation, list(info.metadata)
        elif typing.get_origin(tp) in (list, dict, tuple, set):
            tp, meta = typing.get_args(tp)[-1], []
        else:
            return []
    tp = _unwrap(tp)
    if typing.get_origin(tp) is typing.Annotated:
        for extra in typing.get_args(tp)[1:]:
            meta.extend(extra.metadata if isinstance(extra, FieldInfo) else [extra])
    return meta


def _find_field(model: type[BaseModel], name: str) -> FieldInfo | None:
    for fname, info in model.model_fields.items():
        if name in (fname, info.alias):
            return info
    return None


def _bounds(root: type[BaseModel], loc: Sequence[str | int]) -> tuple[Any, Any]:
    low = high = None
    for c in _constraints(root, loc):
        if isinstance(c, annotated_types.Ge | annotated_types.Gt):
            low = getattr(c, "ge", getattr(c, "gt", None))
        elif isinstance(c, annotated_types.Le | annotated_types.Lt):
            high = getattr(c, "le", getattr(c, "lt", None))
    return low, high


def _range_message(root: type[BaseModel], loc: Sequence[str | int], value: Any) -> str:
    low, high = _bounds(root, loc)
    if low is not None and high is not None:
        return f"must be between {low} and {high} (got {show(value)})"
    if low is not None:
        return f"must be at least {low} (got {show(value)})"
    return f"must be at most {high} (got {show(value)})"


def _literal_message(expected: str, value: Any) -> str:
    choices = re.findall(r"'([^']*)'", expected) or [expected]
    return f"must be one of {', '.join(choices)} (got {show(value)})"


def _pattern_message(pattern: str, value: Any) -> str:
    rule = PATTERN_RULES.get(pattern, f"must match {pattern}")
    return f"{rule} (got {show(value)})"


def _length_message(kind: str, ctx: dict[str, Any], value: Any) -> str:
    unit = "characters" if kind == "string" else "items"
    if "max_length" in ctx:
        return f"must have at most {ctx['max_length']} {unit} (got {ctx.get('actual_length', len(value))})"
    return f"must have at least {ctx['min_length']} {unit[:-1] if ctx['min_length'] == 1 else unit}"


_TYPE_WORDS = {
    "int": "an integer",
    "string": "a string",
    "bool": "true or false",
    "float": "a number",
    "dict": "an object",
    "model": "an object",
    "list": "a list",
}


def describe_error(root: type[BaseModel], err: Any) -> tuple[str, str]:
    """(field path, message) for one entry of ``ValidationError.errors()``."""
    loc: list[str | int] = list(err["loc"])
    kind: str = err["type"]
    ctx: dict[str, Any] = err.get("ctx") or {}
    value = err.get("input")
    cause = ctx.get("error")
    if isinstance(cause, FieldError):
        return format_loc(loc) + "." + cause.field, str(cause)
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        message = _range_message(root, loc, value)
    elif kind in ("literal_error", "enum"):
        message = _literal_message(str(ctx.get("expected", "")), value)
    elif kind == "missing":
        message = "is required"
    elif kind == "extra_forbidden":
        message = "unknown field"
    elif kind == "string_pattern_mismatch":
        message = _pattern_message(str(ctx.get("pattern", "")), value)
    elif kind in ("string_too_long", "string_too_short", "too_long", "too_short"):
        message = _length_message("string" if kind.startswith("string") else "list", ctx, value)
    elif kind.endswith(("_type", "_parsing")) and kind.split("_")[0] in _TYPE_WORDS:
        message = f"must be {_TYPE_WORDS[kind.split('_')[0]]} (got {show(value)})"
    elif cause is not None:
        message = str(cause)
    else:
        message = err["msg"][:1].lower() + err["msg"][1:]
    return format_loc(loc), message


def problems_from(subject: str, root: type[BaseModel], exc: ValidationError) -> list[str]:
    """One ``<subject>: <field>: <message>`` line per error, without duplicates."""
    lines: list[str] = []
    for err in exc.errors():
        path, message = describe_error(root, err)
        line = f"{subject}: {path}: {message}" if path else f"{subject}: {message}"
        if line not in lines:
            lines.append(line)
    return lines
