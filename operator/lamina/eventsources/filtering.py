"""Event filtering (``filterCriteria``) with the EventBridge pattern grammar that Lambda uses.

A pattern is a JSON object whose leaves are lists of matchers; a record matches a pattern when every
field the pattern names matches one of its matchers, and matches the criteria when it matches any
pattern (no patterns: everything matches). The record is matched in the shape the function would see
it (see :mod:`lamina.eventsources.events`), with ``body`` parsed as JSON when it is JSON, so patterns
are written as on SQS: ``{"body": {"type": ["order"]}}``.

Matchers: a literal (string, number, ``true``/``false``, ``null``; ``""`` matches the empty string),
``{"prefix": s}``, ``{"suffix": s}``, ``{"equals-ignore-case": s}``, ``{"wildcard": "a*b"}``,
``{"anything-but": literal | [literals] | {"prefix": s} | {"suffix": s}}``,
``{"numeric": [">", 0, "<=", 5]}`` and ``{"exists": true | false}``. Strings match exactly (no case
folding); numbers compare by value. When the record's field is a list, the field matches when any of
its elements does.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from typing import Any

MAX_PATTERN_LENGTH = 4096
_MISSING = object()
_NUMERIC_OPS = {
    "=": lambda a, b: a == b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


class FilterError(ValueError):
    """A pattern that is not valid EventBridge grammar; the message names where."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_literal(value: Any) -> bool:
    return value is None or isinstance(value, str | bool) or _is_number(value)


def _literal_equal(matcher: Any, value: Any) -> bool:
    if matcher is None or value is None:
        return matcher is None and value is None
    if isinstance(matcher, bool) or isinstance(value, bool):
        return isinstance(matcher, bool) and isinstance(value, bool) and matcher == value
    if _is_number(matcher):
        return _is_number(value) and float(matcher) == float(value)
    return isinstance(value, str) and matcher == value


def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else re.escape(c) for c in pattern), re.DOTALL)


def _check_string(value: Any, where: str, op: str) -> str:
    if not isinstance(value, str):
        raise FilterError(f"{where}: {op} needs a string (got {json.dumps(value)})")
    return value


def _validate_matcher(matcher: Any, where: str) -> None:
    if _is_literal(matcher):
        return
    if not isinstance(matcher, dict) or len(matcher) != 1:
        raise FilterError(f"{where}: a matcher is a literal or an object with one operator")
    ((op, arg),) = matcher.items()
    if op in ("prefix", "suffix"):
        if isinstance(arg, dict) and set(arg) == {"equals-ignore-case"}:
            _check_string(arg["equals-ignore-case"], where, op)
        else:
            _check_string(arg, where, op)
    elif op in ("equals-ignore-case", "wildcard"):
        _check_string(arg, where, op)
    elif op == "exists":
        if not isinstance(arg, bool):
            raise FilterError(f"{where}: exists takes true or false")
    elif op == "anything-but":
        if isinstance(arg, dict):
            if len(arg) != 1 or next(iter(arg)) not in ("prefix", "suffix", "equals-ignore-case"):
                raise FilterError(f"{where}: anything-but takes a literal, a list, prefix or suffix")
            _check_string(next(iter(arg.values())), where, f"anything-but {next(iter(arg))}")
        elif isinstance(arg, list):
            if not all(_is_literal(v) for v in arg):
                raise FilterError(f"{where}: anything-but lists only literals")
        elif not _is_literal(arg):
            raise FilterError(f"{where}: anything-but takes a literal, a list, prefix or suffix")
    elif op == "numeric":
        if not isinstance(arg, list) or not arg or len(arg) % 2 or len(arg) > 4:
            raise FilterError(f"{where}: numeric takes [op, number] or [op, number, op, number]")
        for i in range(0, len(arg), 2):
            if arg[i] not in _NUMERIC_OPS or not _is_number(arg[i + 1]):
                raise FilterError(f"{where}: numeric operators are =, <, <=, >, >= followed by a number")
    else:
        raise FilterError(f"{where}: unknown operator {op!r}")


def _validate(pattern: Any, where: str) -> None:
    if not isinstance(pattern, dict) or not pattern:
        raise FilterError(f"{where}: must be a non-empty JSON object")
    for key, value in pattern.items():
        path = f"{where}.{key}"
        if isinstance(value, dict):
            _validate(value, path)
        elif isinstance(value, list):
            if not value:
                raise FilterError(f"{path}: a list of matchers may not be empty")
            for matcher in value:
                _validate_matcher(matcher, path)
        else:
            raise FilterError(f"{path}: must be a list of matchers or an object (got {json.dumps(value)})")


def parse_pattern(text: str | dict[str, Any]) -> dict[str, Any]:
    """Parse and validate one pattern; raises :class:`FilterError` naming the offending field."""
    if isinstance(text, dict):
        pattern = text
    else:
        if len(text) > MAX_PATTERN_LENGTH:
            raise FilterError(f"pattern: longer than {MAX_PATTERN_LENGTH} characters")
        try:
            pattern = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FilterError(f"pattern: not JSON ({exc.msg} at character {exc.pos})") from None
    _validate(pattern, "pattern")
    return pattern


def _string_op(op: str, arg: Any, value: Any) -> bool:
    if not isinstance(value, str):
        return False
    if isinstance(arg, dict):  # {"prefix": {"equals-ignore-case": "..."}}
        needle, haystack = arg["equals-ignore-case"].casefold(), value.casefold()
    else:
        needle, haystack = arg, value
    if op == "prefix":
        return haystack.startswith(needle)
    if op == "suffix":
        return haystack.endswith(needle)
    if op == "equals-ignore-case":
        return value.casefold() == arg.casefold()
    return _wildcard_regex(arg).fullmatch(value) is not None  # wildcard


def _match_one(matcher: Any, value: Any) -> bool:
    """Does one present, non-list value match one matcher?"""
    if _is_literal(matcher):
        return _literal_equal(matcher, value)
    ((op, arg),) = matcher.items()
    if op == "exists":
        return arg is True
    if isinstance(value, dict):
        return False  # only exists applies to objects
    if op in ("prefix", "suffix", "equals-ignore-case", "wildcard"):
        return _string_op(op, arg, value)
    if op == "numeric":
        if not _is_number(value):
            return False
        return all(_NUMERIC_OPS[arg[i]](value, arg[i + 1]) for i in range(0, len(arg), 2))
    if op == "anything-but":
        if isinstance(arg, dict):
            ((sub_op, sub_arg),) = arg.items()
            return isinstance(value, str) and not _string_op(sub_op, sub_arg, value)
        excluded = arg if isinstance(arg, list) else [arg]
        return not any(_literal_equal(e, value) for e in excluded)
    return False


def _match_field(matchers: list[Any], value: Any) -> bool:
    if value is _MISSING:
        return any(isinstance(m, dict) and m.get("exists") is False for m in matchers)
    if isinstance(value, list):
        if any(isinstance(m, dict) and m.get("exists") is True for m in matchers):
            return True
        return any(_match_one(m, v) for v in value for m in matchers if not isinstance(v, list))
    return any(_match_one(m, value) for m in matchers)


def matches(pattern: dict[str, Any], event: Any) -> bool:
    """Does ``event`` match one (validated) pattern?"""
    for key, expected in pattern.items():
        value = event.get(key, _MISSING) if isinstance(event, dict) else _MISSING
        if isinstance(expected, dict):
            if not matches(expected, value if isinstance(value, dict) else {}):
                return False
        elif not _match_field(expected, value):
            return False
    return True


def _kafka_value(value: str) -> Any:
    """A Kafka record's base64 ``value`` as patterns see it: JSON when it is JSON, else its text."""
    try:
        text = base64.b64decode(value, validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return value
    try:
        return json.loads(text)
    except ValueError:
        return text


def filterable(entry: dict[str, Any]) -> dict[str, Any]:
    """The view of an event record that patterns see: ``body`` (queues) or a Kafka record's
    ``value`` (decoded from base64) parsed when it is JSON, as Lambda filters on them."""
    if "partition" in entry and "offset" in entry and isinstance(entry.get("value"), str):
        return {**entry, "value": _kafka_value(entry["value"])}
    body = entry.get("body")
    if isinstance(body, str) and entry.get("bodyEncoding") != "base64":
        try:
            parsed = json.loads(body)
        except ValueError:
            return entry
        return {**entry, "body": parsed}
    return entry


class RecordFilter:
    """The ``filterCriteria`` of a mapping: records matching no pattern are dropped."""

    def __init__(self, patterns: Sequence[str | dict[str, Any]] = ()) -> None:
        self.patterns = [parse_pattern(p) for p in patterns]

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def accepts(self, entry: dict[str, Any]) -> bool:
        if not self.patterns:
            return True
        view = filterable(entry)
        return any(matches(p, view) for p in self.patterns)
