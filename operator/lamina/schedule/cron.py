"""Next-fire search for ``cron(...)`` expressions.

The search walks year -> month -> day -> hour -> minute over the sorted allowed
values only, so a sparse expression (``cron(0 0 29 2 ? *)``) costs a few loop
turns per candidate year instead of a scan over every minute.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

from lamina.schedule import cronfields as cf

SATURDAY, SUNDAY = 5, 6  # date.weekday() numbering


def eventbridge_weekday(day: date) -> int:
    """Weekday in EventBridge numbering (1 = Sunday ... 7 = Saturday)."""
    return (day.weekday() + 1) % 7 + 1


def nearest_weekday(year: int, month: int, day: int, last: int) -> int | None:
    """``dayW``: the Monday-Friday closest to ``day`` without leaving the month."""
    if day > last:
        return None
    weekday = date(year, month, day).weekday()
    if weekday == SATURDAY:
        return day - 1 if day > 1 else day + 2
    if weekday == SUNDAY:
        return day + 1 if day < last else day - 2
    return day


@dataclass(frozen=True)
class CronSpec:
    """The parsed fields; exactly one of ``dom`` and ``dow`` is set (the other was ``?``)."""

    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    dom: cf.DayOfMonthSpec | None
    months: tuple[int, ...]
    dow: cf.DayOfWeekSpec | None
    years: tuple[int, ...]

    def days_in(self, year: int, month: int) -> list[int]:
        """The days of one month that the day-of-month or day-of-week field selects."""
        last = calendar.monthrange(year, month)[1]
        days: set[int] = set()
        if self.dom is not None:
            days |= {d for d in self.dom.days if d <= last}
            for wanted in self.dom.nearest_weekday:
                found = nearest_weekday(year, month, wanted, last)
                if found is not None:
                    days.add(found)
            if self.dom.last:
                days.add(last)
            if self.dom.last_weekday:
                days.add(nearest_weekday(year, month, last, last) or last)
        if self.dow is not None:
            first = eventbridge_weekday(date(year, month, 1))
            for day in range(1, last + 1):
                if (first + day - 2) % 7 + 1 in self.dow.weekdays:
                    days.add(day)
            for wanted in self.dow.last_of_month:
                last_weekday = eventbridge_weekday(date(year, month, last))
                days.add(last - (last_weekday - wanted) % 7)
            if self.dow.nth is not None:
                wanted, n = self.dow.nth
                day = 1 + (wanted - first) % 7 + 7 * (n - 1)
                if day <= last:
                    days.add(day)
        return sorted(days)

    def local_candidates(self, start: datetime) -> Iterator[datetime]:
        """Naive local times matching the fields, ascending, from ``start`` (inclusive, minute precision)."""
        for year in self.years:
            if year < start.year:
                continue
            first_year = year == start.year
            for month in self.months:
                if first_year and month < start.month:
                    continue
                first_month = first_year and month == start.month
                for day in self.days_in(year, month):
                    if first_month and day < start.day:
                        continue
                    first_day = first_month and day == start.day
                    for hour in self.hours:
                        if first_day and hour < start.hour:
                            continue
                        first_hour = first_day and hour == start.hour
                        for minute in self.minutes:
                            if first_hour and minute < start.minute:
                                continue
                            yield datetime(year, month, day, hour, minute)


def local_to_utc(naive: datetime, tz: ZoneInfo) -> datetime | None:
    """The instant of a local wall time; None if DST skips it, the first one if DST repeats it."""
    instant = naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if instant.astimezone(tz).replace(tzinfo=None) != naive:
        return None
    return instant


def parse_cron(body: str) -> CronSpec:
    """Parse the text between ``cron(`` and ``)``; errors name the field and the expression."""
    fields = body.split()
    if len(fields) != len(cf.FIELD_NAMES):
        raise ValueError(f"cron({body}): expected 6 fields ({' '.join(cf.FIELD_NAMES)}), got {len(fields)}")
    minute, hour, dom, month, dow, year = fields
    if (dom == "?") == (dow == "?"):
        raise ValueError(f"cron({body}): exactly one of day-of-month and day-of-week must be '?'")
    name = ""
    try:
        name = "minutes"
        minutes = cf.parse_numeric(cf.MINUTES, minute)
        name = "hours"
        hours = cf.parse_numeric(cf.HOURS, hour)
        name = "day-of-month"
        dom_spec = None if dom == "?" else cf.parse_day_of_month(dom)
        name = "month"
        months = cf.parse_numeric(cf.MONTH, month)
        name = "day-of-week"
        dow_spec = None if dow == "?" else cf.parse_day_of_week(dow)
        name = "year"
        years = cf.parse_numeric(cf.YEAR, year)
    except cf.FieldError as exc:
        raise ValueError(f"cron field '{name}': {exc}") from None
    return CronSpec(
        tuple(sorted(minutes)),
        tuple(sorted(hours)),
        dom_spec,
        tuple(sorted(months)),
        dow_spec,
        tuple(sorted(years)),
    )


def cron_next_after(spec: CronSpec, tz: ZoneInfo, after: datetime) -> datetime | None:
    """First matching instant strictly after ``after`` (aware), in UTC."""
    after = after.astimezone(UTC)
    start = after.astimezone(tz).replace(tzinfo=None, second=0, microsecond=0)
    # Wall times are mapped with fold=0, which is monotonic, so no match can lie
    # before ``start``; inside a repeated hour the first-occurrence instants are
    # at or before ``after`` and get filtered out, so the hour fires only once.
    for naive in spec.local_candidates(start):
        instant = local_to_utc(naive, tz)
        if instant is not None and instant > after:
            return instant
    return None
