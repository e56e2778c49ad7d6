"""Next fire times of schedule expressions, worked out by hand from the calendar.

Each row: expression, timezone, start, the fire times that follow ``start`` in
order. A final ``END`` means the schedule must be over after those fires.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from lamina.schedule import AtSchedule, CronSchedule, RateSchedule, parse_schedule

END = "END"
NY = "America/New_York"

CASES: list[tuple[str, str, str, list[str]]] = [
    # plain values, lists, ranges, steps
    ("cron(15 10 * * ? *)", "UTC", "2024-01-01T00:00Z", ["2024-01-01T10:15Z", "2024-01-02T10:15Z"]),
    ("cron(0 18 ? * MON-FRI *)", "UTC", "2024-01-05T19:00Z", ["2024-01-08T18:00Z", "2024-01-09T18:00Z"]),
    ("cron(0/10 * * * ? *)", "UTC", "2024-01-01T00:00Z", ["2024-01-01T00:10Z", "2024-01-01T00:20Z"]),
    ("cron(*/5 * * * ? *)", "UTC", "2024-01-01T00:03:30Z", ["2024-01-01T00:05Z", "2024-01-01T00:10Z"]),
    (
        "cron(5-30/5 * * * ? *)",
        "UTC",
        "2024-01-01T00:27Z",
        ["2024-01-01T00:30Z", "2024-01-01T01:05Z", "2024-01-01T01:10Z"],
    ),
    (
        "cron(0,30 8-9 * * ? *)",
        "UTC",
        "2024-01-01T00:00Z",
        [
            "2024-01-01T08:00Z",
            "2024-01-01T08:30Z",
            "2024-01-01T09:00Z",
            "2024-01-01T09:30Z",
            "2024-01-02T08:00Z",
        ],
    ),
    (
        "cron(0 0/6 * * ? *)",
        "UTC",
        "2024-01-01T05:00Z",
        ["2024-01-01T06:00Z", "2024-01-01T12:00Z", "2024-01-01T18:00Z", "2024-01-02T00:00Z"],
    ),
    (
        "cron(0 0 1/10 * ? *)",
        "UTC",
        "2024-01-25T00:00Z",
        ["2024-01-31T00:00Z", "2024-02-01T00:00Z", "2024-02-11T00:00Z"],
    ),
    ("cron(0 0 1 */3 ? *)", "UTC", "2024-01-01T00:00Z", ["2024-04-01T00:00Z", "2024-07-01T00:00Z"]),
    ("cron(0 0 * 1/5 ? *)", "UTC", "2024-01-31T00:00Z", ["2024-06-01T00:00Z", "2024-06-02T00:00Z"]),
    ("cron(0 0 31 * ? *)", "UTC", "2024-01-31T00:00Z", ["2024-03-31T00:00Z", "2024-05-31T00:00Z"]),
    ("cron(59 23 31 12 ? *)", "UTC", "2024-01-01T00:00Z", ["2024-12-31T23:59Z", "2025-12-31T23:59Z"]),
    ("cron(0 0 * * ? *)", "UTC", "2024-12-31T23:59:59.999999Z", ["2025-01-01T00:00Z"]),
    # month and weekday names
    ("cron(0 12 1 JAN,JUL ? *)", "UTC", "2024-01-02T00:00Z", ["2024-07-01T12:00Z", "2025-01-01T12:00Z"]),
    ("cron(0 12 1 FEB-APR ? *)", "UTC", "2024-03-15T00:00Z", ["2024-04-01T12:00Z", "2025-02-01T12:00Z"]),
    ("cron(0 12 1 jan ? *)", "UTC", "2024-01-02T00:00Z", ["2025-01-01T12:00Z"]),
    ("cron(0 6 ? * SUN *)", "UTC", "2024-01-01T00:00Z", ["2024-01-07T06:00Z", "2024-01-14T06:00Z"]),
    (
        "cron(0 12 ? * TUE,THU *)",
        "UTC",
        "2024-01-01T00:00Z",
        ["2024-01-02T12:00Z", "2024-01-04T12:00Z", "2024-01-09T12:00Z"],
    ),
    (
        "cron(0 6 ? * 1,7 *)",
        "UTC",
        "2024-01-01T00:00Z",
        ["2024-01-06T06:00Z", "2024-01-07T06:00Z", "2024-01-13T06:00Z"],
    ),
    # L and W in day-of-month
    ("cron(0 0 L * ? *)", "UTC", "2024-01-31T00:00Z", ["2024-02-29T00:00Z", "2024-03-31T00:00Z"]),
    (
        "cron(0 0 15,L * ? *)",
        "UTC",
        "2024-02-01T00:00Z",
        ["2024-02-15T00:00Z", "2024-02-29T00:00Z", "2024-03-15T00:00Z"],
    ),
    # LW: Mar 31 2024 is a Sunday -> Friday 29th
    (
        "cron(0 0 LW * ? *)",
        "UTC",
        "2024-01-01T00:00Z",
        ["2024-01-31T00:00Z", "2024-02-29T00:00Z", "2024-03-29T00:00Z"],
    ),
    # LW: Aug 31 2024 is a Saturday -> Friday 30th
    ("cron(0 0 LW * ? *)", "UTC", "2024-08-01T00:00Z", ["2024-08-30T00:00Z", "2024-09-30T00:00Z"]),
    # 1W: Jun 1 2024 is a Saturday -> Monday 3rd (never back into May)
    ("cron(0 0 1W * ? *)", "UTC", "2024-05-15T00:00Z", ["2024-06-03T00:00Z", "2024-07-01T00:00Z"]),
    # 31W: Mar 31 2024 is a Sunday -> Friday 29th (never on to April); April has no 31st
    ("cron(0 0 31W * ? *)", "UTC", "2024-03-01T00:00Z", ["2024-03-29T00:00Z", "2024-05-31T00:00Z"]),
    # 15W: Jun 15 2024 Saturday -> Fri 14th; Sep 15 2024 Sunday -> Mon 16th
    (
        "cron(0 0 15W * ? *)",
        "UTC",
        "2024-06-01T00:00Z",
        ["2024-06-14T00:00Z", "2024-07-15T00:00Z", "2024-08-15T00:00Z"],
    ),
    ("cron(0 0 15W * ? *)", "UTC", "2024-09-01T00:00Z", ["2024-09-16T00:00Z"]),
    # L and # in day-of-week
    (
        "cron(0 12 ? * 6L *)",
        "UTC",
        "2024-01-01T00:00Z",
        ["2024-01-26T12:00Z", "2024-02-23T12:00Z", "2024-03-29T12:00Z"],
    ),
    ("cron(0 8 ? * 2L *)", "UTC", "2024-01-01T00:00Z", ["2024-01-29T08:00Z", "2024-02-26T08:00Z"]),
    ("cron(0 6 ? * L *)", "UTC", "2024-01-01T00:00Z", ["2024-01-06T06:00Z", "2024-01-13T06:00Z"]),
    ("cron(0 9 ? * 2#1 *)", "UTC", "2024-01-01T09:00Z", ["2024-02-05T09:00Z", "2024-03-04T09:00Z"]),
    (
        "cron(0 0 ? * 1#1 *)",
        "UTC",
        "2024-01-01T00:00Z",
        ["2024-01-07T00:00Z", "2024-02-04T00:00Z", "2024-03-03T00:00Z"],
    ),
    ("cron(0 0 ? * 7#1 *)", "UTC", "2024-05-15T00:00Z", ["2024-06-01T00:00Z", "2024-07-06T00:00Z"]),
    # fifth Thursday: only Feb (29th) and May (30th) have one in early 2024
    ("cron(0 0 ? * 5#5 *)", "UTC", "2024-01-01T00:00Z", ["2024-02-29T00:00Z", "2024-05-30T00:00Z"]),
    # leap years, including 2100 which is not one
    ("cron(0 0 29 2 ? *)", "UTC", "2024-03-01T00:00Z", ["2028-02-29T00:00Z", "2032-02-29T00:00Z"]),
    ("cron(0 0 29 2 ? *)", "UTC", "2096-03-01T00:00Z", ["2104-02-29T00:00Z"]),
    # the year field ends the schedule
    ("cron(0 0 1 1 ? 2024-2025)", "UTC", "2024-01-01T00:00Z", ["2025-01-01T00:00Z", END]),
    ("cron(0 0 * * ? 2199)", "UTC", "2199-12-31T00:00Z", [END]),
    ("cron(0 0 ? 2 2#5 2024-2026)", "UTC", "2024-01-01T00:00Z", [END]),
    ("cron(0 0 31 2 ? *)", "UTC", "2024-01-01T00:00Z", [END]),
    ("cron(0 0 1 1 ? 2030/10)", "UTC", "2024-01-01T00:00Z", ["2030-01-01T00:00Z", "2040-01-01T00:00Z"]),
    # time zones and DST (New York: 2024-03-10 02:00 -> 03:00, 2024-11-03 02:00 -> 01:00)
    ("cron(0 9 * * ? *)", NY, "2024-03-09T12:00Z", ["2024-03-09T14:00Z", "2024-03-10T13:00Z"]),
    (
        "cron(30 2 * * ? *)",
        NY,
        "2024-03-09T00:00-05:00",
        ["2024-03-09T02:30-05:00", "2024-03-11T02:30-04:00"],
    ),
    (
        "cron(30 1 * * ? *)",
        NY,
        "2024-11-02T00:00-04:00",
        ["2024-11-02T01:30-04:00", "2024-11-03T01:30-04:00", "2024-11-04T01:30-05:00"],
    ),
    (
        "cron(*/30 1 * * ? *)",
        NY,
        "2024-11-03T00:45-04:00",
        ["2024-11-03T01:00-04:00", "2024-11-03T01:30-04:00", "2024-11-04T01:00-05:00"],
    ),
    # starting inside the repeated hour (second pass, EST) does not fire it again
    ("cron(45 1 * * ? *)", NY, "2024-11-03T01:10-05:00", ["2024-11-04T01:45-05:00"]),
    ("cron(0 0 * * ? *)", "Europe/Berlin", "2024-01-01T00:00Z", ["2024-01-01T23:00Z", "2024-01-02T23:00Z"]),
    (
        "cron(30 1 * * ? *)",
        "Europe/London",
        "2024-03-30T00:00Z",
        ["2024-03-30T01:30Z", "2024-04-01T01:30+01:00"],
    ),
    # rate: absolute intervals aligned to the epoch by default
    ("rate(1 minute)", "UTC", "2024-01-01T00:00:30Z", ["2024-01-01T00:01Z", "2024-01-01T00:02Z"]),
    ("rate(5 minutes)", "UTC", "2024-01-01T00:03Z", ["2024-01-01T00:05Z", "2024-01-01T00:10Z"]),
    ("rate(2 hours)", "UTC", "2024-01-01T01:00Z", ["2024-01-01T02:00Z", "2024-01-01T04:00Z"]),
    # 1970-01-01 was a Thursday, so weekly ticks land on Thursdays
    ("rate(7 days)", "UTC", "2024-01-01T00:00Z", ["2024-01-04T00:00Z", "2024-01-11T00:00Z"]),
    ("rate(1 day)", NY, "2024-03-09T12:00Z", ["2024-03-10T00:00Z", "2024-03-11T00:00Z"]),
    # at: one time, wall clock of the time zone
    ("at(2024-07-04T12:00:00)", NY, "2024-01-01T00:00Z", ["2024-07-04T16:00Z", END]),
    ("at(2024-07-04T12:00:00)", NY, "2024-07-04T16:00Z", [END]),
    ("at(2024-03-10T02:30:00)", NY, "2024-01-01T00:00Z", ["2024-03-10T03:30-04:00", END]),
    ("at(2024-11-03T01:30:00)", NY, "2024-01-01T00:00Z", ["2024-11-03T01:30-04:00", END]),
]


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize(
    ("expression", "tz", "start", "expected"), CASES, ids=[f"{c[0]}@{c[2]}" for c in CASES]
)
def test_next_fire_times(expression: str, tz: str, start: str, expected: list[str]) -> None:
    schedule = parse_schedule(expression, tz)
    cursor = _dt(start)
    for want in expected:
        got = schedule.next_after(cursor)
        if want == END:
            assert got is None, f"{expression}: expected no further fire after {cursor}, got {got}"
            return
        assert got == _dt(want), f"{expression} after {cursor}"
        cursor = got


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 40


def test_fire_times_are_utc_and_fold_safe() -> None:
    schedule = parse_schedule("cron(*/30 1 * * ? *)", NY)
    got = schedule.next_after(_dt("2024-11-03T01:15-04:00"))
    assert got is not None
    assert got.tzinfo is UTC
    assert got == _dt("2024-11-03T05:30Z")


def test_fires_between_is_half_open() -> None:
    schedule = parse_schedule("rate(1 hour)")
    fires = list(schedule.fires_between(_dt("2024-01-01T00:00Z"), _dt("2024-01-01T03:00Z")))
    assert fires == [_dt("2024-01-01T01:00Z"), _dt("2024-01-01T02:00Z"), _dt("2024-01-01T03:00Z")]


def test_fires_between_stops_at_a_finite_schedule_end() -> None:
    schedule = parse_schedule("cron(0 0 1 1 ? 2024-2026)")
    fires = list(schedule.fires_between(_dt("2020-01-01T00:00Z"), _dt("2999-01-01T00:00Z")))
    assert fires == [_dt("2024-01-01T00:00Z"), _dt("2025-01-01T00:00Z"), _dt("2026-01-01T00:00Z")]


def test_cron_every_minute_over_a_day() -> None:
    schedule = parse_schedule("cron(* * * * ? *)")
    fires = list(schedule.fires_between(_dt("2024-01-01T00:00Z"), _dt("2024-01-02T00:00Z")))
    assert len(fires) == 24 * 60
    assert fires[0] == _dt("2024-01-01T00:01Z")


def test_rate_with_anchor_counts_from_the_anchor_floored_to_the_minute() -> None:
    schedule = parse_schedule("rate(10 minutes)")
    anchor = _dt("2024-01-01T10:03:27Z")
    assert schedule.next_after(_dt("2024-01-01T09:00Z"), anchor=anchor) == _dt("2024-01-01T10:03Z")
    assert schedule.next_after(_dt("2024-01-01T10:03Z"), anchor=anchor) == _dt("2024-01-01T10:13Z")
    assert schedule.next_after(_dt("2024-01-01T11:00Z"), anchor=anchor) == _dt("2024-01-01T11:03Z")


def test_rate_ignores_dst_in_its_time_zone() -> None:
    schedule = parse_schedule("rate(1 hour)", NY)
    fires = list(schedule.fires_between(_dt("2024-11-03T04:30Z"), _dt("2024-11-03T07:30Z")))
    assert fires == [_dt("2024-11-03T05:00Z"), _dt("2024-11-03T06:00Z"), _dt("2024-11-03T07:00Z")]


@pytest.mark.parametrize(
    ("expression", "kind"),
    [
        ("rate(5 minutes)", RateSchedule),
        ("cron(0 12 * * ? *)", CronSchedule),
        ("at(2030-01-01T00:00:00)", AtSchedule),
    ],
)
def test_parse_returns_the_kind_and_keeps_the_expression(expression: str, kind: type) -> None:
    schedule = parse_schedule(f"  {expression} ", "Europe/Paris")
    assert isinstance(schedule, kind)
    assert schedule.expression == expression
    assert schedule.timezone.key == "Europe/Paris"


def test_rate_interval_units() -> None:
    assert parse_schedule("rate(1 minute)").interval == timedelta(minutes=1)
    assert parse_schedule("rate(3 hours)").interval == timedelta(hours=3)
    assert parse_schedule("rate(2 days)").interval == timedelta(days=2)


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_schedule("rate(1 minute)").next_after(datetime(2024, 1, 1))
