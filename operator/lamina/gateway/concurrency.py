"""In-flight accounting: reserved concurrency is a per-function cap, the rest share one pool.

Decided before an environment is touched, so a call over the cap costs nothing but a 429.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from lamina.environments.base import FunctionConfig
from lamina.invocation.errors import ACCOUNT_LIMIT, RESERVED_LIMIT, ThrottledError


class ConcurrencyLimiter:
    """Counts invocations in flight per function and in the unreserved pool."""

    def __init__(self, total_limit: int = 1000) -> None:
        self.total_limit = total_limit
        self._in_flight: dict[str, int] = defaultdict(int)
        self._unreserved_in_flight = 0
        self._reserved_sum = 0
        #: Gateway replicas that serve functions: each takes an equal share of the unreserved pool, so
        #: together they never pass it (one replica: all of it).
        self.replicas = 1

    def set_functions(self, functions: list[FunctionConfig]) -> None:
        self._reserved_sum = sum(f.reserved_concurrency or 0 for f in functions)

    @property
    def unreserved_limit(self) -> int:
        return max(self.total_limit - self._reserved_sum, 0) // max(self.replicas, 1)

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
