"""EventBridge-style schedules: expression grammar, next-fire search, tick firing.

The Redis store lives in :mod:`lamina.schedule.redis_store` and is not imported
here, so importing this package never needs ``redis``.
"""

from lamina.schedule.event import event_id, scheduled_event
from lamina.schedule.expressions import AtSchedule, CronSchedule, RateSchedule, Schedule, parse_schedule
from lamina.schedule.stores import MemoryTickStore, SqliteTickStore, TickStore
from lamina.schedule.ticker import ScheduleTicker

__all__ = [
    "AtSchedule",
    "CronSchedule",
    "MemoryTickStore",
    "RateSchedule",
    "Schedule",
    "ScheduleTicker",
    "SqliteTickStore",
    "TickStore",
    "event_id",
    "parse_schedule",
    "scheduled_event",
]
