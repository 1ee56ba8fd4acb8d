"""Per-domain exit bans: a narrow store protocol and the in-process store (issue 13).

A ban says "package P must not use exit N for domain D until T". It is state with a TTL, per
instance today; a later issue shares it across instances through Redis, so the data path
only speaks `BanStore`, whose operations are single atomic steps over one (package, domain)
key: a Redis hash `eg:b:{package}:{domain}` of node id → until (HSET + PEXPIREAT to the
latest until), plus a sorted set `eg:bp:{package}` of domains scored by expiry for `list`.

Times are wall-clock epoch seconds passed in as `now` (shared by instances, readable in the
admin API); the store never reads a clock.

Bounds: at most `max_bans` bans in all; a ban past the cap evicts the one written (or
renewed) longest ago, O(1). Bans are short-lived hints, not accounting.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final, Protocol

NO_BANS: Final[frozenset[str]] = frozenset()


@dataclass(frozen=True, slots=True)
class Ban:
    package_id: str
    domain: str
    node_id: str
    created: float
    until: float
    reason: str  # "header", "status 403", "admin"


class BanStore(Protocol):
    """Bans; each method one atomic step. Coroutines so that a networked store never blocks."""

    async def add(self, ban: Ban) -> None: ...
    async def banned(self, package_id: str, domain: str, now: float) -> frozenset[str]: ...
    async def list(self, package_id: str, now: float) -> list[Ban]: ...
    async def lift(
        self, package_id: str, domain: str | None = None, node_id: str | None = None
    ) -> int: ...
    async def expire(self, now: float) -> int: ...


_Key = tuple[str, str]  # (package id, domain)


class MemoryBanStore:
    """The embedded default: dicts behind one lock (the admin API may call from a thread)."""

    def __init__(self, max_bans: int = 100_000) -> None:
        if max_bans < 1:
            raise ValueError("max_bans must be positive")
        self._max = max_bans
        self._by_key: dict[_Key, dict[str, Ban]] = {}
        self._order: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._order)

    async def add(self, ban: Ban) -> None:
        """Ban (or re-ban with the new `until`) one exit for one domain of one package."""
        with self._lock:
            key = (ban.package_id, ban.domain)
            self._by_key.setdefault(key, {})[ban.node_id] = ban
            entry = (ban.package_id, ban.domain, ban.node_id)
            self._order[entry] = None
            self._order.move_to_end(entry)
            while len(self._order) > self._max:
                self._drop(*next(iter(self._order)))

    async def banned(self, package_id: str, domain: str, now: float) -> frozenset[str]:
        """The exits banned now for this package and domain (the hot path: one dict lookup
        when there are none)."""
        found = self._by_key.get((package_id, domain))
        if not found:
            return NO_BANS
        with self._lock:
            found = self._by_key.get((package_id, domain), {})
            for ban in [b for b in found.values() if b.until <= now]:
                self._drop(ban.package_id, ban.domain, ban.node_id)
            return frozenset(found)

    async def list(self, package_id: str, now: float) -> list[Ban]:
        with self._lock:
            bans = [
                ban
                for (pkg, _), found in self._by_key.items()
                if pkg == package_id
                for ban in found.values()
                if ban.until > now
            ]
        bans.sort(key=lambda b: (b.domain, b.created, b.node_id))
        return bans

    async def lift(
        self, package_id: str, domain: str | None = None, node_id: str | None = None
    ) -> int:
        """Lift the package's bans, narrowed to a domain and/or an exit; how many went."""
        with self._lock:
            doomed = [
                entry
                for entry in self._order
                if entry[0] == package_id
                and (domain is None or entry[1] == domain)
                and (node_id is None or entry[2] == node_id)
            ]
            for entry in doomed:
                self._drop(*entry)
            return len(doomed)

    async def expire(self, now: float) -> int:
        with self._lock:
            doomed = [
                (b.package_id, b.domain, b.node_id)
                for found in self._by_key.values()
                for b in found.values()
                if b.until <= now
            ]
            for entry in doomed:
                self._drop(*entry)
            return len(doomed)

    def _drop(self, package_id: str, domain: str, node_id: str) -> None:
        self._order.pop((package_id, domain, node_id), None)
        found = self._by_key.get((package_id, domain))
        if found is not None:
            found.pop(node_id, None)
            if not found:
                del self._by_key[(package_id, domain)]
