"""What the dispatcher needs to know about a function, independent of where it comes from."""

from __future__ import annotations

from dataclasses import dataclass

from lamina.api import AsyncConfig, Endpoint

DEFAULT_MAX_RETRY_ATTEMPTS = 2
DEFAULT_MAX_EVENT_AGE_SECONDS = 21600


@dataclass(frozen=True, slots=True)
class EventInvokeConfig:
    """Lambda's "event invoke config" of one function, plus its reserved concurrency.

    Ages and delays are floats and not range-checked here, so tests can use sub-second values; the
    API models enforce Lambda's ranges (retries 0-2, age 60-21600 s) on real manifests.
    """

    maximum_retry_attempts: int = DEFAULT_MAX_RETRY_ATTEMPTS
    maximum_event_age_seconds: float = DEFAULT_MAX_EVENT_AGE_SECONDS
    on_success: Endpoint | None = None
    on_failure: Endpoint | None = None
    reserved_concurrency: int | None = None

    @classmethod
    def from_async_config(
        cls, config: AsyncConfig | None, reserved_concurrency: int | None = None
    ) -> EventInvokeConfig:
        """From a Function's ``spec.async`` (None: Lambda's defaults) and ``reservedConcurrency``."""
        if config is None:
            return cls(reserved_concurrency=reserved_concurrency)
        return cls(
            maximum_retry_attempts=config.maximum_retry_attempts,
            maximum_event_age_seconds=config.maximum_event_age_seconds,
            on_success=config.on_success,
            on_failure=config.on_failure,
            reserved_concurrency=reserved_concurrency,
        )
