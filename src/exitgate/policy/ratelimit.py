"""Gate 5's request limits per package: requests per second and concurrent connections.

Theory of operation. `Limiter` turns a package's `Limits` into counter operations on an
injected `Counters` backend (in-process or Redis, see `store.counters`) with an injected clock,
and raises `GatewayError(RATE_LIMIT_EXCEEDED)` with a detail saying which limit:

- requests per second: a token bucket per package, rate = burst = `rps_limit` (a quiet package
  may send `rps_limit` requests at once, then `rps_limit` per second). Every admitted request,
  tunnel or SOCKS connection takes one token; a request refused by a later check still spent
  its token (refused requests count, as they do at commercial gateways).
- concurrent connections: a semaphore per package holding one lease per open tunnel, SOCKS
  connection or forwarded request in flight. `acquire` returns a `Slot`; `Slot.release()` is
  synchronous, idempotent, and meant for `finally` / `with`: whatever ends the connection
  (EOF, error, task cancellation at any await) the count goes back down exactly once.
  Cancellation *inside* `acquire` (a remote backend may have granted the lease before the
  answer arrived) releases the would-be lease too, so no await point can leak a slot.

`None` means no limit (no counter is touched); 0 refuses everything. Limits are read from the
`Package` value on every call, so an admin change is effective for the next request.

Leases expire (`lease_ttl`, default 15 s, `[store] lease_ttl`) in a shared backend; `renew()`
extends every lease this limiter holds, and must run more often than the TTL
(`services.LeaseKeeper` runs it every TTL/3). A crashed instance's slots therefore free
themselves within one TTL.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

from exitgate.errors import Code, GatewayError
from exitgate.model import Package
from exitgate.store.counters import MemoryCounters

if TYPE_CHECKING:
    from exitgate.store.counters import Counters

Clock = Callable[[], int]  # wall-clock microseconds: shared backends compare across hosts
US = 1_000_000
DEFAULT_LEASE_TTL = 15.0


def wall_clock_us() -> int:
    return time.time_ns() // 1000


def rate_key(package_id: str) -> str:
    return f"rps:{package_id}"


def slot_key(package_id: str) -> str:
    return f"conc:{package_id}"


def rate_exceeded(rate: int) -> GatewayError:
    return GatewayError(Code.RATE_LIMIT_EXCEEDED, f"Requests per second limit reached ({rate}/s)")


def concurrency_exceeded(limit: int) -> GatewayError:
    return GatewayError(Code.RATE_LIMIT_EXCEEDED, f"Concurrent connection limit reached ({limit})")


def _rate_limit(package: Package) -> int | None:
    """The package's requests-per-second limit; None for no limit. A rate of 0 refuses at
    once."""
    rate = package.limits.rps
    if rate is not None and rate <= 0:
        raise rate_exceeded(rate)
    return rate


def _slot_limit(package: Package) -> int | None:
    """The package's concurrency limit; None for no limit. A limit of 0 refuses at once."""
    limit = package.limits.concurrency
    if limit is not None and limit <= 0:
        raise concurrency_exceeded(limit)
    return limit


class Slot:
    """One held concurrency slot. `release()` may be called any number of times."""

    __slots__ = ("_limiter", "holder", "key", "released")

    def __init__(self, limiter: Limiter | None, key: str, holder: str) -> None:
        self._limiter = limiter
        self.key = key
        self.holder = holder
        self.released = limiter is None  # a package without a limit holds nothing

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        if self._limiter is not None:
            self._limiter._release(self)

    def __enter__(self) -> Slot:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    async def __aenter__(self) -> Slot:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return f"Slot({self.key!r}, {self.holder!r}, {state})"


UNLIMITED = Slot(None, "", "")  # what `acquire` hands out when there is no limit


class Limiter:
    def __init__(
        self,
        counters: Counters,
        *,
        clock: Clock = wall_clock_us,
        lease_ttl: float = DEFAULT_LEASE_TTL,
        instance: str = "",
    ) -> None:
        self.counters = counters
        self.clock = clock
        self.lease_ttl = lease_ttl
        self._ttl_us = int(lease_ttl * US)
        # Holder ids are unique across instances sharing a backend.
        self._instance = instance or secrets.token_hex(6)
        self._ids = itertools.count(1)
        self._live: dict[str, Slot] = {}
        # The in-process backend answers at once: admit through its synchronous methods (not
        # for a subclass, which may override the awaited ones).
        self._local = counters if type(counters) is MemoryCounters else None

    # -- gate 5 -------------------------------------------------------------------------------
    async def admit(self, package: Package, then: Callable[[Package], None] | None = None) -> Slot:
        """Rate, then concurrency, then `then(package)` (the traffic cap check, say): the
        slot, or the first refusal (the slot released when `then` raises)."""
        limits = package.limits
        if limits.rps is None and limits.concurrency is None:
            slot = UNLIMITED
        elif self._local is not None:
            slot = self._admit_local(package, self._local)
        else:
            await self.check_rate(package)
            slot = await self.acquire(package)
        if then is not None:
            try:
                then(package)
            except BaseException:
                slot.release()
                raise
        return slot

    def _admit_local(self, package: Package, local: MemoryCounters) -> Slot:
        """`check_rate` then `acquire` on the in-process backend, without awaiting."""
        now = self.clock()
        rate = _rate_limit(package)
        if rate is not None and local.take_now(rate_key(package.id), rate, rate, now):
            raise rate_exceeded(rate)
        limit = _slot_limit(package)
        if limit is None:
            return UNLIMITED
        key, holder = slot_key(package.id), self._holder()
        if not local.acquire_now(key, holder, limit, self._ttl_us, now):
            raise concurrency_exceeded(limit)
        return self._hold(key, holder)

    async def check_rate(self, package: Package) -> None:
        """Take one token of the package's bucket, or RATE_LIMIT_EXCEEDED."""
        rate = _rate_limit(package)
        if rate is None:
            return
        wait = await self.counters.take(rate_key(package.id), rate, rate, self.clock())
        if wait:
            raise rate_exceeded(rate)

    async def acquire(self, package: Package) -> Slot:
        """Hold one of the package's concurrent-connection slots, or RATE_LIMIT_EXCEEDED."""
        limit = _slot_limit(package)
        if limit is None:
            return UNLIMITED
        key, holder = slot_key(package.id), self._holder()
        try:
            held = await self.counters.acquire(key, holder, limit, self._ttl_us, self.clock())
        except BaseException:
            # Cancelled (or failed) while the backend may already have granted it.
            self.counters.release(key, holder)
            raise
        if not held:
            raise concurrency_exceeded(limit)
        return self._hold(key, holder)

    def _holder(self) -> str:
        return f"{self._instance}:{next(self._ids)}"

    def _hold(self, key: str, holder: str) -> Slot:
        slot = Slot(self, key, holder)
        self._live[holder] = slot
        return slot

    def _release(self, slot: Slot) -> None:
        self._live.pop(slot.holder, None)
        self.counters.release(slot.key, slot.holder)

    # -- upkeep -------------------------------------------------------------------------------
    @property
    def held(self) -> int:
        """Slots this limiter holds now (every package)."""
        return len(self._live)

    async def in_use(self, package_id: str) -> int:
        """Slots of the package held now, by every instance sharing the backend."""
        return await self.counters.count(slot_key(package_id), self.clock())

    async def renew(self) -> int:
        """Extend every lease this limiter holds; the number renewed."""
        live = list(self._live.values())
        if not live:
            return 0
        await self.counters.renew([(s.key, s.holder) for s in live], self._ttl_us, self.clock())
        for slot in live:
            if slot.released:
                # Released while the renewal was in flight: the renewal may have re-added it.
                self.counters.release(slot.key, slot.holder)
        return len(live)
