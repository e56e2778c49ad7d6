"""Asynchronous (Event) invocation: a durable queue, Lambda's retry rules, and destinations."""

from .config import EventInvokeConfig
from .destinations import Destinations
from .dispatcher import AsyncDispatcher
from .errors import DestinationError, StoreError
from .records import EVENT_AGE_EXCEEDED, RETRIES_EXHAUSTED, SUCCESS, invocation_record
from .store import AsyncEventStore, QueuedEvent

__all__ = [
    "EVENT_AGE_EXCEEDED",
    "RETRIES_EXHAUSTED",
    "SUCCESS",
    "AsyncDispatcher",
    "AsyncEventStore",
    "DestinationError",
    "Destinations",
    "EventInvokeConfig",
    "QueuedEvent",
    "StoreError",
    "invocation_record",
]
