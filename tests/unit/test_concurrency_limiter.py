"""The gateway's in-flight accounting: reservations are caps and floors; replicas share the rest."""

from __future__ import annotations

import pytest

from lamina.environments.base import FunctionConfig
from lamina.gateway.concurrency import ConcurrencyLimiter, share
from lamina.invocation.errors import ThrottledError


def test_replicas_take_equal_shares_of_the_unreserved_pool_and_reservations_stay_whole() -> None:
    reserved = FunctionConfig(name="r", reserved_concurrency=3)
    free = FunctionConfig(name="f")
    limiter = ConcurrencyLimiter(total_limit=11)
    limiter.set_functions([reserved, free])
    assert limiter.unreserved_limit == 8
    limiter.set_replicas(2, 0)  # two replicas serve functions: 4 each, 8 together
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


@pytest.mark.parametrize("pool", [0, 1, 4, 7, 100, 1000])
@pytest.mark.parametrize("replicas", [1, 2, 3, 7])
def test_the_shares_of_the_replicas_add_up_to_the_pool_and_differ_by_one_at_most(
    pool: int, replicas: int
) -> None:
    shares = [share(pool, replicas, i) for i in range(replicas)]
    assert sum(shares) == pool  # none of the pool lost to rounding, none of it counted twice
    assert max(shares) - min(shares) <= 1


def test_each_replica_takes_the_share_of_its_place() -> None:
    limiter = ConcurrencyLimiter(total_limit=4)  # 4 over 3 replicas: 2, 1, 1 (4 // 3 would leave 1 unused)
    limiter.set_functions([])
    taken = []
    for index in range(3):
        limiter.set_replicas(3, index)
        taken.append(limiter.unreserved_limit)
    assert taken == [2, 1, 1]
