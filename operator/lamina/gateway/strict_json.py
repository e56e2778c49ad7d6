"""JSON as Lambda's front end reads it, for the request bodies and function results the gateway parses."""

from __future__ import annotations

import json


def _not_json(constant: str) -> object:
    raise ValueError(f"{constant} is not a JSON value")


#: One decoder for every call: ``json.loads`` with ``parse_constant`` builds a new one each time (on
#: every invocation's path: the gateway checks each request body).
_DECODE = json.JSONDecoder(parse_constant=_not_json).decode


def parse_json(data: bytes | str) -> object:
    """Strict JSON: no NaN/Infinity literals; nesting deep enough to exhaust Python's recursion is a
    ValueError ("nested too deeply"), not a RecursionError that would escape as a 500. Bytes are
    decoded as ``json.loads`` decodes them (UTF-8, -16 or -32, a UTF-8 BOM allowed); a str must not
    start with a BOM."""
    if isinstance(data, str):
        if data.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", data, 0)
        text = data
    else:
        text = data.decode(json.detect_encoding(data), "surrogatepass")
    try:
        return _DECODE(text)
    except RecursionError:
        raise ValueError("the document is nested too deeply") from None
