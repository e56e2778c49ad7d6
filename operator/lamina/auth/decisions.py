"""Authorization decisions, remembered briefly: a bounded LRU whose entries expire (allowed and denied
answers each with their own age), with concurrent misses for one question sharing one lookup."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class TtlCache(Generic[V]):
    """``await cache.get(key, compute)``: a fresh cached value, or ``compute()`` (once for all who ask
    meanwhile). ``ttl(value)`` says how long a value stays; ``max_size`` bounds the entries, the least
    recently used going first."""

    def __init__(
        self, ttl: Callable[[V], float], max_size: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.max_size = max_size
        self.clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()
        self._pending: dict[Hashable, asyncio.Future[V]] = {}
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, key: Hashable) -> V | None:
        """The cached value if fresh (no lookup started)."""
        found = self._entries.get(key)
        if found is None:
            return None
        expires, value = found
        if expires <= self.clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    async def get(self, key: Hashable, compute: Callable[[], Awaitable[V]]) -> V:
        found = self._entries.get(key)
        if found is not None and found[0] > self.clock():
            self._entries.move_to_end(key)
            self.hits += 1
            return found[1]
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        self.misses += 1
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            value = await compute()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            self._pending.pop(key, None)
        future.set_result(value)
        ttl = self.ttl(value)
        if ttl > 0:
            self._entries[key] = (self.clock() + ttl, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_size:
                self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self._entries.clear()
