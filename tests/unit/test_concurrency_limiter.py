"""The gateway's in-flight accounting: reservations are caps and floors; replicas share the rest."""

from __future__ import annotations

import pytest

from lamina.environments.base import FunctionConfig
from lamina.gateway.concurrency import ConcurrencyLimiter
from lamina.invocation.errors import ThrottledError


def test_replicas_take_equal_shares_of_the_unreserved_pool_and_reservations_stay_whole() -> None:
    reserved = FunctionConfig(name="r", reserved_concurrency=3)
    free = FunctionConfig(name="f")
    limiter = ConcurrencyLimiter(total_limit=11)
    limiter.set_functions([reserved, free])
    assert limiter.unreserved_limit == 8
    limiter.replicas = 2  # two replicas serve functions: 4 each, 8 together
    assert limiter.unreserved_limit == 4
    for _ in range(4):
        limiter.try_acquire(free)
    with pytest.raises(ThrottledError) as throttled:
        limiter.try_acquire(free)
    assert throttled.value.reason == "ConcurrentInvocationLimitExceeded"
    for _ in range(3):  # a reservation is served whole by the one replica that holds the function
        limiter.try_acquire(reserved)
    with pytest.raises(ThrottledError):
        limiter.try_acquire(reserved)
