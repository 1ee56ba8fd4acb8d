"""`FailoverCounters`: limits that outlive a Redis outage.

With several instances, rate and concurrency limits live in Redis (`RedisCounters`). When Redis
cannot be reached, refusing every request would turn a cache outage into a full outage, and
ignoring limits would let one package take the whole network. So each instance falls back to
its *local share* of each limit, in memory: `max(1, limit // instances)`, where `instances`
is the number of live instances last seen in Redis (each instance announces itself in a sorted
set `{prefix}instances` every probe). The cluster as a whole then stays near the package's
limit; documented in docs/deploy.md.

- Every operation goes to Redis while it answers. A connection error (or timeout) switches to
  degraded mode at once: the operation is retried locally, nothing fails, one WARNING is logged.
- A probe every `probe` seconds (PING + the membership update) switches back when Redis
  answers; one INFO is logged. Leases taken locally are released locally (and those taken in
  Redis before the outage expire there by their TTL).
- `degraded` is exported as a metric; `transitions` counts the changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Sequence

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from exitgate.store.counters import MemoryCounters
from exitgate.store.redis_counters import RedisCounters
from exitgate.tasks import spawn

log = logging.getLogger("exitgate.counters")

DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError, TimeoutError)


class FailoverCounters:
    def __init__(self, redis: RedisCounters, *, probe: float = 1.0, member_ttl: float = 5.0):
        self.redis = redis
        self.local = MemoryCounters()
        self.instance = f"inst-{secrets.token_hex(6)}"
        self.degraded = False
        self.transitions = 0
        self.instances = 1  # live instances last seen in Redis (this one included)
        self.probe = probe
        self.member_ttl = member_ttl
        self._local_holders: set[tuple[str, str]] = set()
        self._prober: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._prober = spawn(self._probe(), "counters-probe")

    def _share(self, limit: int) -> int:
        return max(1, limit // max(1, self.instances)) if limit > 0 else 0

    def _down(self, exc: BaseException) -> None:
        if not self.degraded:
            self.degraded = True
            self.transitions += 1
            log.warning(
                "Redis unreachable (%s): limits fall back to this instance's share "
                "(1/%d of each package's limit) until it answers again", exc, self.instances,
            )

    # -- the Counters protocol ------------------------------------------------------------------
    async def take(self, key: str, rate: int, burst: int, now: int) -> int:
        if not self.degraded:
            try:
                return await self.redis.take(key, rate, burst, now)
            except DOWN as exc:
                self._down(exc)
        share = self._share(rate)
        return await self.local.take(key, max(1, share), max(1, self._share(burst)), now)

    async def acquire(self, key: str, holder: str, limit: int, ttl: int, now: int) -> bool:
        if not self.degraded:
            try:
                return await self.redis.acquire(key, holder, limit, ttl, now)
            except DOWN as exc:
                self._down(exc)
        held = await self.local.acquire(key, holder, self._share(limit), ttl, now)
        if held:
            self._local_holders.add((key, holder))
        return held

    async def renew(self, leases: Sequence[tuple[str, str]], ttl: int, now: int) -> None:
        local = [lease for lease in leases if lease in self._local_holders]
        remote = [lease for lease in leases if lease not in self._local_holders]
        if local:
            await self.local.renew(local, ttl, now)
        if remote and not self.degraded:
            try:
                await self.redis.renew(remote, ttl, now)
            except DOWN as exc:
                self._down(exc)

    def release(self, key: str, holder: str) -> None:
        if (key, holder) in self._local_holders:
            self._local_holders.discard((key, holder))
            self.local.release(key, holder)
        else:
            self.redis.release(key, holder)

    async def count(self, key: str, now: int) -> int:
        if not self.degraded:
            try:
                return await self.redis.count(key, now)
            except DOWN as exc:
                self._down(exc)
        return await self.local.count(key, now)

    async def drain(self) -> None:
        await self.local.drain()
        await self.redis.drain()

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        with contextlib.suppress(Exception):
            await self.redis.redis.zrem(self._members_key, self.instance)
        await self.local.close()
        await self.redis.close()

    # -- membership and recovery ----------------------------------------------------------------
    @property
    def _members_key(self) -> str:
        return f"{self.redis.prefix}instances"

    async def _probe(self) -> None:
        while True:
            try:
                now = time.time()
                async with self.redis.redis.pipeline(transaction=False) as pipe:
                    pipe.zadd(self._members_key, {self.instance: now + self.member_ttl})
                    pipe.zremrangebyscore(self._members_key, "-inf", now)
                    pipe.zcard(self._members_key)
                    pipe.expire(self._members_key, int(self.member_ttl * 4))
                    answers = await pipe.execute()
                self.instances = max(1, int(answers[2]))
                if self.degraded:
                    self.degraded = False
                    self.transitions += 1
                    log.info("Redis answers again: limits are shared by the cluster again")
            except DOWN as exc:
                self._down(exc)
            except Exception as exc:
                log.warning("Redis probe failed: %s", exc)
            await asyncio.sleep(self.probe)


__all__ = ["FailoverCounters"]
