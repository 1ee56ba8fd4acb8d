"""The admission pipeline: the ordered gates of SPEC section 4, pure.

    1 identify   credentials, client IP → package   ERR_AUTH_REQUIRED AUTH_FAILED IP_NOT_ALLOWED
                 (per package `auth_mode`; failures    AUTH_THROTTLED
                 throttled per address)
    2 state      status, organization credits        PACKAGE_SUSPENDED PACKAGE_PAUSED
                                                     PACKAGE_NO_CREDITS
    3 protocol   entitlement, destination policy     DISALLOWED
    4 rules      the username, against the catalogue the 400 codes
    5 limits     rate, concurrency, traffic cap      RATE_LIMIT_EXCEEDED TRAFFIC_LIMIT_EXCEEDED
    6 session    sticky session consistency          SESSION_PARAMS_MISMATCH
    (7 routing and dialing happen at the edge, with the `Admitted` value this produces.)

SOCKS5 learns the credentials before the destination, so the pipeline is two calls:
`authenticate` (gates 1-2, answered in the RFC 1929 sub-negotiation) and `authorize`
(gates 3-6, answered in the CONNECT reply). HTTP calls both back to back. Every gate reads
the in-memory `Directory` only: no database per request.

Gates 5 and 6 are hooks (`LimitGate`, `SessionGate`) so the limits and sessions work plugs in
without reordering anything. A domain name is checked here by name only (`localhost`); what it
resolves to is checked by the direct exit just before it connects (see `exits.direct`).

SOAX legacy usernames (`package-<id>-...`, rules_legacy.py) are told apart by their prefix:
gate 1 answers AUTH_FAILED when the id is not the package the key (or client IP) names, and
gate 4 parses them into the same `Rules` plus per-session timings (`Admitted.timings`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final
from typing import Protocol as TypingProtocol

from exitgate.errors import Code, GatewayError
from exitgate.model import (
    AuthMode,
    Network,
    Org,
    Package,
    PackageStatus,
    Protocol,
    Target,
    parse_ip,
)
from exitgate.policy.authguard import AuthThrottle
from exitgate.routing.select import Filters, filters_for
from exitgate.rules import Catalogue, Entitlements, Rules, parse_rules
from exitgate.rules_legacy import is_legacy, legacy_package_id, parse_legacy
from exitgate.store.sessions import NO_TIMINGS, SessionTimings

MAIL_PORTS = frozenset({25, 465, 587})
ANY_RULES = "country-any"
# Gate 4's memo: (username, package rule and network entitlements) → parsed rules, legacy
# timings and node filters. Bounded: cleared whole when full (10,000 live sessions fit).
PARSED_CACHE_SIZE = 16_384
_Parsed = tuple[Rules, SessionTimings, Filters]


class Directory(TypingProtocol):
    """What admission reads: an in-memory view of accounts, invalidated on change."""

    def package_by_key(self, key: str) -> Package | None: ...
    def package_by_hash(self, digest: str) -> Package | None: ...
    def packages_for_ip(self, ip: str) -> list[Package]: ...
    def org(self, org_id: str) -> Org | None: ...
    @property
    def catalogue(self) -> Catalogue: ...


class Lease(TypingProtocol):
    """What gate 5 hands out: a concurrency slot, released on every path (safe twice)."""

    def release(self) -> None: ...


class _NoLease:
    __slots__ = ()

    def release(self) -> None:
        return None


NO_LEASE: Lease = _NoLease()


class Identity:
    """Who asks: the package a credential names, and the username's rules as sent."""

    # Written out, not a frozen dataclass: these values are made per request, and a
    # dataclass's generated __init__ stays interpreted in the compiled build
    # (docs/decisions.md, "Value classes on the hot path").
    __slots__ = ("package", "username")
    package: Final[Package]
    username: Final[str]  # the rules as sent, or ANY_RULES for a credential-less allowlisted client

    def __init__(self, package: Package, username: str) -> None:
        self.package = package
        self.username = username


class Admitted:
    """A request past gates 1-5: what the router needs, and the limit lease it holds."""

    __slots__ = ("filters", "lease", "package", "protocol", "rules", "target", "timings")
    package: Final[Package]
    rules: Final[Rules]
    target: Final[Target]
    protocol: Final[Protocol]
    filters: Final[Filters]
    lease: Final[Lease]  # the caller releases it when the request or connection ends
    timings: Final[SessionTimings]  # a legacy username's session timings

    def __init__(
        self,
        package: Package,
        rules: Rules,
        target: Target,
        protocol: Protocol,
        filters: Filters,
        *,
        lease: Lease = NO_LEASE,
        timings: SessionTimings = NO_TIMINGS,
    ) -> None:
        self.package = package
        self.rules = rules
        self.target = target
        self.protocol = protocol
        self.filters = filters
        self.lease = lease
        self.timings = timings


class LimitGate(TypingProtocol):
    """Gate 5: rate, concurrency and traffic cap; a lease, or RATE_LIMIT_EXCEEDED /
    TRAFFIC_LIMIT_EXCEEDED. Async: a shared backend (Redis) may answer it."""

    def __call__(self, package: Package) -> Awaitable[Lease]: ...


class SessionGate(TypingProtocol):
    def __call__(self, package: Package, rules: Rules) -> None: ...


async def _no_limits(package: Package) -> Lease:
    return NO_LEASE


def _no_sessions(package: Package, rules: Rules) -> None:
    return None


def _pool_empty(org: Org) -> bool:
    return org.credits is not None and org.credits <= 0


@dataclass(frozen=True, slots=True)
class DestinationPolicy:
    allow_private: bool = False
    allow_ports: frozenset[int] = frozenset()

    def check_port(self, port: int) -> None:
        if port in MAIL_PORTS and port not in self.allow_ports:
            raise GatewayError(Code.DISALLOWED, f"Destination port {port} not allowed")

    def check_address(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
        if self.allow_private:
            return
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if not ip.is_global or ip.is_multicast:
            raise GatewayError(Code.DISALLOWED, f"Destination {ip} not allowed")

    def check(self, target: Target) -> None:
        self.check_port(target.port)
        ip = parse_ip(target.host)
        if ip is None:
            name = target.host.rstrip(".").lower()
            if not self.allow_private and (name == "localhost" or name.endswith(".localhost")):
                raise GatewayError(Code.DISALLOWED, f"Destination {target.host} not allowed")
            return
        self.check_address(ip)


@dataclass(slots=True)
class Admission:
    directory: Directory
    destinations: DestinationPolicy = field(default_factory=DestinationPolicy)
    limits: LimitGate = _no_limits
    sessions: SessionGate = _no_sessions
    # gate 2's view of a pool: the live one counts bytes relayed but not yet debited
    credits_exhausted: Callable[[Org], bool] = _pool_empty
    # brute-force defence: a blocked address is refused before any key is looked at
    throttle: AuthThrottle | None = None
    # gate 4's memo (see PARSED_CACHE_SIZE); valid for one catalogue object, emptied when the
    # directory's catalogue is replaced. A package change needs no hook: its entitlements
    # are part of the key, and every other gate reads the package afresh per request.
    _parsed: dict[tuple[str, frozenset[str] | None, frozenset[Network]], _Parsed] = field(
        default_factory=dict, init=False, repr=False
    )
    _parsed_catalogue: Catalogue | None = field(default=None, init=False, repr=False)

    # -- gates 1 and 2 ----------------------------------------------------------------------
    def authenticate(
        self, credentials: tuple[str, str] | None, client_ip: str, key_hash: str | None = None
    ) -> Identity:
        """Gates 1 and 2. `key_hash`: the password's `hash_key`, when the caller has it (a
        kept-alive connection repeating its credentials); the key is then not hashed again."""
        throttle = self.throttle
        if throttle is not None and throttle.blocked(client_ip):
            raise GatewayError(Code.AUTH_THROTTLED)
        try:
            identity = self._identify(credentials, client_ip, key_hash)
        except GatewayError as exc:
            if throttle is not None and exc.code is Code.AUTH_FAILED:
                throttle.failed(client_ip)
            raise
        try:
            self._check_state(identity.package)
        except GatewayError as exc:
            exc.package_id = identity.package.id
            raise
        return identity

    def _by_address(self, client_ip: str) -> Package | None:
        """The package an allowlisted address alone authenticates: not a `key` one."""
        for package in self.directory.packages_for_ip(client_ip):
            if package.auth_mode is not AuthMode.KEY:
                return package
        return None

    def _identify(
        self, credentials: tuple[str, str] | None, client_ip: str, key_hash: str | None
    ) -> Identity:
        identity = self._identify_package(credentials, client_ip, key_hash)
        username = identity.username
        if is_legacy(username) and legacy_package_id(username) != identity.package.id:
            err = GatewayError(Code.AUTH_FAILED, "The username names another package")
            err.package_id = identity.package.id
            raise err
        return identity

    def _identify_package(
        self, credentials: tuple[str, str] | None, client_ip: str, key_hash: str | None
    ) -> Identity:
        if credentials is None:
            # A `key` package answers 407 here even to its allowlisted addresses: clients
            # that send credentials only when asked (browsers, urllib) then send them.
            package = self._by_address(client_ip)
            if package is None:
                raise GatewayError(Code.ERR_AUTH_REQUIRED)
            return Identity(package, ANY_RULES)
        username, key = credentials
        if key == "":
            # IP auth with rules in the username: the client IP names the package.
            package = self._by_address(client_ip)
            if package is None:
                raise GatewayError(Code.AUTH_FAILED)
            return Identity(package, username)
        directory = self.directory
        if key_hash is None:
            package = directory.package_by_key(key)
        else:
            package = directory.package_by_hash(key_hash)
        if package is None:
            raise GatewayError(Code.AUTH_FAILED)
        if package.auth_mode is AuthMode.IP:
            err = GatewayError(Code.AUTH_FAILED, "This package authenticates by address only")
            err.package_id = package.id
            raise err
        if not package.allows_ip(client_ip):
            err = GatewayError(Code.IP_NOT_ALLOWED, f"Client IP {client_ip} not in allowlist")
            err.package_id = package.id
            raise err
        return Identity(package, username)

    def _check_state(self, package: Package) -> None:
        if package.status is PackageStatus.SUSPENDED:
            raise GatewayError(Code.PACKAGE_SUSPENDED)
        if package.status is PackageStatus.PAUSED:
            raise GatewayError(Code.PACKAGE_PAUSED)
        org = self.directory.org(package.org_id)
        if org is None:
            raise GatewayError(Code.PACKAGE_SUSPENDED, "Organization no longer exists")
        if self.credits_exhausted(org):
            raise GatewayError(Code.PACKAGE_NO_CREDITS)

    # -- gates 3 to 6 -----------------------------------------------------------------------
    async def authorize(self, identity: Identity, protocol: Protocol, target: Target) -> Admitted:
        """Gates 3 to 6. The returned lease is the caller's to release."""
        try:
            return await self._authorize(identity, protocol, target)
        except GatewayError as exc:
            exc.package_id = identity.package.id
            raise

    async def _authorize(self, identity: Identity, protocol: Protocol, target: Target) -> Admitted:
        package = identity.package
        if protocol not in package.protocols:
            raise GatewayError(Code.DISALLOWED, f"Protocol {protocol} not in allowed list")
        self.destinations.check(target)
        rules, timings, filters = self._rules(identity.username, package)
        lease = await self.limits(package)
        try:
            self.sessions(package, rules)
        except BaseException:
            lease.release()
            raise
        return Admitted(package, rules, target, protocol, filters, lease=lease, timings=timings)

    def _rules(self, username: str, package: Package) -> _Parsed:
        """Gate 4, memoised: parsing is a pure function of the username, the package's
        entitlements and the catalogue. A refusal is not memoised (it raises each time)."""
        catalogue = self.directory.catalogue
        cache = self._parsed
        if catalogue is not self._parsed_catalogue:
            cache.clear()
            self._parsed_catalogue = catalogue
        key = (username, package.rules, package.networks)
        hit = cache.get(key)
        if hit is not None:
            return hit
        entitlements = Entitlements(rules=package.rules, networks=package.networks)
        timings = NO_TIMINGS
        if is_legacy(username):
            legacy = parse_legacy(username, catalogue, entitlements)
            rules, timings = legacy.rules, legacy.timings
        else:
            rules = parse_rules(username, catalogue, entitlements)
        parsed = (rules, timings, filters_for(rules, package.networks))
        if len(cache) >= PARSED_CACHE_SIZE:
            cache.clear()
        cache[key] = parsed
        return parsed
