"""Errors raised by an :data:`Invoker` that the async dispatcher reacts to.

The shared contract (docs/contracts.md) places ``ThrottledError`` and ``FunctionNotFound`` in
``lamina.gateway.errors``. Until that module exists these stand-ins are used; the dispatcher
catches both families (see :func:`invoker_error_classes`), so either one works.
"""

from __future__ import annotations


class ThrottledError(Exception):
    """The function is at its reserved concurrency (Lambda's 429 TooManyRequestsException)."""

    def __init__(
        self,
        message: str = "Rate Exceeded.",
        reason: str = "ReservedFunctionConcurrentInvocationLimitExceeded",
    ):
        super().__init__(message)
        self.reason = reason


class FunctionNotFound(Exception):
    """The function does not exist (any more)."""


class StoreError(Exception):
    """The durable async-event store failed; the caller must not acknowledge the event."""


class DestinationError(Exception):
    """A destination could not be delivered to; the record stays queued and is retried."""


def invoker_error_classes() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(throttled classes, not-found classes): ours plus the gateway's when that module exists."""
    throttled: list[type[BaseException]] = [ThrottledError]
    not_found: list[type[BaseException]] = [FunctionNotFound]
    try:  # imported lazily: the gateway imports this package, so a top-level import could be circular
        from lamina.gateway import errors as gw  # type: ignore[attr-defined]
    except Exception:  # not written yet, or partially initialised
        gw = None
    if gw is not None:
        for name, bucket in (("ThrottledError", throttled), ("FunctionNotFound", not_found)):
            cls = getattr(gw, name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException) and cls not in bucket:
                bucket.append(cls)
    return tuple(throttled), tuple(not_found)
