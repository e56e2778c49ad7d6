"""Invalid expressions are refused with a message that points at the culprit."""

from __future__ import annotations

import re

import pytest

from lamina.schedule import parse_schedule

INVALID: list[tuple[str, str]] = [
    ("rate(1 minutes)", "rate(1 minutes): use the singular unit 'minute' when the value is 1"),
    ("rate(1 hours)", "rate(1 hours): use the singular unit 'hour' when the value is 1"),
    ("rate(5 minute)", "rate(5 minute): use the plural unit 'minutes' when the value is greater than 1"),
    ("rate(2 day)", "rate(2 day): use the plural unit 'days' when the value is greater than 1"),
    ("rate(0 minutes)", "rate(0 minutes): the value must be a positive integer (got '0')"),
    ("rate(-1 minutes)", "rate(-1 minutes): the value must be a positive integer (got '-1')"),
    ("rate(1.5 hours)", "rate(1.5 hours): the value must be a positive integer (got '1.5')"),
    ("rate(5 weeks)", "rate(5 weeks): unknown unit 'weeks' (expected minute(s), hour(s) or day(s))"),
    ("rate(5)", "rate(5): expected 'value unit', e.g. rate(5 minutes)"),
    ("cron(0 0 ? * 8 *)", "cron field 'day-of-week': '8' is out of range 1-7"),
    ("cron(0 0 ? * 0 *)", "cron field 'day-of-week': '0' is out of range 1-7"),
    ("cron(60 0 * * ? *)", "cron field 'minutes': '60' is out of range 0-59"),
    ("cron(0 24 * * ? *)", "cron field 'hours': '24' is out of range 0-23"),
    ("cron(0 0 32 * ? *)", "cron field 'day-of-month': '32' is out of range 1-31"),
    ("cron(0 0 0 * ? *)", "cron field 'day-of-month': '0' is out of range 1-31"),
    ("cron(0 0 1 13 ? *)", "cron field 'month': '13' is out of range 1-12"),
    ("cron(0 0 1 FOO ? *)", "cron field 'month': 'FOO' is not a valid value"),
    ("cron(0 0 ? * MONDAY *)", "cron field 'day-of-week': 'MONDAY' is not a valid value"),
    ("cron(0 0 1 * ? 1969)", "cron field 'year': '1969' is out of range 1970-2199"),
    ("cron(0 0 1 * ? 2200)", "cron field 'year': '2200' is out of range 1970-2199"),
    ("cron(0 0 * * * *)", "cron(0 0 * * * *): exactly one of day-of-month and day-of-week must be '?'"),
    ("cron(0 0 ? * ? *)", "cron(0 0 ? * ? *): exactly one of day-of-month and day-of-week must be '?'"),
    ("cron(0 0 1 * MON *)", "cron(0 0 1 * MON *): exactly one of day-of-month and day-of-week must be '?'"),
    (
        "cron(0 0 * * ?)",
        "cron(0 0 * * ?): expected 6 fields (minutes hours day-of-month month day-of-week year), got 5",
    ),
    ("cron(0 0 * * ? * *)", "got 7"),
    ("cron(0 10-5 * * ? *)", "cron field 'hours': range '10-5' is reversed; ranges do not wrap around"),
    ("cron(0 0 ? * FRI-MON *)", "cron field 'day-of-week': range 'FRI-MON' is reversed"),
    ("cron(0 0 ? * 3#2,4#1 *)", "cron field 'day-of-week': only one '#' expression is allowed in the field"),
    ("cron(0 0 ? * 3#6 *)", "cron field 'day-of-week': '#6' in '3#6' must be a week number 1-5"),
    ("cron(0 0 ? * 8#1 *)", "cron field 'day-of-week': '8' is out of range 1-7"),
    (
        "cron(0 0 ? * */2 *)",
        "cron field 'day-of-week': '/' is not allowed in the day-of-week field (in '*/2')",
    ),
    ("cron(*/0 0 * * ? *)", "cron field 'minutes': step '0' in '*/0' must be a positive integer"),
    ("cron(0/x 0 * * ? *)", "cron field 'minutes': step 'x' in '0/x' must be a positive integer"),
    ("cron(0 0 L-2 * ? *)", "cron field 'day-of-month': 'L-2' is not supported (use 'L' or 'LW')"),
    ("cron(0 0 1,,2 * ? *)", "cron field 'day-of-month': empty element in list"),
    (
        "cron(0 ? * * ? *)",
        "cron field 'hours': '?' is only allowed as the whole day-of-month or day-of-week field",
    ),
    ("cron(L 0 * * ? *)", "cron field 'minutes': 'L' is not a valid value"),
    ("cron(0 0 32W * ? *)", "cron field 'day-of-month': '32' is out of range 1-31"),
    ("cron(0 0 ? * 9L *)", "cron field 'day-of-week': '9' is out of range 1-7"),
    ("cron(0 0 1 * ? 2024-x)", "cron field 'year': 'x' is not a valid value"),
    (
        "every 5 minutes",
        "'every 5 minutes': expected rate(value unit), cron(six fields) or at(yyyy-mm-ddThh:mm:ss)",
    ),
    ("rate(5 minutes", "expected rate(value unit)"),
    ("weekly(1)", "'weekly(1)': unknown schedule type 'weekly' (expected rate, cron or at)"),
    ("at(2024-01-01 00:00:00)", "at(2024-01-01 00:00:00): expected at(yyyy-mm-ddThh:mm:ss)"),
    ("at(2024-01-01)", "at(2024-01-01): expected at(yyyy-mm-ddThh:mm:ss)"),
    ("at(2024-13-01T00:00:00)", "at(2024-13-01T00:00:00): month must be in 1..12"),
    ("at(2023-02-29T00:00:00)", "at(2023-02-29T00:00:00): day is out of range for month"),
]


@pytest.mark.parametrize(("expression", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_expression_is_refused_with_message(expression: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_schedule(expression)
    assert message in str(info.value)


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../etc/passwd", ""])
def test_unknown_timezone_is_named(zone: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"unknown timezone '{zone}'")) as info:
        parse_schedule("rate(5 minutes)", zone)
    assert "IANA" in str(info.value)


@pytest.mark.parametrize(
    "expression",
    [
        "cron(0 0 1W,15 * ? *)",
        "cron(0 0 LW * ? 2024-2030/2)",
        "cron(0 0 ? * MON#2 *)",
        "cron(0 0 ? * 2L,6L *)",
        "cron(0 0 ? * sun-sat *)",
        "cron(0 0 * 2/3 ? *)",
        "cron(0-59/15 0-23/6 * * ? *)",
    ],
)
def test_valid_variants_parse(expression: str) -> None:
    assert parse_schedule(expression).expression == expression
