"""Live traffic accounts: exact byte counts per package, traffic caps and credits, per chunk.

Theory of operation. Every relayed byte is ticked exactly once, by the relay, on a
`NetworkAccount`: the bytes of one package through nodes of one network (the network sets the
price). The edge looks the account up once per connection (`Metering.open`) and hands its
bound methods to the transports (`Conn.tap`): a tick is two int adds and one compare on
objects it already holds, no lookup:

    tick_up(n):  net.bytes_up += n;  pkg.used += n;  if pkg.used >= pkg.check_at: settle(pkg)

`PackageAccount.used` is the package's live total (durable bytes from the store plus what
this process relayed since) and `check_at` the next point where it must look around.
`settle` (rare: at most every `slice_bytes`, default 256 KiB, of the package's traffic)

1. folds the package's new bytes into its organization's `pending` bytes per network: relayed
   but not yet debited from the credit pool;
2. compares `used` with the traffic cap and the organization's credits *minus the cost of
   pending bytes* with zero;
3. when either is exhausted, calls the stop callbacks of every open connection of the package
   (cap) or of every package of the organization (credits), once each;
4. otherwise sets `check_at = used + min(slice, bytes left to the cap, bytes the credits still
   buy at the dearest price)`.

So a package crosses its cap by at most the chunk that crossed it (one transport read, at most
256 KiB), wherever its connections are; an organization's credits are crossed by at most one
slice plus one chunk per active package. Both are well inside SPEC 7's 1 MiB.

The credit view. The registry's `Org.credits` is the store's value; the usage flush
(`services.UsageService`, every second) debits the store, puts the returned `Org` in the
registry and calls `committed`, which drops the debited bytes from `pending`, all in one
event-loop step. In between, `credits_left(org)` = `org.credits` - cost(`pending`): gate 2
reads that (`out_of_credits`), so the pool it sees is current to the last settle.

The traffic cap is lifetime bytes (up + down) against `Limits.traffic_bytes`. `load` seeds
`used` from the store's totals at start, and each flush re-bases it on the totals the store
returns (every instance's flushes included), so a restart or a second instance never resets it.

Pure: no I/O and no clock. One event-loop thread calls everything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType

from exitgate.errors import Code, GatewayError
from exitgate.model import Network, Org, Package
from exitgate.store.base import UsageTotals

GB = 10**9  # credits are priced per 10^9 metered bytes
SLICE = 256 * 1024
DEFAULT_PRICE = 1.0

StopCallback = Callable[[GatewayError], None]
OrgLookup = Callable[[str], Org | None]


def cap_reached(cap: int) -> GatewayError:
    return GatewayError(Code.TRAFFIC_LIMIT_EXCEEDED, f"Traffic limit reached ({cap} bytes)")


class NetworkAccount:
    """One package's bytes through nodes of one network; the relay ticks it per chunk."""

    __slots__ = (
        "bytes_down",
        "bytes_up",
        "costed",
        "network",
        "package",
        "taken_down",
        "taken_up",
    )

    def __init__(self, package: PackageAccount, network: Network) -> None:
        self.package = package
        self.network = network
        self.bytes_up = 0  # client → target, since this process started
        self.bytes_down = 0  # target → client
        self.costed = 0  # bytes (up + down) already folded into the org's pending bytes
        self.taken_up = 0  # bytes already handed to the usage flush
        self.taken_down = 0

    def tick_up(self, n: int) -> None:
        self.bytes_up += n
        p = self.package
        p.used += n
        if p.used >= p.check_at:
            p.metering.settle(p)

    def tick_down(self, n: int) -> None:
        self.bytes_down += n
        p = self.package
        p.used += n
        if p.used >= p.check_at:
            p.metering.settle(p)


class OrgAccount:
    __slots__ = ("id", "packages", "pending")

    def __init__(self, org_id: str) -> None:
        self.id = org_id
        self.pending: dict[Network, int] = {}  # relayed bytes not yet debited, by network
        self.packages: list[PackageAccount] = []


class PackageAccount:
    __slots__ = ("base", "cap", "check_at", "id", "metering", "nets", "org", "used", "watchers")

    def __init__(
        self, metering: Metering, package_id: str, org: OrgAccount, cap: int | None, base: int
    ) -> None:
        self.metering = metering
        self.id = package_id
        self.org = org
        self.cap = cap
        self.base = base  # durable bytes, as the store last reported them
        self.used = base  # live total: base + bytes relayed since (see `committed`)
        self.check_at = base  # the first tick settles
        self.nets: dict[Network, NetworkAccount] = {}
        self.watchers: set[Meter] = set()

    def network(self, network: Network) -> NetworkAccount:
        net = self.nets.get(network)
        if net is None:
            net = self.nets[network] = NetworkAccount(self, network)
        return net

    @property
    def unflushed(self) -> tuple[int, int]:
        """(up, down) bytes relayed and not yet handed to the usage flush."""
        up = sum(n.bytes_up - n.taken_up for n in self.nets.values())
        down = sum(n.bytes_down - n.taken_down for n in self.nets.values())
        return up, down


class Meter:
    """What the edge holds for one relayed connection: the tick functions for its two
    transports and its registration for a stop. `close()` (or `with`) unregisters; safe twice.

    The ticks inline `NetworkAccount.tick_*` and also count the connection's own bytes
    (`up`, `down`, for its access-log line): still one call per chunk."""

    __slots__ = ("account", "down", "net", "on_stop", "up")

    def __init__(self, net: NetworkAccount, on_stop: StopCallback | None) -> None:
        self.account = net.package
        self.net = net
        self.on_stop = on_stop
        self.up = 0  # this connection's bytes, client → target
        self.down = 0

    def tick_up(self, n: int) -> None:
        self.up += n
        self.net.bytes_up += n
        p = self.account
        p.used += n
        if p.used >= p.check_at:
            p.metering.settle(p)

    def tick_down(self, n: int) -> None:
        self.down += n
        self.net.bytes_down += n
        p = self.account
        p.used += n
        if p.used >= p.check_at:
            p.metering.settle(p)

    def close(self) -> None:
        self.account.watchers.discard(self)
        # The stop callback holds the connections whose taps hold this meter: let go of it,
        # or they stay a reference cycle for the cyclic collector (in the compiled build the
        # callback's closure also keeps every local of the function that made it).
        self.on_stop = None

    def __enter__(self) -> Meter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class Traffic:
    """Bytes one flush takes from one (package, network) account."""

    package_id: str
    org_id: str
    network: Network
    bytes_up: int
    bytes_down: int


class Metering:
    def __init__(
        self,
        orgs: OrgLookup,
        prices: Mapping[str, float] | None = None,
        *,
        slice_bytes: int = SLICE,
    ) -> None:
        self._orgs = orgs
        given = {Network(k): float(v) for k, v in (prices or {}).items()}
        self.prices: dict[Network, float] = {n: given.get(n, DEFAULT_PRICE) for n in Network}
        self._dearest = max(self.prices.values())
        self.slice = slice_bytes
        self._packages: dict[str, PackageAccount] = {}
        self._org_accounts: dict[str, OrgAccount] = {}
        self._loaded: dict[str, int] = {}

    # -- accounts -----------------------------------------------------------------------------
    def load(self, used: Mapping[str, int]) -> None:
        """Durable bytes used per package (the store's totals), at start."""
        for package_id, n in used.items():
            acct = self._packages.get(package_id)
            if acct is None:
                self._loaded[package_id] = n
            else:
                acct.used += n - acct.base
                acct.base = n
                acct.check_at = acct.used  # look again at the next tick

    def account(self, package: Package) -> PackageAccount:
        """The package's account, its cap following the package's current limits."""
        acct = self._packages.get(package.id)
        if acct is None:
            org = self._org_accounts.get(package.org_id)
            if org is None:
                org = self._org_accounts[package.org_id] = OrgAccount(package.org_id)
            base = self._loaded.pop(package.id, 0)
            acct = PackageAccount(self, package.id, org, package.limits.traffic_bytes, base)
            self._packages[package.id] = acct
            org.packages.append(acct)
        elif acct.cap != package.limits.traffic_bytes:
            acct.cap = package.limits.traffic_bytes
            acct.check_at = acct.used  # a lowered cap is enforced from the next tick
        return acct

    def open(
        self, package: Package, network: Network, on_stop: StopCallback | None = None
    ) -> Meter:
        """A meter for one connection relayed through a node of `network`. `on_stop(err)` is
        called (once, from inside a tick) when the package goes over its cap
        (TRAFFIC_LIMIT_EXCEEDED) or its organization out of credits (PACKAGE_NO_CREDITS):
        close the connection there."""
        meter = Meter(self.account(package).network(network), on_stop)
        if on_stop is not None:
            meter.account.watchers.add(meter)
        return meter

    # -- checks -------------------------------------------------------------------------------
    def check(self, package: Package) -> None:
        """Gate 5, traffic: TRAFFIC_LIMIT_EXCEEDED when the package is at or over its cap."""
        acct = self.account(package)
        if acct.cap is not None and acct.used >= acct.cap:
            raise cap_reached(acct.cap)

    def credits_left(self, org: Org) -> float | None:
        """The pool minus the cost of bytes relayed and not yet debited; None: unlimited."""
        if org.credits is None:
            return None
        acct = self._org_accounts.get(org.id)
        return org.credits - (self._cost(acct.pending) if acct is not None else 0.0)

    def out_of_credits(self, org: Org) -> bool:
        """Gate 2: is the organization's pool at or below zero, live debits included?"""
        left = self.credits_left(org)
        return left is not None and left <= 0

    def used(self, package_id: str) -> int:
        """The package's metered bytes so far (durable + live)."""
        acct = self._packages.get(package_id)
        return acct.used if acct is not None else self._loaded.get(package_id, 0)

    def unflushed(self, package_id: str) -> tuple[int, int]:
        acct = self._packages.get(package_id)
        return acct.unflushed if acct is not None else (0, 0)

    def relayed(self) -> tuple[int, int]:
        """(up, down) bytes ticked since this process started, every account: the live
        byte totals of `/metrics`, summed at read time so a tick pays nothing for them."""
        up = down = 0
        for acct in self._packages.values():
            for net in acct.nets.values():
                up += net.bytes_up
                down += net.bytes_down
        return up, down

    def price(self, network: Network) -> float:
        return self.prices[network]

    def _cost(self, pending: Mapping[Network, int]) -> float:
        return sum(n * self.prices[net] for net, n in pending.items()) / GB

    # -- settling -----------------------------------------------------------------------------
    def _fold(self, acct: PackageAccount) -> None:
        pending = acct.org.pending
        for net in acct.nets.values():
            total = net.bytes_up + net.bytes_down
            if total != net.costed:
                pending[net.network] = pending.get(net.network, 0) + total - net.costed
                net.costed = total

    def settle(self, acct: PackageAccount) -> GatewayError | None:
        """Fold, compare, stop or set the next check (see the module docstring)."""
        self._fold(acct)
        step = self.slice
        if acct.cap is not None:
            left = acct.cap - acct.used
            if left <= 0:
                acct.check_at = acct.used + 1
                err = cap_reached(acct.cap)
                self._stop((acct,), err)
                return err
            step = min(step, left)
        org = self._orgs(acct.org.id)
        credits = self.credits_left(org) if org is not None else None
        if credits is not None:
            if credits <= 0:
                acct.check_at = acct.used + 1
                err = GatewayError(Code.PACKAGE_NO_CREDITS)
                self._stop(acct.org.packages, err)
                return err
            if self._dearest > 0:
                step = min(step, max(1, int(credits * GB / self._dearest)))
        acct.check_at = acct.used + step
        return None

    def _stop(self, accounts: Iterable[PackageAccount], err: GatewayError) -> None:
        for acct in accounts:
            meters, acct.watchers = acct.watchers, set()
            for meter in meters:
                if meter.on_stop is not None:
                    meter.on_stop(err)

    # -- the usage flush ----------------------------------------------------------------------
    def take(self) -> list[Traffic]:
        """Hand every account's bytes since the last take to a flush (costs folded first)."""
        out: list[Traffic] = []
        for acct in self._packages.values():
            self._fold(acct)
            for net in acct.nets.values():
                up = net.bytes_up - net.taken_up
                down = net.bytes_down - net.taken_down
                if up or down:
                    out.append(Traffic(acct.id, acct.org.id, net.network, up, down))
                    net.taken_up = net.bytes_up
                    net.taken_down = net.bytes_down
        return out

    def cost(self, traffic: Traffic) -> float:
        return (traffic.bytes_up + traffic.bytes_down) * self.prices[traffic.network] / GB

    def committed(self, traffic: Iterable[Traffic], totals: Mapping[str, UsageTotals]) -> None:
        """A flush reached the store and the registry holds the debited orgs: drop the debited
        bytes from `pending` and re-base `used` on the store's totals."""
        flushed: dict[str, int] = {}
        for t in traffic:
            n = t.bytes_up + t.bytes_down
            flushed[t.package_id] = flushed.get(t.package_id, 0) + n
            org = self._org_accounts.get(t.org_id)
            if org is not None:
                left = org.pending.get(t.network, 0) - n
                if left:
                    org.pending[t.network] = left
                else:
                    org.pending.pop(t.network, None)
        for package_id, total in totals.items():
            acct = self._packages.get(package_id)
            if acct is None:
                self._loaded[package_id] = total.traffic
                continue
            # The store's total has this flush and every other instance's in it; the bytes
            # relayed since the take are on top.
            acct.used += total.traffic - acct.base - flushed.get(package_id, 0)
            acct.base = total.traffic
