"""The async queue's own failures. What an invoker raises (throttled, not found) is in
:mod:`lamina.invocation.errors`, shared with the gateway and the event sources."""

from __future__ import annotations


class StoreError(Exception):
    """The durable async-event store failed; the caller must not acknowledge the event."""


class DestinationError(Exception):
    """A destination could not be delivered to; the record stays queued and is retried."""
