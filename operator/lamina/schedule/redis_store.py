"""Tick claims in Redis, for replicas on different machines.

Kept apart from :mod:`lamina.schedule.stores` so the rest of the package
stays stdlib-only; ``redis`` is imported only when a client is made from a URL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from lamina.schedule.stores import from_micros, to_micros

if TYPE_CHECKING:
    from redis.asyncio import Redis

# SET NX on the tick's own key is the claim; on success the per-schedule "last"
# key is raised to this tick (never lowered), all in one atomic script so that a
# reader never sees a claimed tick without its "last" being updated.
_CLAIM_SCRIPT = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  return 0
end
local current = redis.call('GET', KEYS[2])
if (not current) or tonumber(current) < tonumber(ARGV[3]) then
  redis.call('SET', KEYS[2], ARGV[3])
end
return 1
"""


def tick_key(key: str, fire_time: datetime) -> str:
    """``lamina:tick:<key>:<iso>`` with the fire time in UTC."""
    iso = fire_time.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return f"lamina:tick:{key}:{iso}"


class RedisTickStore:
    """Claims via ``SET NX`` with an expiry; ``owner`` is stored as the value for debugging."""

    def __init__(
        self, client: Redis, *, owner: str = "lamina", expiry: timedelta = timedelta(days=7)
    ) -> None:
        self._client = client
        self._owner = owner
        self._expiry_seconds = max(1, int(expiry.total_seconds()))

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisTickStore:
        from redis.asyncio import Redis

        return cls(Redis.from_url(url), **kwargs)

    async def last_fired(self, key: str) -> datetime | None:
        raw = await self._client.get(f"lamina:tick:{key}:last")
        return None if raw is None else from_micros(int(raw))

    async def claim(self, key: str, fire_time: datetime) -> bool:
        won = await self._client.eval(
            _CLAIM_SCRIPT,
            2,
            tick_key(key, fire_time),
            f"lamina:tick:{key}:last",
            self._owner,
            self._expiry_seconds,
            to_micros(fire_time),
        )
        return bool(won)

    async def close(self) -> None:
        await self._client.aclose()
