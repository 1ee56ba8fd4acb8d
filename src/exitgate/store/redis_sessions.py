"""`SessionStore` on Redis: sticky sessions shared by every gateway instance on one server.

Each operation of the contract in `store/sessions.py` is ONE Lua script, so two instances racing
on a session id see one winner, exactly as two requests do in one process. The scripts are in
`store/redis_session_scripts.py`.

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

from exitgate.store import redis_session_scripts as scripts
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
        self._get = self.redis.register_script(scripts.GET)
        self._touch = self.redis.register_script(scripts.TOUCH)
        self._refund = self.redis.register_script(scripts.REFUND)
        self._claim = self.redis.register_script(scripts.CLAIM)
        self._rebind = self.redis.register_script(scripts.REBIND)
        self._record_script = self.redis.register_script(scripts.RECORD)
        self._release = self.redis.register_script(scripts.RELEASE)
        self._delete = self.redis.register_script(scripts.DELETE)
        self._list = self.redis.register_script(scripts.LIST)
        self._expire = self.redis.register_script(scripts.EXPIRE)
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
