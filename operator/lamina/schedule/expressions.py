"""Schedule expressions: ``rate(...)``, ``cron(...)`` (EventBridge) and ``at(...)`` (Scheduler).

All returned fire times are aware datetimes in UTC: comparing two datetimes that
share a ZoneInfo ignores ``fold``, which would misorder times inside a repeated
DST hour.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from lamina.schedule.cron import CronSpec, cron_next_after, local_to_utc, parse_cron

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_RATE_UNITS = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}
_AT_FORMAT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")


def _require_aware(dt: datetime, what: str = "dt") -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware (got {dt.isoformat()})")
    return dt.astimezone(UTC)


@dataclass(frozen=True)
class Schedule(ABC):
    """A parsed expression; ``next_after`` is the only thing callers need."""

    expression: str
    timezone: ZoneInfo

    @abstractmethod
    def next_after(self, dt: datetime, anchor: datetime | None = None) -> datetime | None:
        """The next fire time strictly after ``dt`` (UTC), or None once the schedule is over.

        ``anchor`` only matters for ``rate``: fires are ``anchor + k * interval``.
        """

    def fires_between(
        self, start: datetime, end: datetime, anchor: datetime | None = None
    ) -> Iterator[datetime]:
        """Fire times ``t`` with ``start < t <= end``, ascending."""
        end = _require_aware(end, "end")
        fire = self.next_after(start, anchor)
        while fire is not None and fire <= end:
            yield fire
            fire = self.next_after(fire, anchor)


@dataclass(frozen=True)
class RateSchedule(Schedule):
    """Fixed interval in absolute time, so DST never stretches or shrinks it."""

    interval: timedelta

    def next_after(self, dt: datetime, anchor: datetime | None = None) -> datetime | None:
        after = _require_aware(dt)
        # EventBridge works at minute precision; an anchor mid-minute is floored.
        base = EPOCH if anchor is None else _require_aware(anchor, "anchor").replace(second=0, microsecond=0)
        if after < base:
            return base
        return base + ((after - base) // self.interval + 1) * self.interval


@dataclass(frozen=True)
class CronSchedule(Schedule):
    """Wall-clock schedule in ``timezone``; DST-skipped times do not fire, repeated ones fire once."""

    spec: CronSpec

    def next_after(self, dt: datetime, anchor: datetime | None = None) -> datetime | None:
        return cron_next_after(self.spec, self.timezone, _require_aware(dt))


@dataclass(frozen=True)
class AtSchedule(Schedule):
    """One-time schedule at a wall time in ``timezone``."""

    at: datetime  # UTC

    def next_after(self, dt: datetime, anchor: datetime | None = None) -> datetime | None:
        return self.at if self.at > _require_aware(dt) else None


def load_timezone(name: str) -> ZoneInfo:
    """ZoneInfo by IANA name, with an error that names the zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown timezone '{name}' (expected an IANA name such as 'Europe/Berlin')"
        ) from None


def parse_schedule(expression: str, timezone: str = "UTC") -> Schedule:
    """Parse ``rate(...)``, ``cron(...)`` or ``at(...)``; ValueError says what is wrong and where."""
    tz = load_timezone(timezone)
    text = expression.strip()
    kind, paren, rest = text.partition("(")
    if not paren or not rest.endswith(")"):
        raise ValueError(
            f"'{expression}': expected rate(value unit), cron(six fields) or at(yyyy-mm-ddThh:mm:ss)"
        )
    body = rest[:-1].strip()
    if kind == "rate":
        return RateSchedule(text, tz, _parse_rate(body))
    if kind == "cron":
        return CronSchedule(text, tz, parse_cron(body))
    if kind == "at":
        return AtSchedule(text, tz, _parse_at(body, tz))
    raise ValueError(f"'{expression}': unknown schedule type '{kind}' (expected rate, cron or at)")


def _parse_rate(body: str) -> timedelta:
    parts = body.split()
    if len(parts) != 2:
        raise ValueError(f"rate({body}): expected 'value unit', e.g. rate(5 minutes)")
    value_text, unit = parts
    if not (value_text.isascii() and value_text.isdigit()) or int(value_text) == 0:
        raise ValueError(f"rate({body}): the value must be a positive integer (got '{value_text}')")
    value = int(value_text)
    singular = unit.removesuffix("s")
    if singular not in _RATE_UNITS:
        raise ValueError(f"rate({body}): unknown unit '{unit}' (expected minute(s), hour(s) or day(s))")
    if value == 1 and unit != singular:
        raise ValueError(f"rate({body}): use the singular unit '{singular}' when the value is 1")
    if value > 1 and unit == singular:
        raise ValueError(f"rate({body}): use the plural unit '{singular}s' when the value is greater than 1")
    return value * _RATE_UNITS[singular]


def _parse_at(body: str, tz: ZoneInfo) -> datetime:
    if not _AT_FORMAT.fullmatch(body):
        raise ValueError(f"at({body}): expected at(yyyy-mm-ddThh:mm:ss)")
    try:
        wall = datetime.fromisoformat(body)
    except ValueError as exc:
        raise ValueError(f"at({body}): {exc}") from None
    # A wall time skipped by DST still fires once, at the same offset from the gap's start.
    return local_to_utc(wall, tz) or wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
