"""Per-domain exit choice and bans (issue 13). Pure: time is injected.

Domains
-------
The unit is the target *host* as the client sent it, lowercased, without a trailing dot
(`domain_of`): `www.example.com` and `api.example.com` are two domains, and an IP literal is
its own domain. The registrable domain (public suffix list) would merge them, but needs a
suffix list kept current; the host is exact, free, and what a client sees in its URL, so it
is also what a client names when it bans.

Spreading
---------
`DomainMemory` remembers, per (package, domain), the exits that served it, least recent
first (at most `per_domain` of them), in an LRU of at most `cap` (package, domain) entries.
Selection without a session first excludes every remembered exit (so an exit that never
served the domain, or was forgotten, wins, with the usual load weighting among those); when
every matching exit is remembered it takes the least recently used one that is selectable.
So N requests over k matching exits use each exit before reusing one. Cost per request: one
dict lookup and move-to-end, one set union of at most `per_domain` ids.

Bans
----
`BanTable` is the policy over a `BanStore` (store/bans.py): the request header
`X-Exitgate-Ban: <node uid>|last[; ttl=<seconds>]` (`parse_ban`), automatic bans on
configured response statuses, and the admin reads. Bans exclude exits from selection,
rotation and replacement for that (package, domain), and move a sticky session off its exit
on its next request for that domain (routing/failover.py).
"""

from __future__ import annotations

import random
import re
from collections import OrderedDict
from collections.abc import Callable, Collection, KeysView
from dataclasses import dataclass
from typing import Final

from exitgate.errors import Code, GatewayError
from exitgate.model import Node
from exitgate.routing.index import NodeIndex
from exitgate.routing.select import Filters, Load, matches
from exitgate.store.bans import NO_BANS, Ban, BanStore

Clock = Callable[[], float]

BAN_HEADER: Final = b"x-exitgate-ban"
LAST: Final = "last"
DEFAULT_BAN_TTL: Final = 600
MAX_BAN_TTL: Final = 604_800  # a week, like rotate-timed
_TTL_RE: Final = re.compile(r"[1-9][0-9]{0,6}")
_NODE_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,80}")


def domain_of(host: str) -> str:
    """The spreading and ban unit for a target host (see the module docstring)."""
    return host.rstrip(".").lower()


class DomainMemory:
    """Which exits served each (package, domain) lately, least recent first. Bounded LRU."""

    def __init__(self, cap: int = 10_000, per_domain: int = 64) -> None:
        if cap < 1 or per_domain < 1:
            raise ValueError("cap and per_domain must be positive")
        self.cap = cap
        self.per_domain = per_domain
        self._lru: OrderedDict[tuple[str, str], OrderedDict[str, None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._lru)

    def recent(self, package_id: str, domain: str) -> Collection[str]:
        """Exits that served the domain, least recent first (empty: none remembered).

        A live view (no copy on the hot path): read it before the request's success is
        recorded, or copy it."""
        found = self._lru.get((package_id, domain))
        return found.keys() if found else ()

    def last(self, package_id: str, domain: str) -> str | None:
        found = self._lru.get((package_id, domain))
        return next(reversed(found)) if found else None

    def served(self, package_id: str, domain: str, node_id: str) -> None:
        key = (package_id, domain)
        found = self._lru.get(key)
        if found is None:
            found = self._lru[key] = OrderedDict()
            if len(self._lru) > self.cap:
                self._lru.popitem(last=False)
        else:
            self._lru.move_to_end(key)
        found[node_id] = None
        found.move_to_end(node_id)
        if len(found) > self.per_domain:
            found.popitem(last=False)


def select_spread(
    index: NodeIndex,
    filters: Filters,
    skip: Collection[str],
    spread: Collection[str],
    *,
    load: Load | None,
    rng: random.Random | None,
) -> Node | None:
    """A node outside `skip`: one outside `spread` (the domain's exits, least recent first)
    if any, load-weighted; else the least recent selectable one of `spread`."""
    node = index.select(filters, exclude=_union(skip, spread), load=load, rng=rng)
    if node is not None or not spread:
        return node
    for node_id in spread:
        if node_id in index and node_id not in skip:
            found = index.get(node_id)
            if found is not None and matches(found.attrs, filters):
                return found
    return None


def _union(skip: Collection[str], spread: Collection[str]) -> Collection[str]:
    if not spread:
        return skip
    if not skip:  # the usual case: no node cooling down, none tried yet
        return spread
    if isinstance(spread, KeysView):  # DomainMemory's view: one set operation, no copy
        return spread | skip
    return frozenset(spread).union(skip)


@dataclass(frozen=True, slots=True)
class BanRequest:
    node: str  # a node uid, or LAST
    ttl: int


def parse_ban(value: str) -> BanRequest:
    """`<node uid>|last[; ttl=<seconds>]`; GatewayError ERR_INVALID_VALUE naming the part."""
    head, *params = [part.strip() for part in value.split(";")]
    if not _NODE_RE.fullmatch(head):
        raise GatewayError(Code.ERR_INVALID_VALUE, f"X-Exitgate-Ban: bad exit {head!r}")
    ttl = DEFAULT_BAN_TTL
    for param in params:
        name, _, number = param.partition("=")
        if name.strip().lower() != "ttl":
            raise GatewayError(Code.ERR_INVALID_VALUE, f"X-Exitgate-Ban: unknown {name!r}")
        number = number.strip()
        if not _TTL_RE.fullmatch(number) or int(number) > MAX_BAN_TTL:
            raise GatewayError(
                Code.ERR_INVALID_VALUE, f"X-Exitgate-Ban: ttl must be 1..{MAX_BAN_TTL}"
            )
        ttl = int(number)
    return BanRequest(head, ttl)


class BanTable:
    """Bans as the data path and the admin API use them; `memory` answers `last`."""

    def __init__(self, store: BanStore, memory: DomainMemory, clock: Clock) -> None:
        self.store = store
        self.memory = memory
        self.clock = clock

    async def banned(self, package_id: str, domain: str) -> frozenset[str]:
        return await self.store.banned(package_id, domain, self.clock())

    async def ban(
        self, package_id: str, domain: str, node_id: str, ttl: float, reason: str
    ) -> Ban:
        now = self.clock()
        ban = Ban(package_id, domain, node_id, now, now + ttl, reason)
        await self.store.add(ban)
        return ban

    async def request(
        self, package_id: str, host: str, value: str, known: Callable[[str], bool]
    ) -> Ban | None:
        """The ban header of a request to `host`. `last` with no exit remembered for the
        domain bans nothing; an exit the gateway does not know is refused (bans are bounded
        state: a client must not fill it with made-up ids)."""
        wanted = parse_ban(value)
        domain = domain_of(host)
        node_id = wanted.node
        if node_id == LAST:
            last = self.memory.last(package_id, domain)
            if last is None:
                return None
            node_id = last
        elif not known(node_id):
            raise GatewayError(Code.ERR_INVALID_VALUE, f"X-Exitgate-Ban: unknown exit {node_id}")
        return await self.ban(package_id, domain, node_id, wanted.ttl, "header")

    async def list(self, package_id: str) -> list[Ban]:
        return await self.store.list(package_id, self.clock())

    async def lift(
        self, package_id: str, domain: str | None = None, node_id: str | None = None
    ) -> int:
        return await self.store.lift(
            package_id, None if domain is None else domain_of(domain), node_id
        )

    async def expire(self) -> int:
        return await self.store.expire(self.clock())


__all__ = [
    "BAN_HEADER",
    "NO_BANS",
    "BanRequest",
    "BanTable",
    "DomainMemory",
    "domain_of",
    "parse_ban",
    "select_spread",
]
