"""`Counters` on Redis: limits shared by every gateway instance that names the same server.

Each operation is one Lua script (atomic on the server) with the same arithmetic as
`store.counters` (see its docstring for the semantics). Numbers cross the Lua boundary as
strings formatted with `%.0f`: Lua numbers are doubles, and the default `%.14g` conversion
would round a microsecond timestamp (16 digits).

- Bucket `key`: a hash {l: level, s: stamp}, expiring once it would be full again (an idle
  bucket is a missing key, which reads as full).
- Semaphore `key`: a sorted set holder → expiry (µs); the key itself expires with the newest
  lease, so nothing outlives its last holder.
- `release` is a ZREM sent from a background task (`tasks.spawn`): the caller's `finally`
  never waits on the network. `close` waits for those still in flight.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from exitgate.tasks import spawn

log = logging.getLogger("exitgate.counters")
REDIS_TIMEOUT = 1.0  # seconds: connect and each command

_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local full = burst * 1000000
local state = redis.call('HMGET', KEYS[1], 'l', 's')
local level = tonumber(state[1])
local stamp = tonumber(state[2])
if level == nil or stamp == nil then
  level = full
  stamp = now
end
if now > stamp then
  level = math.min(full, level + (now - stamp) * rate)
  stamp = now
end
local wait = 0
if level >= 1000000 then
  level = level - 1000000
else
  wait = math.ceil((1000000 - level) / rate)
end
redis.call('HSET', KEYS[1], 'l', string.format('%.0f', level), 's', string.format('%.0f', stamp))
redis.call('PEXPIRE', KEYS[1], math.ceil((full - level) / rate / 1000) + 1000)
return wait
"""

_ACQUIRE = """
local holder = ARGV[1]
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
if not redis.call('ZSCORE', KEYS[1], holder) then
  if redis.call('ZCARD', KEYS[1]) >= limit then
    return 0
  end
end
redis.call('ZADD', KEYS[1], ARGV[3], holder)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""

_RENEW = """
for i = 3, #ARGV do
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return #ARGV - 2
"""


def _ms(us: int) -> int:
    return max(1, -(-us // 1000))


class RedisCounters:
    """`Counters` over one Redis server (redis-py's asyncio client, pooled connections)."""

    def __init__(self, url: str, *, prefix: str = "eg:", client: Redis | None = None) -> None:
        # bounded waits: a hung Redis must not stall admission (FailoverCounters takes over)
        self.redis: Redis = client if client is not None else Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
        )
        self.prefix = prefix
        self._take = self.redis.register_script(_TAKE)
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._renew = self.redis.register_script(_RENEW)
        self._releases: set[asyncio.Task[None]] = set()

    async def take(self, key: str, rate: int, burst: int, now: int) -> int:
        wait: Any = await self._take(keys=[self.prefix + key], args=[rate, burst, now])
        return int(wait)

    async def acquire(self, key: str, holder: str, limit: int, ttl: int, now: int) -> bool:
        args: list[str | int] = [holder, limit, now + ttl, now, _ms(ttl) + 1000]
        held: Any = await self._acquire(keys=[self.prefix + key], args=args)
        return int(held) == 1

    async def renew(self, leases: Sequence[tuple[str, str]], ttl: int, now: int) -> None:
        by_key: dict[str, list[str]] = {}
        for key, holder in leases:
            by_key.setdefault(key, []).append(holder)
        for key, holders in by_key.items():
            args: list[str | int] = [now + ttl, _ms(ttl) + 1000, *holders]
            await self._renew(keys=[self.prefix + key], args=args)

    def release(self, key: str, holder: str) -> None:
        task = spawn(self._zrem(key, holder), "counters-release")
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _zrem(self, key: str, holder: str) -> None:
        try:
            await self.redis.zrem(self.prefix + key, holder)
        except Exception as exc:  # the lease expiry frees it anyway
            log.warning("release of %s in %s failed (expires with its lease): %s", holder, key, exc)

    async def count(self, key: str, now: int) -> int:
        return int(await self.redis.zcount(self.prefix + key, f"({now}", "+inf"))

    async def drain(self) -> None:
        while self._releases:
            await asyncio.gather(*self._releases, return_exceptions=True)

    async def close(self) -> None:
        await self.drain()
        await self.redis.aclose()


__all__ = ["RedisCounters"]
