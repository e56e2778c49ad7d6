"""The async queue's own failures. What an invoker raises (throttled, not found) is in
:mod:`lamina.invocation.errors`, shared with the gateway and the event sources."""

from __future__ import annotations


class StoreError(Exception):
    """The durable async-event store failed; the caller must not acknowledge the event."""


class QueueFull(StoreError):
    """A function already has its quota of queued events (``max_per_function`` of the store); the
    event was not stored. The gateway answers 429 and the caller retries later."""

    def __init__(self, function: str, limit: int) -> None:
        super().__init__(
            f"the async queue of function {function} is full ({limit} events waiting); retry later"
        )
        self.function = function
        self.limit = limit


def base_function(function_key: str) -> str:
    """``namespace/name`` of a queued event's ``namespace/name[:qualifier]``: quotas are per function."""
    return function_key.partition(":")[0]


class DestinationError(Exception):
    """A destination could not be delivered to; the record stays queued and is retried."""
