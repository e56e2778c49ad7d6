"""Parsing of the six fields of an EventBridge ``cron(...)`` expression.

Each field becomes plain sets of integers plus a few flags for the calendar
specials (``L``, ``W``, ``#``), so the search in :mod:`lamina.schedule.cron`
never has to look at text again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MONTH_NAMES = {
    name: i + 1
    for i, name in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
    )
}
# EventBridge numbers the week from Sunday = 1 to Saturday = 7.
WEEKDAY_NAMES = {name: i + 1 for i, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))}

FIELD_NAMES = ("minutes", "hours", "day-of-month", "month", "day-of-week", "year")


class FieldError(ValueError):
    """A problem in one field; the caller adds which field it was."""


@dataclass(frozen=True)
class FieldRange:
    """Bounds and symbolic names of one numeric field."""

    name: str
    low: int
    high: int
    names: dict[str, int] = field(default_factory=dict)


MINUTES = FieldRange("minutes", 0, 59)
HOURS = FieldRange("hours", 0, 23)
DAY_OF_MONTH = FieldRange("day-of-month", 1, 31)
MONTH = FieldRange("month", 1, 12, MONTH_NAMES)
DAY_OF_WEEK = FieldRange("day-of-week", 1, 7, WEEKDAY_NAMES)
YEAR = FieldRange("year", 1970, 2199)


@dataclass(frozen=True)
class DayOfMonthSpec:
    """Day-of-month field: plain days plus ``L`` (last), ``LW`` and ``nW`` (nearest weekday)."""

    days: frozenset[int] = frozenset()
    last: bool = False
    last_weekday: bool = False
    nearest_weekday: frozenset[int] = frozenset()


@dataclass(frozen=True)
class DayOfWeekSpec:
    """Day-of-week field: plain weekdays plus ``nL`` (last n of month) and one ``d#k`` (k-th d)."""

    weekdays: frozenset[int] = frozenset()
    last_of_month: frozenset[int] = frozenset()
    nth: tuple[int, int] | None = None


def parse_value(rng: FieldRange, text: str) -> int:
    """One number or name, checked against the field's bounds."""
    upper = text.upper()
    if upper in rng.names:
        return rng.names[upper]
    if not (text.isascii() and text.isdigit()):
        raise FieldError(f"'{text}' is not a valid value")
    value = int(text)
    if not rng.low <= value <= rng.high:
        raise FieldError(f"'{text}' is out of range {rng.low}-{rng.high}")
    return value


def parse_numeric(rng: FieldRange, text: str, *, allow_step: bool = True) -> frozenset[int]:
    """A comma list of ``*``, ``a``, ``a-b``, ``a/n``, ``*/n`` and ``a-b/n``."""
    values: set[int] = set()
    for part in text.split(","):
        values |= _parse_part(rng, part, allow_step=allow_step)
    return frozenset(values)


def _parse_part(rng: FieldRange, part: str, *, allow_step: bool) -> set[int]:
    if not part:
        raise FieldError("empty element in list")
    if part == "?":
        raise FieldError("'?' is only allowed as the whole day-of-month or day-of-week field")
    base, slash, step_text = part.partition("/")
    step = 1
    if slash:
        if not allow_step:
            raise FieldError(f"'/' is not allowed in the {rng.name} field (in '{part}')")
        if not (step_text.isascii() and step_text.isdigit()) or int(step_text) == 0:
            raise FieldError(f"step '{step_text}' in '{part}' must be a positive integer")
        step = int(step_text)
    if base == "*":
        low, high = rng.low, rng.high
    elif "-" in base:
        first, _, second = base.partition("-")
        low, high = parse_value(rng, first), parse_value(rng, second)
        if low > high:
            raise FieldError(f"range '{base}' is reversed; ranges do not wrap around, use a list instead")
    else:
        low = parse_value(rng, base)
        high = rng.high if slash else low
    return set(range(low, high + 1, step))


def parse_day_of_month(text: str) -> DayOfMonthSpec:
    """Day-of-month with its specials; ``L``/``W`` items may be mixed with plain ones in a list."""
    days: set[int] = set()
    nearest: set[int] = set()
    last = last_weekday = False
    for part in text.split(","):
        upper = part.upper()
        if upper == "L":
            last = True
        elif upper == "LW":
            last_weekday = True
        elif upper.endswith("W") and part[:-1]:
            nearest.add(parse_value(DAY_OF_MONTH, part[:-1]))
        elif upper.startswith("L"):
            raise FieldError(f"'{part}' is not supported (use 'L' or 'LW')")
        else:
            days |= _parse_part(DAY_OF_MONTH, part, allow_step=True)
    return DayOfMonthSpec(frozenset(days), last, last_weekday, frozenset(nearest))


def parse_day_of_week(text: str) -> DayOfWeekSpec:
    """Day-of-week with ``L`` (alone: Saturday), ``nL`` and at most one ``d#k``."""
    weekdays: set[int] = set()
    last_of: set[int] = set()
    nth: tuple[int, int] | None = None
    for part in text.split(","):
        upper = part.upper()
        if "#" in part:
            if nth is not None:
                raise FieldError("only one '#' expression is allowed in the field")
            day_text, _, n_text = part.partition("#")
            if n_text not in ("1", "2", "3", "4", "5"):
                raise FieldError(f"'#{n_text}' in '{part}' must be a week number 1-5")
            nth = (parse_value(DAY_OF_WEEK, day_text), int(n_text))
        elif upper == "L":
            weekdays.add(WEEKDAY_NAMES["SAT"])
        elif upper.endswith("L"):
            last_of.add(parse_value(DAY_OF_WEEK, part[:-1]))
        else:
            weekdays |= _parse_part(DAY_OF_WEEK, part, allow_step=False)
    return DayOfWeekSpec(frozenset(weekdays), frozenset(last_of), nth)
