"""How long a mapping worker waits: between polls, and before retrying after each kind of trouble."""

from __future__ import annotations

from dataclasses import dataclass, field

from lamina.eventsources.events import PAYLOAD_LIMIT


@dataclass(slots=True)
class Backoff:
    """Exponential backoff: ``initial * factor**n`` capped at ``maximum`` (seconds)."""

    initial: float = 1.0
    maximum: float = 60.0
    factor: float = 2.0

    def delay(self, attempt: int) -> float:
        return min(self.maximum, self.initial * self.factor ** max(0, attempt))


@dataclass(slots=True)
class Timing:
    """How long the worker waits; tests shrink these, production keeps the defaults."""

    poll_wait: float = 1.0  # longest wait for records in one fetch (also how fast a stop is noticed)
    function_error: Backoff = field(default_factory=lambda: Backoff(1.0, 60.0))
    throttle: Backoff = field(default_factory=lambda: Backoff(1.0, 60.0))
    broker: Backoff = field(default_factory=lambda: Backoff(0.5, 30.0))
    payload_limit: int = PAYLOAD_LIMIT
