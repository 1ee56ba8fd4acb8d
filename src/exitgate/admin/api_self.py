"""Self-service for package holders: `/v1/self/...` on the admin listener (issue 13).

Authenticated by the package key, never by the admin token: `Authorization: Bearer <key>`.
Mounted outside the admin token's dependency, so these routes check the key themselves:

    GET /v1/self/package         the package (as the admin sees it, no key) and usage totals
    GET /v1/self/errors          its recent-errors log, newest first: the exact code of a
                                 failed SOCKS5 handshake or CONNECT
    GET /v1/self/usage           hourly buckets, newest first (?since=&until=&limit=, as
                                 /v1/packages/{id}/usage)
    GET /v1/self/sessions        its live sticky sessions
    GET /v1/self/catalog         the targeting catalogue limited to its entitlements
                                 (?country=&network=)
    GET /v1/self/bans            its per-domain exit bans

Every answer concerns the authenticated package only: no route takes a package id. Every
path is under `/v1/self/` (none is `/v1/self` itself), the prefix that an admin-token guard in
front of the app lets through.

Order of checks, per request:
1. the client address's token bucket (`self:addr:<ip>`), so key guessing is throttled too;
2. the key: hashed (`store.keys.hash_key`) and looked up in the registry, whose
   `package_by_key` compares hashes in constant time. The admin token is not a package key:
   401 like any unknown key. A missing or unknown key is 401 `"missing or invalid package
   key"` with `WWW-Authenticate: Bearer`; the key itself is never logged or echoed;
3. the package's token bucket (`self:pkg:<id>`).
A refusal by either bucket is 429 `{"detail": "too many requests"}` with `Retry-After` in
whole seconds. The buckets are `policy.ratelimit`'s counters (`store.counters`: in-process
or Redis), so several instances share them when they share counters.

Any package status may read: a paused or suspended holder most needs to see why. GET only:
other methods are 405.
"""

# No `from __future__ import annotations`: FastAPI must see the route parameters'
# annotations as objects, and `Holder` is local to `self_routes`.
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from exitgate.admin.schemas import Country, PackageOut, UsageBucketOut, epoch_of
from exitgate.model import Network, Package
from exitgate.policy.ratelimit import wall_clock_us
from exitgate.recorder import Recorder
from exitgate.registry import Registry
from exitgate.routing.sessions import SessionTable
from exitgate.rules import Entitlements
from exitgate.store.base import UsageBucket
from exitgate.store.counters import TOKEN, Counters
from exitgate.targeting import TargetingCounts

MAX_BUCKETS = 10_000
log = logging.getLogger("exitgate.admin")
Totals = Callable[[str], Awaitable[Mapping[str, int]]]
Buckets = Callable[[str, float | None, float | None, int], Awaitable[Sequence[UsageBucket]]]
Bans = Callable[[str], Awaitable[Sequence[Mapping[str, Any]]]]
SharedErrors = Callable[[str], Awaitable[list[dict[str, object]]]]

_bearer = HTTPBearer(auto_error=False, description="the package key")


@dataclass(frozen=True, slots=True)
class SelfRates:
    """Token buckets (requests per second, burst) per package key and per client address."""

    key_rate: int = 5
    key_burst: int = 20
    address_rate: int = 20
    address_burst: int = 60


@dataclass(frozen=True, slots=True)
class GatewayReads:
    """What the self-service routes read: the gateway's in-memory parts, no database."""

    registry: Registry
    targeting: TargetingCounts  # the catalogue's counts, following the registry
    recorder: Recorder
    sessions: SessionTable
    counters: Counters
    # every instance's errors (the Redis errors log), when shared; else this instance's
    shared_errors: SharedErrors | None = None
    usage_totals: Totals | None = None
    usage_buckets: Buckets | None = None
    # package id → its per-domain exit bans; None: no ban table (the route gives [])
    bans: Bans | None = None
    rates: SelfRates = field(default_factory=SelfRates)
    clock: Callable[[], int] = wall_clock_us  # µs, as the counters want


def self_routes(reads: GatewayReads) -> APIRouter:
    rates = reads.rates

    async def throttle(bucket: str, rate: int, burst: int) -> None:
        wait = await reads.counters.take(bucket, rate, burst, reads.clock())
        if wait:
            retry = max(1, -(-wait // TOKEN))  # whole seconds, rounded up
            raise HTTPException(429, "too many requests", headers={"Retry-After": str(retry)})

    async def holder(
        request: Request,
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Package:
        address = request.client.host if request.client is not None else "-"
        await throttle(f"eg:self:addr:{address}", rates.address_rate, rates.address_burst)
        package = None if creds is None else reads.registry.package_by_key(creds.credentials)
        if package is None:
            raise HTTPException(
                401, "missing or invalid package key", headers={"WWW-Authenticate": "Bearer"}
            )
        await throttle(f"eg:self:pkg:{package.id}", rates.key_rate, rates.key_burst)
        return package

    Holder = Annotated[Package, Depends(holder)]
    r = APIRouter(prefix="/v1/self", tags=["self-service"])

    @r.get("/package")
    async def whoami(package: Holder) -> dict[str, Any]:
        """The package, as the admin reads it (never its key), with usage totals."""
        found = PackageOut.fields_of(package)
        totals = await reads.usage_totals(package.id) if reads.usage_totals else {}
        found["usage"] = dict(totals)
        return found

    @r.get("/errors")
    async def errors(package: Holder) -> list[dict[str, object]]:
        """The recent-errors log: code, detail, protocol, client, target; newest first."""
        if reads.shared_errors is not None:
            try:
                return await reads.shared_errors(package.id)
            except Exception as exc:  # as the admin read: this instance's log instead
                log.warning("shared errors log unreadable, showing this instance's: %s", exc)
        return reads.recorder.recent_errors(package.id)

    @r.get("/usage")
    async def usage(
        package: Holder,
        since: Annotated[datetime | None, Query(description="ISO 8601; UTC if no zone")] = None,
        until: Annotated[datetime | None, Query(description="ISO 8601, exclusive")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_BUCKETS)] = 1000,
    ) -> list[UsageBucketOut]:
        """Hourly usage buckets, newest first."""
        first = None if since is None else epoch_of(since)
        last = None if until is None else epoch_of(until)
        if first is not None and last is not None and last <= first:
            raise HTTPException(422, [{"loc": ["query", "until"],
                                       "msg": "must be later than since", "type": "value_error"}])
        if reads.usage_buckets is None:
            return []
        found = await reads.usage_buckets(package.id, first, last, limit)
        return [UsageBucketOut.of(b) for b in found]

    @r.get("/sessions")
    async def sessions(package: Holder) -> list[dict[str, object]]:
        """Live sticky sessions, oldest first."""
        now = time.time()
        table = reads.sessions
        return [
            {
                "session": s.key.session_id,
                "node_id": s.node_id,
                "rules": s.rules,
                "created": s.created,
                "age": round(now - s.created, 3),
                "last_used": s.last_used,
                "node_since": s.assigned,
                "requests": s.requests,
                "expires": s.expires(table.idle_timeout),
            }
            for s in await table.list(package.id)
            if not s.provisional
        ]

    @r.get("/catalog")
    async def catalog(
        package: Holder,
        country: Annotated[Country | None, Query(description="ISO 3166-1 alpha-2")] = None,
        network: Annotated[Network | None, Query()] = None,
    ) -> dict[str, Any]:
        """What this package can target now: its networks and rules only."""
        return reads.targeting.catalog(
            country=country or None,
            network=network,
            entitlements=Entitlements.of(package),
        )

    @r.get("/bans")
    async def bans(package: Holder) -> list[Mapping[str, Any]]:
        """Per-domain exit bans of this package, newest first."""
        return [] if reads.bans is None else list(await reads.bans(package.id))

    return r


__all__ = [
    "Bans", "Buckets", "GatewayReads", "SelfRates", "SharedErrors", "Totals", "self_routes"
]
