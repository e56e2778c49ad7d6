"""JSON as Lambda's front end reads it, for the request bodies and function results the gateway parses."""

from __future__ import annotations

import json


def _not_json(constant: str) -> object:
    raise ValueError(f"{constant} is not a JSON value")


def parse_json(data: bytes | str) -> object:
    """Strict JSON: no NaN/Infinity literals; nesting deep enough to exhaust Python's recursion is a
    ValueError ("nested too deeply"), not a RecursionError that would escape as a 500."""
    try:
        return json.loads(data, parse_constant=_not_json)
    except RecursionError:
        raise ValueError("the document is nested too deeply") from None
