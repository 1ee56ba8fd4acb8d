"""Counters for the limiters: token buckets and concurrency leases, as a few atomic operations.

Theory of operation. The limiters (`policy.ratelimit`) decide *what* to count; this module
owns *where*: an in-process dict for the embedded default (`MemoryCounters`) or Redis when
several gateways share limits (`store.redis_counters.RedisCounters`, Lua scripts). Callers
see one `Counters` protocol, so switching is a URL (`open_counters`), never a code change.
Every operation is one atomic step on its backend (a dict update between two awaits, one Lua
script): never "read, then write" or "add, then set expiry" as two calls.

Time comes in as an argument, in integer microseconds of wall-clock time (shared across
instances; microseconds keep every value exact in a double, which is what Lua has).

Token bucket. A bucket holds `level` micro-tokens (1 token = 1_000_000) and refills `rate`
micro-tokens per elapsed microsecond (that is, `rate` tokens per second) up to
`burst * 1_000_000`; a new bucket starts full. Integer arithmetic: refills are exact, so 10/s
means exactly one token per 100 ms. `take` answers 0 when a token was taken, otherwise the
microseconds until one will be there. A clock that steps back refills nothing (the stamp never
moves backwards).

Concurrency leases. A semaphore `key` holds holders, each with an expiry; `acquire` first
drops expired holders, then adds `holder` if fewer than `limit` remain. A lease expires `ttl`
microseconds after it was taken or last renewed, so an instance that dies holding slots frees
them after at most `ttl` in a shared backend; the live instance renews its own leases
(`renew`, in batches) well before that. `release` is synchronous and never blocks: it must be
callable from `finally` under cancellation. A remote backend sends it in the background
(its `close` waits for them), and the lease expiry covers a release that never arrives.
`renew` re-adds a holder that expired meanwhile: a lease is renewed only for a connection that
is still open, which should count.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

TOKEN = 1_000_000  # micro-tokens per token; also microseconds per second


def bucket_take(level: int, stamp: int, rate: int, burst: int, now: int) -> tuple[int, int, int]:
    """One `take` on a bucket state: (new level, new stamp, wait µs; 0 when taken).

    The reference semantics: `RedisCounters` runs the same arithmetic in Lua.
    """
    full = burst * TOKEN
    if now > stamp:
        level = min(full, level + (now - stamp) * rate)
        stamp = now
    if level >= TOKEN:
        return level - TOKEN, stamp, 0
    return level, stamp, -(-(TOKEN - level) // rate)  # ceiling division


class Counters(Protocol):
    """Atomic counter operations shared by the limiters (see the module docstring)."""

    async def take(self, key: str, rate: int, burst: int, now: int) -> int:
        """Take one token from bucket `key` (`rate` >= 1 per second, capacity `burst` >= 1).
        0: taken; otherwise the microseconds until a token will be there."""
        ...

    async def acquire(self, key: str, holder: str, limit: int, ttl: int, now: int) -> bool:
        """Hold a slot of semaphore `key` for `holder` until `now + ttl` if fewer than `limit`
        unexpired holders remain; True when held. Acquiring a held slot renews it."""
        ...

    async def renew(self, leases: Sequence[tuple[str, str]], ttl: int, now: int) -> None:
        """Extend each (key, holder) lease to `now + ttl`, re-adding expired ones."""
        ...

    def release(self, key: str, holder: str) -> None:
        """Drop `holder` from `key`; a no-op when not held. Never blocks, never raises."""
        ...

    async def count(self, key: str, now: int) -> int:
        """Unexpired holders of semaphore `key`."""
        ...

    async def drain(self) -> None:
        """Wait until background work (releases in flight) has reached the backend."""
        ...

    async def close(self) -> None:
        """Drain, then let go of connections."""
        ...


class MemoryCounters:
    """`Counters` in this process: for the embedded default and for tests.

    No method awaits anything, so each one runs whole between two event-loop steps: that is
    the atomicity. Dicts are touched from the event-loop thread only.
    """

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[int, int]] = {}
        self._slots: dict[str, dict[str, int]] = {}

    # `take_now` and `acquire_now` are the synchronous forms: `Limiter` calls them directly,
    # with no coroutine per call, when its backend is this one.
    def take_now(self, key: str, rate: int, burst: int, now: int) -> int:
        level, stamp = self._buckets.get(key, (burst * TOKEN, now))
        level, stamp, wait = bucket_take(level, stamp, rate, burst, now)
        self._buckets[key] = (level, stamp)
        return wait

    async def take(self, key: str, rate: int, burst: int, now: int) -> int:
        return self.take_now(key, rate, burst, now)

    def acquire_now(self, key: str, holder: str, limit: int, ttl: int, now: int) -> bool:
        held = self._slots.get(key)
        if held is None:
            if limit < 1:
                return False
            self._slots[key] = {holder: now + ttl}
            return True
        until = held.get(holder)
        if (until is None or until <= now) and len(held) >= limit:
            # Expired holders matter only when they would refuse this one (which may be one
            # of them): sweeping them on every acquire cost a pass over all the package's
            # live slots per connection.
            for expired in [h for h, expiry in held.items() if expiry <= now]:
                del held[expired]
            if len(held) >= limit:
                if not held:
                    del self._slots[key]
                return False
        held[holder] = now + ttl
        return True

    async def acquire(self, key: str, holder: str, limit: int, ttl: int, now: int) -> bool:
        return self.acquire_now(key, holder, limit, ttl, now)

    async def renew(self, leases: Sequence[tuple[str, str]], ttl: int, now: int) -> None:
        for key, holder in leases:
            self._slots.setdefault(key, {})[holder] = now + ttl

    def release(self, key: str, holder: str) -> None:
        held = self._slots.get(key)
        if held is None:
            return
        held.pop(holder, None)
        if not held:
            del self._slots[key]  # no empty entries left behind: the dict stays small

    async def count(self, key: str, now: int) -> int:
        return sum(1 for until in self._slots.get(key, {}).values() if until > now)

    async def drain(self) -> None:
        return None

    async def close(self) -> None:
        return None


def open_counters(redis_url: str = "", prefix: str = "eg:") -> Counters:
    """`MemoryCounters` for an empty url, `RedisCounters` for `redis://` / `rediss://`.

    Keys given to a counter are bare (`rps:<package>`); Redis keys carry `prefix` first, so
    several deployments can share one server."""
    if not redis_url:
        return MemoryCounters()
    if redis_url.startswith(("redis://", "rediss://", "unix://")):
        from exitgate.store.degraded import FailoverCounters
        from exitgate.store.redis_counters import RedisCounters

        return FailoverCounters(RedisCounters(redis_url, prefix=prefix))
    raise ValueError("redis_url must start with redis://, rediss:// or unix://")
