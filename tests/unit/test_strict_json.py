"""The gateway's strict JSON reading: what json.loads accepts, without NaN or Infinity, and deep
nesting as a ValueError."""

from __future__ import annotations

import json

import pytest

from lamina.gateway.strict_json import parse_json

DOCUMENTS = ['{"a": [1, 2.5, "ü", null, true]}', "[]", '"text"', "3", ' {"x": {"y": []}} ']


@pytest.mark.parametrize("text", DOCUMENTS)
@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32"])
def test_reads_what_json_loads_reads(text: str, encoding: str) -> None:
    data = text.encode(encoding)
    assert parse_json(data) == json.loads(data)
    assert parse_json(text) == json.loads(text)


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"a": -Infinity}'])
def test_refuses_nan_and_infinity(text: str) -> None:
    with pytest.raises(ValueError, match="is not a JSON value"):
        parse_json(text.encode())


@pytest.mark.parametrize("bad", [b"{", b"", b"[1,]", "\ufeff{}", b"\xff\xfe\x00"])
def test_refuses_what_is_not_json(bad: bytes | str) -> None:
    with pytest.raises(ValueError):
        parse_json(bad)


def test_deep_nesting_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        parse_json(b"[" * 100_000 + b"]" * 100_000)
