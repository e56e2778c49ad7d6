"""Async-event store on Redis Streams, shared by every gateway replica of a cluster.

Layout (all keys share one hash tag so the Lua scripts stay in one slot on Redis Cluster):

* ``<prefix>:ev:<id>``  HASH  the event (function, payload, counters, last_error, pending_record, trace,
  and ``entry``: the id of its stream entry while it is ready or leased).
* ``<prefix>:ready``    STREAM  one entry ``{id: <event id>}`` per event that is due now, read
  through the consumer group ``lamina-async``; an entry read and not yet acknowledged is leased.
* ``<prefix>:leases``   ZSET  leased event ids scored by the end of their lease (epoch s). A lease
  past its end is taken over by the next ``claim_due`` (XCLAIM moves the entry to the new consumer).
  The deadline is kept per event rather than left to XAUTOCLAIM's idle threshold, because that
  threshold is chosen by whoever reclaims, not by the holder that set the lease.
* ``<prefix>:delayed``  ZSET  events waiting for a retry, scored by their next attempt time (epoch s);
  ``claim_due`` moves the due ones into the stream.
* ``<prefix>:counts``   HASH  events queued per function (``namespace/name``), kept by the enqueue and
  complete scripts, for the per-function quota (``max_per_function``).

Every state change is one Lua script, so it is atomic. Writes that arrive together travel in one
pipeline: one round trip and, with ``appendfsync always``, one fsync for all of them. There are two
such lanes, each with one pipeline in flight on its own connection: the gateway's enqueues, and the
dispatcher's claims, completions, reschedules and lease renewals. A claim does not wait behind a
pipeline of enqueues (nor the reverse), and Redis runs one lane's scripts while this process works
on the other's replies. Concurrent enqueues (and concurrent completions) are merged into one script
run whose Redis commands are batched too: one XACK, XDEL, ZREM, DEL and counter change for all the
completions of a pipeline.

Durability: ``enqueue`` returns once Redis has accepted the write. Run Redis with
``appendonly yes`` and ``appendfsync always`` for the 202 to mean "on disk" (``everysec`` can lose up
to a second of accepted events on a crash of the Redis host). With replicas, pass
``wait_replicas=N`` to wait for N replicas to have the write before ``enqueue`` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from .errors import QueueFull, StoreError, base_function
from .store import QueuedEvent

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "{lamina:async}"
#: Most writes sent in one pipeline (a round trip; with appendfsync always, one fsync).
MAX_PIPELINE = 256
GROUP = "lamina-async"

_ENQUEUE = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local limit = tonumber(ARGV[13])
if limit > 0 and tonumber(redis.call('HGET', KEYS[4], ARGV[12]) or '0') >= limit then return -1 end
redis.call('HINCRBY', KEYS[4], ARGV[12], 1)
redis.call('HSET', KEYS[3], 'function', ARGV[3], 'payload', ARGV[4], 'enqueued_at', ARGV[5],
           'attempts', ARGV[6], 'throttles', ARGV[7], 'next_attempt_at', ARGV[8])
if ARGV[9] ~= '' then redis.call('HSET', KEYS[3], 'last_error', string.sub(ARGV[9], 2)) end
if ARGV[10] ~= '' then redis.call('HSET', KEYS[3], 'pending_record', string.sub(ARGV[10], 2)) end
if ARGV[11] ~= '' then redis.call('HSET', KEYS[3], 'trace', string.sub(ARGV[11], 2)) end
if tonumber(ARGV[8]) <= tonumber(ARGV[1]) then
  local eid = redis.call('XADD', KEYS[1], '*', 'id', ARGV[2])
  redis.call('HSET', KEYS[3], 'entry', eid)
else
  redis.call('ZADD', KEYS[2], ARGV[8], ARGV[2])
end
return 1
"""

_CLAIM = """
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local until_ = ARGV[3]
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, limit)
if #due > 0 then redis.call('ZREM', KEYS[2], unpack(due)) end
for _, id in ipairs(due) do
  local k = ARGV[6] .. id
  if redis.call('EXISTS', k) == 1 then
    local eid = redis.call('XADD', KEYS[1], '*', 'id', id)
    redis.call('HSET', k, 'entry', eid)
  end
end
local out = {}
local leased = {}  -- ZADD arguments: one lease deadline per event handed out
-- leases past their time: take the entry over (XCLAIM moves it in the group's pending list)
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1], 'LIMIT', 0, limit)
for _, id in ipairs(expired) do
  local k = ARGV[6] .. id
  local eid = redis.call('HGET', k, 'entry')
  if eid then
    redis.call('XCLAIM', KEYS[1], ARGV[4], ARGV[5], 0, eid, 'JUSTID')
    leased[#leased + 1] = until_
    leased[#leased + 1] = id
    out[#out + 1] = {id, redis.call('HGETALL', k)}
  else
    redis.call('ZREM', KEYS[3], id)
  end
end
if #out < limit then
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[4], ARGV[5], 'COUNT', limit - #out,
                       'STREAMS', KEYS[1], '>')
  if r then
    for _, e in ipairs(r[1][2]) do
      local eid = e[1]
      local fields = e[2]
      local id = false
      for i = 1, #fields, 2 do if fields[i] == 'id' then id = fields[i + 1] end end
      local h = id and redis.call('HGETALL', ARGV[6] .. id) or {}
      local current = false
      for i = 1, #h, 2 do if h[i] == 'entry' then current = h[i + 1] == eid end end
      if current then
        leased[#leased + 1] = until_
        leased[#leased + 1] = id
        out[#out + 1] = {id, h}
      else
        -- completed or rescheduled before this entry was read: drop the stale entry
        redis.call('XACK', KEYS[1], ARGV[4], eid)
        redis.call('XDEL', KEYS[1], eid)
      end
    end
  end
end
if #leased > 0 then redis.call('ZADD', KEYS[3], unpack(leased)) end
return out
"""

_COMPLETE = """
local fn = redis.call('HGET', KEYS[3], 'function')
if fn then
  local base = string.match(fn, '^[^:]*')
  if redis.call('HINCRBY', KEYS[5], base, -1) <= 0 then redis.call('HDEL', KEYS[5], base) end
end
local eid = redis.call('HGET', KEYS[3], 'entry')
if eid then
  redis.call('XACK', KEYS[1], ARGV[1], eid)
  redis.call('XDEL', KEYS[1], eid)
end
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[2])
return redis.call('DEL', KEYS[3])
"""

# The same two changes for many events in one call: concurrent enqueues and completions are merged
# into one script run per pipeline (fewer commands for the client to build and Redis to parse).
_ENQUEUE_MANY = """
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[3])
local out = {}
local queued, added = {}, {}  -- per function: its count, read once; what this call adds to it
for i = 4, #ARGV, 11 do
  local id = ARGV[i]
  local k = ARGV[2] .. id
  local base = ARGV[i + 10]
  if redis.call('EXISTS', k) == 1 then
    out[#out + 1] = 0
  else
    local n = queued[base]
    if n == nil then
      n = tonumber(redis.call('HGET', KEYS[3], base) or '0')
      added[base] = 0
    end
    if limit > 0 and n >= limit then
      queued[base] = n
      out[#out + 1] = -1
    else
      queued[base] = n + 1
      added[base] = added[base] + 1
      local h = {'function', ARGV[i + 1], 'payload', ARGV[i + 2], 'enqueued_at', ARGV[i + 3],
                 'attempts', ARGV[i + 4], 'throttles', ARGV[i + 5], 'next_attempt_at', ARGV[i + 6]}
      if ARGV[i + 7] ~= '' then h[#h + 1] = 'last_error'; h[#h + 1] = string.sub(ARGV[i + 7], 2) end
      if ARGV[i + 8] ~= '' then h[#h + 1] = 'pending_record'; h[#h + 1] = string.sub(ARGV[i + 8], 2) end
      if ARGV[i + 9] ~= '' then h[#h + 1] = 'trace'; h[#h + 1] = string.sub(ARGV[i + 9], 2) end
      if tonumber(ARGV[i + 6]) <= now then
        h[#h + 1] = 'entry'
        h[#h + 1] = redis.call('XADD', KEYS[1], '*', 'id', id)
      else
        redis.call('ZADD', KEYS[2], ARGV[i + 6], id)
      end
      redis.call('HSET', k, unpack(h))
      out[#out + 1] = 1
    end
  end
end
for base, n in pairs(added) do
  if n > 0 then redis.call('HINCRBY', KEYS[3], base, n) end
end
return out
"""

# Completions of many events: one XACK, XDEL, ZREM, DEL and counter change for all of them.
_COMPLETE_MANY = """
local out, seen, keys, ids, eids, gone = {}, {}, {}, {}, {}, {}
for i = 3, #ARGV do
  local id = ARGV[i]
  if seen[id] then
    out[#out + 1] = 0
  else
    seen[id] = true
    ids[#ids + 1] = id
    local k = ARGV[2] .. id
    local h = redis.call('HMGET', k, 'function', 'entry')
    if h[1] then
      local base = string.match(h[1], '^[^:]*')
      gone[base] = (gone[base] or 0) + 1
      keys[#keys + 1] = k
      out[#out + 1] = 1
    else
      out[#out + 1] = 0
    end
    if h[2] then eids[#eids + 1] = h[2] end
  end
end
if #eids > 0 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(eids))
  redis.call('XDEL', KEYS[1], unpack(eids))
end
redis.call('ZREM', KEYS[2], unpack(ids))
redis.call('ZREM', KEYS[3], unpack(ids))
if #keys > 0 then redis.call('DEL', unpack(keys)) end
for base, n in pairs(gone) do
  if redis.call('HINCRBY', KEYS[4], base, -n) <= 0 then redis.call('HDEL', KEYS[4], base) end
end
return out
"""

_RESCHEDULE = """
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
local eid = redis.call('HGET', KEYS[3], 'entry')
if eid then
  redis.call('XACK', KEYS[1], ARGV[1], eid)
  redis.call('XDEL', KEYS[1], eid)
  redis.call('HDEL', KEYS[3], 'entry')
end
redis.call('ZREM', KEYS[4], ARGV[2])
redis.call('HSET', KEYS[3], 'next_attempt_at', ARGV[3], 'attempts', ARGV[4])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[3], 'last_error', string.sub(ARGV[5], 2))
else redis.call('HDEL', KEYS[3], 'last_error') end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[3], 'throttles', ARGV[6]) end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[3], 'pending_record', string.sub(ARGV[7], 2)) end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
return 1
"""

_TOUCH = """
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[i]) end
return 1
"""


def _opt(value: str | None) -> str:
    """Optional strings travel as '' (absent) or '=' + value (present, possibly empty)."""
    return "" if value is None else "=" + value


def _num(value: float) -> str:
    return repr(float(value))


def _pack(parts: list[bytes], *args: Any) -> None:
    """Append one command in Redis's wire protocol (RESP) to ``parts``.

    Built here in one pass: redis-py's packer copies its growing buffer once per argument, which for
    a pipeline of enqueues (11 arguments per event) cost this process more CPU than Redis spent
    running the scripts.
    """
    parts.append(b"*%d\r\n" % len(args))
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        elif not isinstance(arg, bytes):
            raise TypeError(f"cannot send {type(arg).__name__} to Redis: {arg!r}")
        parts.append(b"$%d\r\n" % len(arg))
        parts.append(arg)
        parts.append(b"\r\n")


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def _event_from_hash(id: str, h: dict[bytes, bytes]) -> QueuedEvent:
    get = h.get
    return QueuedEvent(
        id=id,
        function=get(b"function", b"").decode(),
        payload=get(b"payload", b""),
        enqueued_at=float(get(b"enqueued_at") or 0),
        attempts=int(get(b"attempts") or 0),
        throttles=int(get(b"throttles") or 0),
        next_attempt_at=float(get(b"next_attempt_at") or 0),
        last_error=_text(get(b"last_error")),
        pending_record=_text(get(b"pending_record")),
        trace=_text(get(b"trace")),
    )


class _Lane:
    """Scripts waiting for the next pipeline of one writer, and the task that sends them."""

    __slots__ = ("flusher", "name", "queued")

    def __init__(self, name: str) -> None:
        self.name = name
        self.queued: list[tuple[Any, list[str], list[Any], asyncio.Future[Any]]] = []
        self.flusher: asyncio.Task[None] | None = None


class RedisEventStore:
    """:class:`~lamina.asyncinvoke.store.AsyncEventStore` on Redis Streams (see module docs)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        prefix: str = DEFAULT_PREFIX,
        consumer: str | None = None,
        clock: Callable[[], float] = time.time,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
        max_connections: int = 32,
        max_per_function: int | None = None,
    ) -> None:
        if client is None:
            if url is None:
                raise ValueError("RedisEventStore needs a url or a client")
            import redis.asyncio as aioredis

            pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=30)
            client = aioredis.Redis(connection_pool=pool, decode_responses=False)
            self._owns_client = True
        else:
            self._owns_client = False
        self._r = client
        self.prefix = prefix
        self.ready_key = f"{prefix}:ready"
        self.delayed_key = f"{prefix}:delayed"
        self.leases_key = f"{prefix}:leases"
        self.counts_key = f"{prefix}:counts"
        #: Events one function may have queued at once (None or 0: no quota).
        self.max_per_function = max_per_function
        self.event_prefix = f"{prefix}:ev:"
        self.consumer = consumer or f"c-{uuid.uuid4().hex[:12]}"
        self._clock = clock
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = wait_timeout_ms
        self._ready = False
        self._open_lock = asyncio.Lock()
        # Two lanes of pipelined writes, each on its own connection with one pipeline in flight: the
        # gateway's enqueues, and the dispatcher's claims, completions and reschedules. Neither waits
        # behind the other's round trip, and Redis works on one lane's pipeline while this process
        # prepares the other's.
        self._enqueues = _Lane("redis-store-enqueues")
        self._dispatch = _Lane("redis-store-dispatch")
        self._enqueue = client.register_script(_ENQUEUE)
        self._claim = client.register_script(_CLAIM)
        self._complete = client.register_script(_COMPLETE)
        self._reschedule = client.register_script(_RESCHEDULE)
        self._touch = client.register_script(_TOUCH)
        self._enqueue_many = client.register_script(_ENQUEUE_MANY)
        self._complete_many = client.register_script(_COMPLETE_MANY)

    def _ev(self, id: str) -> str:
        return self.event_prefix + id

    async def open(self) -> None:
        if self._ready:
            return
        async with self._open_lock:
            if not self._ready:
                await self._open()

    async def _open(self) -> None:
        try:
            await self._r.xgroup_create(self.ready_key, GROUP, id="0", mkstream=True)
        except Exception as e:
            if "BUSYGROUP" not in str(e):
                raise StoreError(f"cannot create consumer group on {self.ready_key}: {e}") from e
        try:
            conf = await self._r.config_get("appendonly")
            if conf.get(b"appendonly", conf.get("appendonly")) in (b"no", "no"):
                log.warning(
                    "Redis has appendonly=no: accepted async events are lost if Redis restarts; "
                    "run it with appendonly yes and appendfsync always"
                )
        except Exception:  # CONFIG is often disabled on managed Redis; nothing to check then
            pass
        self._ready = True

    async def _batched(self, lane: _Lane, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run a script together with the others queued on its lane meanwhile: one pipeline, one
        round trip.

        Writes arriving while the lane's pipeline is in flight wait for the next one, so concurrent
        enqueues (or completions and the next claim) share round trips, and (with ``appendfsync
        always``) Redis's fsync of one event-loop cycle: group commit. Each caller still gets its own
        result or error.
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        lane.queued.append((script, keys, args, future))
        if lane.flusher is None or lane.flusher.done():
            lane.flusher = asyncio.create_task(self._flush(lane), name=lane.name)
        return await future

    async def _flush(self, lane: _Lane) -> None:
        while lane.queued:
            batch, lane.queued = lane.queued[:MAX_PIPELINE], lane.queued[MAX_PIPELINE:]
            if not self._ready:
                try:
                    await self.open()
                except Exception as e:
                    self._settle(batch, None, StoreError(str(e)))
                    continue
            enqueues = [item for item in batch if item[0] is self._enqueue]
            completes = [item for item in batch if item[0] is self._complete]
            others = [
                item for item in batch if item[0] is not self._enqueue and item[0] is not self._complete
            ]
            # Each script is sent as EVALSHA on its own: a script registered on the pipeline would
            # make redis-py ask SCRIPT EXISTS first, a second round trip per pipeline. A server that
            # does not know a script (restarted, SCRIPT FLUSH) answers NOSCRIPT without running it;
            # those calls are run again below, loading the script first.
            calls: list[tuple[Any, list[str], list[Any]]] = []
            if enqueues:
                # The clock now, not at the first enqueue: an event is due when its time is before
                # this, and events queued after the first would otherwise be delayed (ZADD), then
                # moved to the stream by the next claim, for nothing.
                args = [_num(self._clock()), self.event_prefix, int(self.max_per_function or 0)]
                for _, _, one, _ in enqueues:
                    args += one[1:12]  # the single script's arguments past the clock, up to the function
                calls.append((self._enqueue_many, [self.ready_key, self.delayed_key, self.counts_key], args))
            if completes:
                ids = [one[1] for _, _, one, _ in completes]
                calls.append(
                    (
                        self._complete_many,
                        [self.ready_key, self.delayed_key, self.leases_key, self.counts_key],
                        [GROUP, self.event_prefix, *ids],
                    )
                )
            calls += [(script, keys, args) for script, keys, args, _ in others]
            try:
                replies = await self._round_trip(calls)
                for index, reply in enumerate(replies):
                    if isinstance(reply, NoScriptError):
                        script, keys, args = calls[index]
                        try:
                            replies[index] = await script(keys=keys, args=args)  # loads it, runs it
                        except Exception as e:
                            replies[index] = e
            except Exception as e:
                self._settle(batch, None, StoreError(str(e)))
                continue
            # One result per queued call, in the order of ``batch``.
            position = 0
            per_call: dict[int, Any] = {}
            for group in (enqueues, completes):
                if group:
                    reply = replies[position]
                    position += 1
                    for index, item in enumerate(group):
                        per_call[id(item)] = reply if isinstance(reply, Exception) else reply[index]
            for item in others:
                per_call[id(item)] = replies[position]
                position += 1
            results = [per_call[id(item)] for item in batch]
            if any(isinstance(r, Exception) and "NOGROUP" in str(r) for r in results):
                # The stream was deleted under us (FLUSHALL, failover): recreate it, run those alone.
                self._ready = False
            for item, result in zip(batch, results, strict=True):
                script, keys, args, future = item
                if future.done():
                    continue
                if isinstance(result, Exception) and "NOGROUP" in str(result):
                    try:
                        future.set_result(await self._script(script, keys, args))
                    except Exception as e:
                        future.set_exception(e)
                elif isinstance(result, Exception):
                    future.set_exception(StoreError(str(result)))
                else:
                    future.set_result(result)

    async def _round_trip(self, calls: list[tuple[Any, list[str], list[Any]]]) -> list[Any]:
        """Send the scripts as EVALSHAs in one write on one connection of the pool; their replies,
        an error reply as its exception. Retried on a new connection as redis-py retries a pipeline
        (every script here is safe to run again: an enqueue of a known id changes nothing)."""
        parts: list[bytes] = []
        for script, keys, args in calls:
            _pack(parts, b"EVALSHA", script.sha, len(keys), *keys, *args)
        pool = self._r.connection_pool
        conn = await pool.get_connection()

        async def attempt() -> list[Any]:
            await conn.send_packed_command(parts, check_health=False)
            replies: list[Any] = []
            for _ in calls:
                try:
                    replies.append(await conn.read_response())
                except ResponseError as e:
                    replies.append(e)
            return replies

        async def failed(_: Exception) -> None:
            await conn.disconnect()

        try:
            replies: list[Any] = await conn.retry.call_with_retry(attempt, failed)
            return replies
        except BaseException:
            await conn.disconnect()  # replies half read would put the next user out of step
            raise
        finally:
            await pool.release(conn)

    @staticmethod
    def _settle(batch: list[Any], result: Any, error: BaseException | None) -> None:
        for *_, future in batch:
            if not future.done():
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(result)

    async def _script(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        if not self._ready:
            await self.open()
        try:
            return await script(keys=keys, args=args)
        except Exception as e:
            if "NOGROUP" in str(e):  # the stream was deleted under us (FLUSHALL, failover): recreate
                self._ready = False
                await self.open()
                return await script(keys=keys, args=args)
            raise StoreError(str(e)) from e

    async def enqueue(self, event: QueuedEvent) -> bool:
        added = await self._batched(
            self._enqueues,
            self._enqueue,
            [self.ready_key, self.delayed_key, self._ev(event.id), self.counts_key],
            [
                _num(self._clock()),
                event.id,
                event.function,
                event.payload,
                _num(event.enqueued_at),
                event.attempts,
                event.throttles,
                _num(event.next_attempt_at or event.enqueued_at),
                _opt(event.last_error),
                _opt(event.pending_record),
                _opt(event.trace),
                base_function(event.function),
                int(self.max_per_function or 0),
            ],
        )
        if int(added) < 0:
            raise QueueFull(base_function(event.function), int(self.max_per_function or 0))
        if self._wait_replicas > 0:
            acked = await self._r.execute_command("WAIT", self._wait_replicas, self._wait_timeout_ms)
            if int(acked) < self._wait_replicas:
                raise StoreError(f"only {acked} of {self._wait_replicas} Redis replicas confirmed the event")
        return bool(added)

    async def claim_due(self, limit: int, lease_seconds: float) -> list[QueuedEvent]:
        if limit <= 0:
            return []
        now = self._clock()
        # On the dispatcher's lane: the claim shares a round trip (and, with appendfsync always, an
        # fsync) with the completions of the moment, and does not wait behind the gateway's enqueues.
        rows = await self._batched(
            self._dispatch,
            self._claim,
            [self.ready_key, self.delayed_key, self.leases_key],
            [
                _num(now),
                int(limit),
                _num(now + lease_seconds),
                GROUP,
                self.consumer,
                self.event_prefix,
            ],
        )
        return [
            _event_from_hash(id_raw.decode(), dict(zip(flat[::2], flat[1::2], strict=True)))
            for id_raw, flat in rows
        ]

    async def touch(self, ids: Iterable[str], lease_seconds: float) -> None:
        ids = list(ids)
        if ids:
            await self._batched(
                self._dispatch, self._touch, [self.leases_key], [_num(self._clock() + lease_seconds), *ids]
            )

    async def complete(self, id: str) -> None:
        await self._batched(
            self._dispatch,
            self._complete,
            [self.ready_key, self.delayed_key, self._ev(id), self.leases_key, self.counts_key],
            [GROUP, id],
        )

    async def reschedule(
        self,
        id: str,
        next_attempt_at: float,
        attempts: int,
        last_error: str | None,
        *,
        throttles: int | None = None,
        pending_record: str | None = None,
    ) -> None:
        await self._batched(
            self._dispatch,
            self._reschedule,
            [self.ready_key, self.delayed_key, self._ev(id), self.leases_key],
            [
                GROUP,
                id,
                _num(next_attempt_at),
                int(attempts),
                _opt(last_error),
                "" if throttles is None else int(throttles),
                _opt(pending_record),
            ],
        )

    async def pending_count(self) -> int:
        if not self._ready:
            await self.open()
        async with self._r.pipeline(transaction=True) as p:
            p.xlen(self.ready_key)
            p.zcard(self.delayed_key)
            ready, delayed = await p.execute()
        return int(ready) + int(delayed)

    async def get(self, id: str) -> QueuedEvent | None:
        h = await self._r.hgetall(self._ev(id))
        return _event_from_hash(id, h) if h else None

    async def close(self) -> None:
        for lane in (self._enqueues, self._dispatch):
            flusher = lane.flusher
            if flusher is not None and not flusher.done():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(flusher), 10)
        if self._owns_client:
            await self._r.aclose()
