"""What the dispatcher needs to know about a function, independent of where it comes from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_RETRY_ATTEMPTS = 2
DEFAULT_MAX_EVENT_AGE_SECONDS = 21600


def endpoint_dict(endpoint: Any) -> dict[str, Any] | None:
    """An Endpoint in its wire form (``{"redis": {"url": ..., "stream": ...}}``), from a model or a dict."""
    if endpoint is None:
        return None
    if isinstance(endpoint, dict):
        return endpoint
    dump = getattr(endpoint, "model_dump", None)
    if dump is None:
        raise TypeError(f"not an Endpoint: {endpoint!r}")
    return dump(mode="json", by_alias=True, exclude_none=True)


@dataclass(frozen=True, slots=True)
class EventInvokeConfig:
    """Lambda's "event invoke config" of one function, plus its reserved concurrency.

    Ages and delays are floats and not range-checked here, so tests can use sub-second values; the
    API models enforce Lambda's ranges (retries 0-2, age 60-21600 s) on real manifests.
    """

    maximum_retry_attempts: int = DEFAULT_MAX_RETRY_ATTEMPTS
    maximum_event_age_seconds: float = DEFAULT_MAX_EVENT_AGE_SECONDS
    on_success: dict[str, Any] | None = None  # Endpoint, wire form
    on_failure: dict[str, Any] | None = None
    reserved_concurrency: int | None = None

    @classmethod
    def from_function(cls, fn: Any) -> EventInvokeConfig:
        """From a ``lamina.api.Function`` (or its spec)."""
        spec = getattr(fn, "spec", fn)
        return cls.from_async_config(spec.async_, spec.reserved_concurrency)

    @classmethod
    def from_async_config(cls, a: Any, reserved_concurrency: int | None = None) -> EventInvokeConfig:
        """From a ``lamina.api.AsyncConfig`` (None = Lambda's defaults)."""
        if a is None:
            return cls(reserved_concurrency=reserved_concurrency)
        return cls(
            maximum_retry_attempts=a.maximum_retry_attempts,
            maximum_event_age_seconds=a.maximum_event_age_seconds,
            on_success=endpoint_dict(a.on_success),
            on_failure=endpoint_dict(a.on_failure),
            reserved_concurrency=reserved_concurrency,
        )

    @classmethod
    def coerce(cls, value: Any) -> EventInvokeConfig | None:
        """Accept what a config lookup may return: None, this class, a ``lamina.api.Function`` or
        ``FunctionSpec``, or the gateway's ``FunctionConfig`` (``async_config``, ``reserved_concurrency``).
        """
        if value is None or isinstance(value, cls):
            return value
        if hasattr(value, "async_config"):
            return cls.from_async_config(value.async_config, getattr(value, "reserved_concurrency", None))
        return cls.from_function(value)
