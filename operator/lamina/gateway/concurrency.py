"""In-flight accounting: reserved concurrency is a per-function cap, the rest share one pool.

Decided before an environment is touched, so a call over the cap costs nothing but a 429.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from lamina.environments.base import FunctionConfig
from lamina.invocation.errors import ACCOUNT_LIMIT, RESERVED_LIMIT, ThrottledError


def share(pool: int, parts: int, index: int) -> int:
    """Part ``index`` of ``pool`` split in ``parts`` that differ by one at most and add up to it."""
    parts = max(parts, 1)
    return pool // parts + (1 if index < pool % parts else 0)


class ConcurrencyLimiter:
    """Counts invocations in flight per function and in the unreserved pool."""

    def __init__(self, total_limit: int = 1000) -> None:
        self.total_limit = total_limit
        self._in_flight: dict[str, int] = defaultdict(int)
        self._unreserved_in_flight = 0
        self._reserved_sum = 0
        #: Gateway replicas that serve functions, and this one's place among them (their identities
        #: sorted): each takes its share of the unreserved pool, so together they use all of it and
        #: never more (one replica: all of it).
        self.replicas = 1
        self.replica_index = 0

    def set_functions(self, functions: list[FunctionConfig]) -> None:
        self._reserved_sum = sum(f.reserved_concurrency or 0 for f in functions)

    def set_replicas(self, replicas: int, index: int) -> None:
        """``replicas`` serve functions now, this one ``index``-th of them (lamina.cluster.leases)."""
        self.replicas, self.replica_index = max(replicas, 1), index

    @property
    def unreserved_limit(self) -> int:
        """This replica's share of the unreserved pool: an equal part, and one more for the first
        ``pool % replicas`` of them, so the shares add up to the pool (4 over 3 replicas: 2, 1, 1)."""
        pool = max(self.total_limit - self._reserved_sum, 0)
        return share(pool, self.replicas, self.replica_index)

    def in_flight(self, fn: FunctionConfig) -> int:
        return self._in_flight[fn.key]

    def busy(self, key: str) -> bool:
        """Whether a call of the function ``key`` ("namespace/name", any version) runs here now."""
        return self._in_flight.get(key, 0) > 0

    def try_acquire(self, fn: FunctionConfig) -> None:
        """Take one slot or raise ThrottledError naming why."""
        reserved = fn.reserved_concurrency
        if reserved is not None:
            if self._in_flight[fn.key] >= reserved:
                raise ThrottledError(RESERVED_LIMIT)
        elif self._unreserved_in_flight >= self.unreserved_limit:
            raise ThrottledError(ACCOUNT_LIMIT)
        else:
            self._unreserved_in_flight += 1
        self._in_flight[fn.key] += 1

    def release(self, fn: FunctionConfig) -> None:
        self._in_flight[fn.key] -= 1
        if fn.reserved_concurrency is None:
            self._unreserved_in_flight -= 1

    @contextmanager
    def slot(self, fn: FunctionConfig) -> Iterator[None]:
        self.try_acquire(fn)
        try:
            yield
        finally:
            self.release(fn)
