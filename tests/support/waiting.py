"""Polling for an outcome that another process produces (no fixed sleeps, no timing assertions)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(predicate: Callable[[], object], timeout: float = 60, interval: float = 0.05) -> None:
    """Return once `predicate()` is truthy; fail the test if it is not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout:.0f} s")
        time.sleep(interval)
