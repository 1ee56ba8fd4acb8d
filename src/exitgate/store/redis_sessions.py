"""`SessionStore` on Redis: sticky sessions shared by every gateway instance on one server.

Each operation of the contract in `store/sessions.py` is ONE Lua script, so two instances racing
on a session id see one winner, exactly as two requests do in one process.

Keys (all under the configured prefix, default `eg:`):
- `{p}s:{package}:{session}`: a hash `r` rules, `n` node, `c` created, `a` assigned,
  `u` last used, `q` requests, `k` requests on `n` since `a`, `E` epoch (node changes).
  Times are epoch microseconds as integers (a Lua double holds them exactly). The key
  expires `idle_timeout` after its last touch (`PEXPIRE`, relative, in the same script as
  the write), so an abandoned session costs nothing and a crashed instance leaves nothing behind.
- `{p}sp:{package}`: a sorted set of the package's session ids scored by expiry, for `list`.
- `{p}sx`: a sorted set of `package\\x00session` scored by expiry, for `expire`.

Time: with `server_time` (what the gateway uses) every script reads Redis's own `TIME`, so
every instance agrees on expiry and `rotate-timed` whatever its clock says, at no extra round
trip; the `now` the caller passes is then ignored. Without it (the contract tests), liveness
and timestamps come from the caller's `now`, exactly as in the memory store. Expiry is
relative (`PEXPIRE`), never `PEXPIREAT`.

A request costs ONE script (`touch`: read, count, refresh the idle expiry; or, finding no
session, claim it for the candidate node the router selected beforehand); moves, a refund
and the fallback `claim` + `record` (a first request with no candidate) are their own
scripts (issue 9). `remote` is True: the router selects that candidate before the script.

`release` and `refund` are synchronous (they run in `finally`): they queue the script and a
background task sends it; every other operation first waits for queued ones, so one
instance always reads its own writes in order.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    Touch,
)
from exitgate.tasks import spawn

log = logging.getLogger("exitgate.sessions")

US = 1_000_000
DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError, TimeoutError)

# Shared prologue: KEYS[1] record hash, KEYS[2] package zset, KEYS[3] global zset;
# ARGV[1] now (µs; "" = Redis's TIME), ARGV[2] default idle (µs), ARGV[3] member of the
# global zset, ARGV[4] session id. Fields: r n c a u q k, then the session's own timings
# (legacy usernames): I idle (µs), L lifetime (µs), H hold (s); "" when not set; E epoch.
# `live()` deletes an expired record (what the TTL will do anyway) and returns its fields.
# TIME before writes needs effects replication: the default from Redis 5, asked for on 3.2-4.
_EXPIRY = """
local now = tonumber(ARGV[1])
if ARGV[1] == '' then
  if redis.replicate_commands then redis.replicate_commands() end
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local nows = string.format('%.0f', now)
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
local function drop()
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[4])
  redis.call('ZREM', KEYS[3], ARGV[3])
end
local function live()
  local f = redis.call('HMGET', KEYS[1], 'r', 'n', 'c', 'a', 'u', 'q', 'k', 'I', 'L', 'H', 'E')
  if not f[1] then return nil end
  if not f[11] then f[11] = '0' end
  if now >= expiry(f) then
    drop()
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
    'q', f[6], 'k', f[7], 'I', f[8], 'L', f[9], 'H', f[10], 'E', f[11])
end
"""

_GET = _PROLOGUE + "return live()"

# ARGV[5] rules, ARGV[6] candidate node ("": none), ARGV[7..9] timings I L H for a record
# this call claims. Returns {now, 0 untouched / 1 counted / 2 claimed, last_used before,
# fields...} (no fields: none). The one script of a request: counts a kept session and
# restarts its idle expiry, or claims a new one for the candidate, counted on arrival.
_TOUCH = _PROLOGUE + """
local f = live()
if not f then
  if ARGV[6] == '' then return {nows, 0, ''} end
  f = {ARGV[5], ARGV[6], nows, nows, nows, '1', '1', ARGV[7], ARGV[8], ARGV[9], '0'}
  put(f)
  touch(f)
  return {nows, 2, '0', unpack(f)}
end
if f[1] ~= ARGV[5] or f[6] == '0' then return {nows, 0, '', unpack(f)} end
local prev = f[5]
local q = tonumber(f[6]) + 1
local k = tonumber(f[7]) + 1
redis.call('HSET', KEYS[1], 'u', nows, 'q', q, 'k', k)
f[5] = nows; f[6] = tostring(q); f[7] = tostring(k)
touch(f)
return {nows, 1, prev, unpack(f)}
"""

# ARGV[5] rules, ARGV[6] node, ARGV[7..9] timings I L H for a record this call creates
_CLAIM = _PROLOGUE + """
local f = live()
if f then return f end
f = {ARGV[5], ARGV[6], nows, nows, nows, '0', '0', ARGV[7], ARGV[8], ARGV[9], '0'}
put(f)
touch(f)
return f
"""

# ARGV[5] rules, ARGV[6] expected node, ARGV[7] new node, ARGV[8] expected epoch ("": any),
# ARGV[9] node_requests to start the new node with (1: the moving request was counted)
_REBIND = _PROLOGUE + """
local f = live()
if not f then return nil end
if f[1] ~= ARGV[5] or f[2] ~= ARGV[6] or ARGV[6] == ARGV[7] then return f end
if ARGV[8] ~= '' and f[11] ~= ARGV[8] then return f end
local e = tostring(tonumber(f[11]) + 1)
redis.call('HSET', KEYS[1], 'n', ARGV[7], 'a', nows, 'k', ARGV[9], 'E', e)
f[2] = ARGV[7]; f[4] = nows; f[7] = ARGV[9]; f[11] = e
return f
"""

# ARGV[5] rules, ARGV[6] node, ARGV[7..9] timings. Returns nil (and writes nothing) when the
# rules differ.
_RECORD = _PROLOGUE + """
local f = live()
if not f then
  f = {ARGV[5], ARGV[6], nows, nows, nows, '1', '1', ARGV[7], ARGV[8], ARGV[9], '0'}
  put(f)
  touch(f)
  return f
end
if f[1] ~= ARGV[5] then return nil end
local q = tonumber(f[6]) + 1
local k = tonumber(f[7])
if f[2] == ARGV[6] then k = k + 1 end
redis.call('HSET', KEYS[1], 'u', nows, 'q', q, 'k', k)
f[5] = nows; f[6] = tostring(q); f[7] = tostring(k)
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

# ARGV[5] rules, ARGV[6] node, ARGV[7] epoch, ARGV[8] last_used written by the request's touch,
# ARGV[9] last_used before it ("0": the request claimed the session in `touch`). A request
# counted on arrival reached no node: give it back.
_REFUND = _PROLOGUE + """
local f = live()
if not f or f[1] ~= ARGV[5] or f[6] == '0' then return 0 end
local q = tonumber(f[6]) - 1
local untouched = f[5] == ARGV[8]
if ARGV[9] == '0' then
  -- the request claimed the session in `touch`: drop it unless others came meanwhile
  if q < 1 and untouched then
    drop()
    return 1
  end
elseif untouched then
  f[5] = ARGV[9]
end
if q < 1 then q = 1 end
local k = tonumber(f[7])
if f[2] == ARGV[6] and f[11] == ARGV[7] and k > 0 then k = k - 1 end
if k > q then k = q end  -- a count it moved to a new node (replaced a claim) leaves with it
f[6] = tostring(q); f[7] = tostring(k)
if now >= expiry(f) then
  drop()
  return 1
end
redis.call('HSET', KEYS[1], 'u', f[5], 'q', q, 'k', k)
touch(f)
return 1
"""

_DELETE = """
local n = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[2])
return n
"""

# KEYS[1] package zset; ARGV[1] now, ARGV[2] idle, ARGV[3] record key prefix.
_LIST = _EXPIRY + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', nows)
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for _, sid in ipairs(ids) do
  local f = redis.call('HMGET', ARGV[3] .. sid,
    'r', 'n', 'c', 'a', 'u', 'q', 'k', 'I', 'L', 'H', 'E')
  if f[1] and now < expiry(f) and f[6] ~= '0' then
    table.insert(out, sid)
    for i = 1, 11 do table.insert(out, f[i] or '') end
  end
end
return out
"""

# KEYS[1] global zset; ARGV[1] now, ARGV[2] idle, ARGV[3] key prefix. Drops every record whose
# expiry score is at or before now and that is not live by its own fields.
_EXPIRE = _EXPIRY + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', nows)
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
    padded = (*fields, None, None, None, None)[:11]
    r, n, c, a, u, q, k, idle, life, hold, epoch = (_text(f) for f in padded)
    timings = NO_TIMINGS
    if idle or life or hold:
        timings = SessionTimings(
            lifetime=int(life) // US if life else None,
            idle=int(idle) // US if idle else None,
            hold=int(hold) if hold else None,
        )
    return SessionRecord(
        key, r, n, int(c) / US, int(a) / US, int(u) / US, int(q), int(k), timings,
        int(epoch or 0),
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
        self,
        url: str,
        idle_timeout: float,
        *,
        prefix: str = "eg:",
        client: Redis | None = None,
        server_time: bool = False,
    ) -> None:
        if idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        self.redis: Redis = client if client is not None else Redis.from_url(
            url, socket_timeout=1.0, socket_connect_timeout=1.0
        )
        self._idle = idle_timeout
        self._idle_us = _us(idle_timeout)
        self.prefix = prefix
        self.server_time = server_time  # scripts read Redis's TIME; `now` is ignored
        self._get = self.redis.register_script(_GET)
        self._touch = self.redis.register_script(_TOUCH)
        self._refund = self.redis.register_script(_REFUND)
        self._claim = self.redis.register_script(_CLAIM)
        self._rebind = self.redis.register_script(_REBIND)
        self._record_script = self.redis.register_script(_RECORD)
        self._release = self.redis.register_script(_RELEASE)
        self._delete = self.redis.register_script(_DELETE)
        self._list = self.redis.register_script(_LIST)
        self._expire = self.redis.register_script(_EXPIRE)
        self._pending: asyncio.Task[None] | None = None
        # (script, key, extra arguments, now or None: this host's clock)
        self._queued: list[tuple[Any, SessionKey, list[str], float | None]] = []
        self.down = False  # Redis unreachable at the last call (a metric shows it)
        self.live = 0  # records in Redis at the last `expire` (a metric shows it)

    @property
    def idle_timeout(self) -> float:
        return self._idle

    @property
    def remote(self) -> bool:
        return True  # every step is a round trip: a first request is claimed by `touch`

    def _keys(self, key: SessionKey) -> list[str]:
        p = self.prefix
        return [f"{p}s:{key.package_id}:{key.session_id}", f"{p}sp:{key.package_id}", f"{p}sx"]

    def _now(self, now: float) -> str | int:
        return "" if self.server_time else _us(now)

    def _args(self, key: SessionKey, now: float, *extra: str) -> list[str | int]:
        member = f"{key.package_id}\x00{key.session_id}"
        return [self._now(now), self._idle_us, member, key.session_id, *extra]

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

    async def touch(
        self,
        key: SessionKey,
        rules: str,
        now: float,
        node_id: str | None = None,
        timings: SessionTimings = NO_TIMINGS,
    ) -> Touch:
        await self._settled()
        args = self._args(key, now, rules, node_id or "", *_timing_args(timings))
        reply: Any = await self._call(self._touch, self._keys(key), args)
        at = int(reply[0]) / US
        record = _record(key, reply[3:])
        step = int(reply[1])
        if step == 0:
            return Touch(record, at)
        if step == 2:
            return Touch(record, at, counted=True, claimed=True)
        return Touch(record, at, counted=True, previous=int(reply[2]) / US)

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
        self,
        key: SessionKey,
        rules: str,
        expected: str,
        node_id: str,
        now: float,
        *,
        epoch: int | None = None,
        count: bool = False,
    ) -> SessionRecord | None:
        await self._settled()
        expect = "" if epoch is None else str(epoch)
        args = self._args(key, now, rules, expected, node_id, expect, "1" if count else "0")
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
        self._queue(self._release, key, [node_id])

    def refund(
        self,
        key: SessionKey,
        rules: str,
        node_id: str,
        now: float,
        *,
        epoch: int,
        used: float,
        previous: float,
    ) -> None:
        extra = [rules, node_id, str(epoch), str(_us(used)), str(_us(previous))]
        self._queue(self._refund, key, extra, now)

    def _queue(
        self, script: Any, key: SessionKey, extra: list[str], now: float | None = None
    ) -> None:
        self._queued.append((script, key, extra, now))
        if self._pending is None:
            self._pending = spawn(self._send_queued(), "sessions-release")

    async def _send_queued(self) -> None:
        try:
            while self._queued:
                script, key, extra, now = self._queued.pop(0)
                try:
                    args = self._args(key, time.time() if now is None else now, *extra)
                    await script(keys=self._keys(key), args=args)
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
            self._list, [f"{self.prefix}sp:{package_id}"], [self._now(now), self._idle_us, prefix]
        )
        found: list[SessionRecord] = []
        for i in range(0, len(flat), 12):
            sid = _text(flat[i])
            record = _record(SessionKey(package_id, sid), flat[i + 1 : i + 12])
            if record is not None:
                found.append(record)
        found.sort(key=lambda r: (r.created, r.key.session_id))
        return found

    async def expire(self, now: float) -> int:
        await self._settled()
        dropped: Any = await self._call(
            self._expire, [f"{self.prefix}sx"], [self._now(now), self._idle_us, self.prefix]
        )
        with contextlib.suppress(*DOWN):
            self.live = int(await self.redis.zcard(f"{self.prefix}sx"))
        return int(dropped)

    def __len__(self) -> int:
        """Live sessions of every instance, as of the last `expire` (every few seconds)."""
        return self.live

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
