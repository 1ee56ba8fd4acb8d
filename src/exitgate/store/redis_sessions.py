"""`SessionStore` on Redis: sticky sessions shared by every gateway instance on one server.

Each operation of the contract in `store/sessions.py` is ONE Lua script, so two instances racing
on a session id see one winner, exactly as two requests do in one process.

Keys (all under the configured prefix, default `eg:`):
- `{p}s:{package}:{session}`: a hash `r` rules, `n` node, `c` created, `a` assigned,
  `u` last used, `q` requests, `k` requests on `n` since `a`. Times are epoch microseconds as
  integers (a Lua double holds them exactly). The key expires `idle_timeout` after its last
  touch (`PEXPIRE`, relative, in the same script as the write), so an abandoned session costs
  nothing and a crashed instance leaves nothing behind.
- `{p}sp:{package}`: a sorted set of the package's session ids scored by expiry, for `list`.
- `{p}sx`: a sorted set of `package\\x00session` scored by expiry, for `expire`.

Liveness is also checked against the caller's `now` inside every script (as the memory store
does), so the contract is exact under an injected clock; with the Redis-synced clock of
`RedisClock` the two agree. Expiry is relative (`PEXPIRE`), never `PEXPIREAT` from a clock
that may not be Redis's.

`release` is synchronous (it runs in `finally`): it queues the script and a background task
sends it; every other operation first waits for queued releases, so one instance always reads
its own writes in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from exitgate.store.sessions import (
    NO_TIMINGS,
    SessionKey,
    SessionRecord,
    SessionStoreDown,
    SessionTimings,
)
from exitgate.tasks import spawn

log = logging.getLogger("exitgate.sessions")

US = 1_000_000
DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError, TimeoutError)

# Shared prologue: KEYS[1] record hash, KEYS[2] package zset, KEYS[3] global zset;
# ARGV[1] now (µs), ARGV[2] default idle (µs), ARGV[3] member of the global zset, ARGV[4]
# session id. Fields: r n c a u q k, then the session's own timings (legacy usernames):
# I idle (µs), L lifetime (µs), H hold (s); "" when not set.
# `live()` deletes an expired record (what the TTL will do anyway) and returns its fields.
_EXPIRY = """
local now = tonumber(ARGV[1])
local idle = tonumber(ARGV[2])
local function expiry(f)
  local i = idle
  if f[8] and f[8] ~= '' then i = tonumber(f[8]) end
  local e = tonumber(f[5]) + i
  if f[9] and f[9] ~= '' then
    local l = tonumber(f[3]) + tonumber(f[9])
    if l < e then e = l end
  end
  return e
end
"""
_PROLOGUE = _EXPIRY + """
local function live()
  local f = redis.call('HMGET', KEYS[1], 'r', 'n', 'c', 'a', 'u', 'q', 'k', 'I', 'L', 'H')
  if not f[1] then return nil end
  if now >= expiry(f) then
    redis.call('DEL', KEYS[1])
    redis.call('ZREM', KEYS[2], ARGV[4])
    redis.call('ZREM', KEYS[3], ARGV[3])
    return nil
  end
  return f
end
local function touch(f)
  local e = expiry(f)
  local ttl = math.ceil((e - now) / 1000)
  if ttl < 1 then ttl = 1 end
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('ZADD', KEYS[2], string.format('%.0f', e), ARGV[4])
  if redis.call('PTTL', KEYS[2]) < ttl + 1000 then
    redis.call('PEXPIRE', KEYS[2], ttl + 1000)
  end
  redis.call('ZADD', KEYS[3], string.format('%.0f', e), ARGV[3])
end
local function put(f)
  redis.call('HSET', KEYS[1], 'r', f[1], 'n', f[2], 'c', f[3], 'a', f[4], 'u', f[5],
    'q', f[6], 'k', f[7], 'I', f[8], 'L', f[9], 'H', f[10])
end
"""

_GET = _PROLOGUE + "return live()"

# ARGV[5] rules, ARGV[6] node, ARGV[7..9] timings I L H for a record this call creates
_CLAIM = _PROLOGUE + """
local f = live()
if f then return f end
f = {ARGV[5], ARGV[6], ARGV[1], ARGV[1], ARGV[1], '0', '0', ARGV[7], ARGV[8], ARGV[9]}
put(f)
touch(f)
return f
"""

# ARGV[5] rules, ARGV[6] expected node, ARGV[7] new node
_REBIND = _PROLOGUE + """
local f = live()
if not f then return nil end
if f[1] ~= ARGV[5] or f[2] ~= ARGV[6] or ARGV[6] == ARGV[7] then return f end
redis.call('HSET', KEYS[1], 'n', ARGV[7], 'a', ARGV[1], 'k', 0)
f[2] = ARGV[7]; f[4] = ARGV[1]; f[7] = '0'
return f
"""

# ARGV[5] rules, ARGV[6] node, ARGV[7..9] timings. Returns nil (and writes nothing) when the
# rules differ.
_RECORD = _PROLOGUE + """
local f = live()
if not f then
  f = {ARGV[5], ARGV[6], ARGV[1], ARGV[1], ARGV[1], '1', '1', ARGV[7], ARGV[8], ARGV[9]}
  put(f)
  touch(f)
  return f
end
if f[1] ~= ARGV[5] then return nil end
local q = tonumber(f[6]) + 1
local k = tonumber(f[7])
if f[2] == ARGV[6] then k = k + 1 end
redis.call('HSET', KEYS[1], 'u', ARGV[1], 'q', q, 'k', k)
f[5] = ARGV[1]; f[6] = tostring(q); f[7] = tostring(k)
touch(f)
return f
"""

# ARGV[5] node: drop the record only while it is provisional and on that node
_RELEASE = _PROLOGUE + """
local f = redis.call('HMGET', KEYS[1], 'n', 'q')
if f[1] == ARGV[5] and f[2] == '0' then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[4])
  redis.call('ZREM', KEYS[3], ARGV[3])
  return 1
end
return 0
"""

_DELETE = """
local n = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[2])
return n
"""

# KEYS[1] package zset; ARGV[1] now, ARGV[2] idle, ARGV[3] record key prefix.
_LIST = _EXPIRY + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for _, sid in ipairs(ids) do
  local f = redis.call('HMGET', ARGV[3] .. sid, 'r', 'n', 'c', 'a', 'u', 'q', 'k', 'I', 'L', 'H')
  if f[1] and now < expiry(f) and f[6] ~= '0' then
    table.insert(out, sid)
    for i = 1, 10 do table.insert(out, f[i] or '') end
  end
end
return out
"""

# KEYS[1] global zset; ARGV[1] now, ARGV[2] idle, ARGV[3] key prefix. Drops every record whose
# expiry score is at or before now and that is not live by its own fields.
_EXPIRE = _EXPIRY + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local dropped = 0
for _, member in ipairs(due) do
  local sep = string.find(member, '\\0', 1, true)
  local pkg = string.sub(member, 1, sep - 1)
  local sid = string.sub(member, sep + 1)
  local key = ARGV[3] .. 's:' .. pkg .. ':' .. sid
  local f = redis.call('HMGET', key, 'r', 'n', 'c', 'a', 'u', 'q', 'k', 'I', 'L', 'H')
  if f[1] and now < expiry(f) then
    redis.call('ZADD', KEYS[1], string.format('%.0f', expiry(f)), member)
  else
    if redis.call('DEL', key) == 1 then dropped = dropped + 1 end
    redis.call('ZREM', ARGV[3] .. 'sp:' .. pkg, sid)
    redis.call('ZREM', KEYS[1], member)
  end
end
return dropped
"""


def _us(seconds: float) -> int:
    return round(seconds * US)


def _text(value: Any) -> str:
    if value is None or value is False:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def _record(key: SessionKey, fields: Any) -> SessionRecord | None:
    if not fields:
        return None
    r, n, c, a, u, q, k, idle, life, hold = (_text(f) for f in (*fields, None, None, None)[:10])
    timings = NO_TIMINGS
    if idle or life or hold:
        timings = SessionTimings(
            lifetime=int(life) // US if life else None,
            idle=int(idle) // US if idle else None,
            hold=int(hold) if hold else None,
        )
    return SessionRecord(
        key, r, n, int(c) / US, int(a) / US, int(u) / US, int(q), int(k), timings
    )


def _timing_args(timings: SessionTimings) -> list[str]:
    """I (µs), L (µs), H (s) for the scripts; "" when not set."""
    return [
        "" if timings.idle is None else str(timings.idle * US),
        "" if timings.lifetime is None else str(timings.lifetime * US),
        "" if timings.hold is None else str(timings.hold),
    ]


class RedisSessionStore:
    """Sessions in Redis; see the module docstring. `prefix` namespaces every key."""

    def __init__(
        self, url: str, idle_timeout: float, *, prefix: str = "eg:", client: Redis | None = None
    ) -> None:
        if idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        self.redis: Redis = client if client is not None else Redis.from_url(
            url, socket_timeout=1.0, socket_connect_timeout=1.0
        )
        self._idle = idle_timeout
        self._idle_us = _us(idle_timeout)
        self.prefix = prefix
        self._get = self.redis.register_script(_GET)
        self._claim = self.redis.register_script(_CLAIM)
        self._rebind = self.redis.register_script(_REBIND)
        self._record_script = self.redis.register_script(_RECORD)
        self._release = self.redis.register_script(_RELEASE)
        self._delete = self.redis.register_script(_DELETE)
        self._list = self.redis.register_script(_LIST)
        self._expire = self.redis.register_script(_EXPIRE)
        self._pending: asyncio.Task[None] | None = None
        self._queued: list[tuple[SessionKey, str]] = []
        self.down = False  # Redis unreachable at the last call (a metric shows it)

    @property
    def idle_timeout(self) -> float:
        return self._idle

    def _keys(self, key: SessionKey) -> list[str]:
        p = self.prefix
        return [f"{p}s:{key.package_id}:{key.session_id}", f"{p}sp:{key.package_id}", f"{p}sx"]

    def _args(self, key: SessionKey, now: float, *extra: str) -> list[str | int]:
        member = f"{key.package_id}\x00{key.session_id}"
        return [_us(now), self._idle_us, member, key.session_id, *extra]

    async def _call(self, script: Any, keys: list[str], args: list[str | int]) -> Any:
        """One script; Redis unreachable → SessionStoreDown (logged once per change)."""
        try:
            result = await script(keys=keys, args=args)
        except DOWN as exc:
            if not self.down:
                self.down = True
                log.warning("Redis unreachable (%s): sessions fall back to rendezvous hashing "
                            "over each rule's pool until it answers again", exc)
            raise SessionStoreDown(str(exc)) from None
        if self.down:
            self.down = False
            log.info("Redis answers again: sessions are shared again")
        return result

    async def _settled(self) -> None:
        while self._pending is not None:
            await asyncio.shield(self._pending)

    async def get(self, key: SessionKey, now: float) -> SessionRecord | None:
        await self._settled()
        return _record(key, await self._call(self._get, self._keys(key), self._args(key, now)))

    async def claim(
        self,
        key: SessionKey,
        rules: str,
        node_id: str,
        now: float,
        timings: SessionTimings = NO_TIMINGS,
    ) -> SessionRecord:
        await self._settled()
        args = self._args(key, now, rules, node_id, *_timing_args(timings))
        fields = await self._call(self._claim, self._keys(key), args)
        record = _record(key, fields)
        if record is None:  # the script always returns a record
            raise RuntimeError("session claim returned nothing")
        return record

    async def rebind(
        self, key: SessionKey, rules: str, expected: str, node_id: str, now: float
    ) -> SessionRecord | None:
        await self._settled()
        args = self._args(key, now, rules, expected, node_id)
        return _record(key, await self._call(self._rebind, self._keys(key), args))

    async def record(
        self,
        key: SessionKey,
        rules: str,
        node_id: str,
        now: float,
        timings: SessionTimings = NO_TIMINGS,
    ) -> SessionRecord | None:
        await self._settled()
        args = self._args(key, now, rules, node_id, *_timing_args(timings))
        return _record(key, await self._call(self._record_script, self._keys(key), args))

    def release(self, key: SessionKey, node_id: str) -> None:
        self._queued.append((key, node_id))
        if self._pending is None:
            self._pending = spawn(self._send_releases(), "sessions-release")

    async def _send_releases(self) -> None:
        try:
            while self._queued:
                key, node_id = self._queued.pop(0)
                try:
                    args = self._args(key, time.time(), node_id)
                    await self._release(keys=self._keys(key), args=args)
                except Exception as exc:  # the record expires with its TTL anyway
                    log.warning("session release failed (it expires by itself): %s", exc)
        finally:
            self._pending = None

    async def delete(self, key: SessionKey) -> bool:
        await self._settled()
        member = f"{key.package_id}\x00{key.session_id}"
        deleted: Any = await self._call(self._delete, self._keys(key), [key.session_id, member])
        return int(deleted) == 1

    async def list(self, package_id: str, now: float) -> list[SessionRecord]:
        await self._settled()
        prefix = f"{self.prefix}s:{package_id}:"
        flat: Any = await self._call(
            self._list, [f"{self.prefix}sp:{package_id}"], [_us(now), self._idle_us, prefix]
        )
        found: list[SessionRecord] = []
        for i in range(0, len(flat), 11):
            sid = _text(flat[i])
            record = _record(SessionKey(package_id, sid), flat[i + 1 : i + 11])
            if record is not None:
                found.append(record)
        found.sort(key=lambda r: (r.created, r.key.session_id))
        return found

    async def expire(self, now: float) -> int:
        await self._settled()
        dropped: Any = await self._call(
            self._expire, [f"{self.prefix}sx"], [_us(now), self._idle_us, self.prefix]
        )
        return int(dropped)

    async def close(self) -> None:
        await self._settled()
        await self.redis.aclose()


class RedisClock:
    """Wall time on Redis's clock: `time.time()` plus an offset measured against `TIME`.

    Every instance sharing a Redis then agrees on session expiry and `rotate-timed` to within
    the measurement's half round trip, whatever its own clock says, without a round trip per
    request. `sync()` re-measures (the gateway calls it every 30 s).
    """

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.offset = 0.0

    async def sync(self) -> float:
        before = time.time()
        seconds, micros = await self.redis.time()
        after = time.time()
        self.offset = seconds + micros / US - (before + after) / 2
        return self.offset

    def __call__(self) -> float:
        return time.time() + self.offset


__all__ = ["RedisClock", "RedisSessionStore"]
