"""The account store: organizations, packages, nodes and usage, behind one narrow protocol.

Every method is synchronous and is one transaction; the async edges call them through
`asyncio.to_thread`. The proxy never calls the store per request: it reads the in-memory
`Registry`, which the services keep in step with each write.

Creates take a `New*` value and return the stored record with its generated id. Updates take
a `*Update` value whose fields default to `UNSET`, so "leave alone" differs from "set to None"
(`credits=None` means unlimited, `rps=None` means no limit) and only the named columns are
written: a concurrent credit debit is never overwritten by a rename.

Usage is hourly buckets per package (`usage_hours`, `usage_errors`) and running totals per
package (`usage_totals`). `record_usage` writes one flush of the usage service in one
transaction: per (package, hour) one atomic increment (`INSERT ... ON CONFLICT DO UPDATE SET
n = n + excluded.n`), the totals the same way, and the credit debits (`credits = credits - x`),
so several gateway instances sharing one database never lose each other's counts, and a crash
leaves either the whole flush or none of it. Hours are UTC epoch seconds at the hour's start.

The store is chosen by URL with `open_store` (`sqlite:///path`, `sqlite://` in memory,
`postgresql://...`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from exitgate.model import (
    ALL_NETWORKS,
    ALL_PROTOCOLS,
    AuthMode,
    AutoBan,
    IPNetwork,
    Limits,
    Network,
    Node,
    NodeAttrs,
    NodeKind,
    NodeState,
    Org,
    Package,
    PackageStatus,
)
from exitgate.model import (
    Protocol as ClientProtocol,
)


class NotFound(LookupError):
    """No record of `kind` ("org", "package", "node") with id `id`."""

    def __init__(self, kind: str, id: str) -> None:
        self.kind = kind
        self.id = id
        super().__init__(f"{kind} not found: {id}")


class Unset(enum.Enum):
    """The type of `UNSET`: a field of an update that is left alone."""

    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = Unset.UNSET


@dataclass(frozen=True, slots=True)
class OrgUpdate:
    name: str | Unset = UNSET
    credits: float | Unset | None = UNSET


@dataclass(frozen=True, slots=True)
class NewPackage:
    org_id: str
    name: str = ""
    status: PackageStatus = PackageStatus.ACTIVE
    limits: Limits = field(default_factory=Limits)
    ip_allowlist: tuple[IPNetwork, ...] = ()
    protocols: frozenset[ClientProtocol] = ALL_PROTOCOLS
    networks: frozenset[Network] = ALL_NETWORKS
    rules: frozenset[str] | None = None
    auth_mode: AuthMode = AuthMode.KEY_OR_IP
    autoban: AutoBan | None = None


@dataclass(frozen=True, slots=True)
class PackageUpdate:
    name: str | Unset = UNSET
    status: PackageStatus | Unset = UNSET
    rps_limit: int | Unset | None = UNSET
    concurrency_limit: int | Unset | None = UNSET
    traffic_limit_bytes: int | Unset | None = UNSET
    ip_allowlist: tuple[IPNetwork, ...] | Unset = UNSET
    protocols: frozenset[ClientProtocol] | Unset = UNSET
    networks: frozenset[Network] | Unset = UNSET
    rules: frozenset[str] | Unset | None = UNSET
    auth_mode: AuthMode | Unset = UNSET
    autoban: AutoBan | Unset | None = UNSET


@dataclass(frozen=True, slots=True)
class NewNode:
    kind: NodeKind
    attrs: NodeAttrs = field(default_factory=NodeAttrs)
    state: NodeState = NodeState.ONLINE
    url: str = ""
    bind_address: str = ""
    ip: str = ""
    id: str = ""  # empty: generated; agents may bring a stable id of their own


@dataclass(frozen=True, slots=True)
class NodeUpdate:
    state: NodeState | Unset = UNSET
    country: str | Unset = UNSET
    region: str | Unset = UNSET
    city: str | Unset = UNSET
    isp: str | Unset = UNSET
    asn: int | Unset = UNSET
    network: Network | Unset = UNSET
    url: str | Unset = UNSET
    bind_address: str | Unset = UNSET
    ip: str | Unset = UNSET


@dataclass(frozen=True, slots=True)
class GeoNames:
    """Every region, city and ISP name any node has ever carried (survives node deletion)."""

    regions: frozenset[str] = frozenset()
    cities: frozenset[str] = frozenset()
    isps: frozenset[str] = frozenset()


HOUR = 3600


def hour_of(t: float) -> int:
    """The start of the UTC hour holding epoch time `t`, in epoch seconds."""
    return int(t // HOUR) * HOUR


@dataclass(frozen=True, slots=True)
class UsageDelta:
    """What one flush adds to one package's bucket for one hour."""

    package_id: str
    hour: int  # epoch seconds, start of the UTC hour
    bytes_up: int = 0  # client → target
    bytes_down: int = 0  # target → client
    requests: int = 0
    errors: Mapping[str, int] = field(default_factory=dict)  # code → count

    @property
    def empty(self) -> bool:
        return not (self.bytes_up or self.bytes_down or self.requests or any(self.errors.values()))


@dataclass(frozen=True, slots=True)
class UsageTotals:
    bytes_up: int = 0
    bytes_down: int = 0
    requests: int = 0

    @property
    def traffic(self) -> int:
        """Metered bytes, both directions: what a traffic cap counts."""
        return self.bytes_up + self.bytes_down

    def __add__(self, other: UsageTotals) -> UsageTotals:
        return UsageTotals(
            self.bytes_up + other.bytes_up,
            self.bytes_down + other.bytes_down,
            self.requests + other.requests,
        )

    def as_dict(self) -> dict[str, int]:
        return {"bytes_up": self.bytes_up, "bytes_down": self.bytes_down, "requests": self.requests}


@dataclass(frozen=True, slots=True)
class UsageBucket:
    """One package's usage in one hour."""

    hour: int  # epoch seconds, start of the UTC hour
    bytes_up: int = 0
    bytes_down: int = 0
    requests: int = 0
    errors: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UsageRecorded:
    """What `record_usage` left in the store: the touched packages' totals (with every other
    instance's flushes included) and the debited organizations as they are now."""

    totals: Mapping[str, UsageTotals]
    orgs: Sequence[Org]


class AccountStore(Protocol):
    """Accounts, nodes and usage. Reads of a missing id raise `NotFound`; so do updates."""

    # organizations
    def create_org(self, name: str, credits: float | None) -> Org: ...
    def get_org(self, org_id: str) -> Org: ...
    def update_org(self, org_id: str, update: OrgUpdate) -> Org: ...
    def add_credits(self, org_id: str, delta: float) -> Org:
        """Atomically add `delta` (negative: debit) to a limited pool; unlimited stays None."""
        ...

    def list_orgs(self) -> list[Org]: ...

    # packages
    def create_package(self, new: NewPackage, key_hash: str) -> Package:
        """NotFound("org", ...) when `new.org_id` does not exist."""
        ...

    def get_package(self, package_id: str) -> Package: ...
    def update_package(self, package_id: str, update: PackageUpdate) -> Package: ...
    def set_key_hash(self, package_id: str, key_hash: str) -> Package: ...
    def list_packages(self, org_id: str | None = None) -> list[Package]: ...

    # nodes
    def create_node(self, new: NewNode) -> Node: ...
    def get_node(self, node_id: str) -> Node: ...
    def update_node(self, node_id: str, update: NodeUpdate) -> Node: ...
    def delete_node(self, node_id: str) -> None: ...
    def list_nodes(self) -> list[Node]: ...
    def sync_agents(self, online: Sequence[NewNode], offline: Sequence[str]) -> list[Node]:
        """Agent nodes in one transaction: `online` upserted (an admin's draining kept),
        `offline` set offline where online; never another kind's row. The nodes after."""
        ...
    def geo_names(self) -> GeoNames: ...

    # usage
    def record_usage(
        self, deltas: Sequence[UsageDelta], debits: Mapping[str, float]
    ) -> UsageRecorded:
        """One transaction: add each delta to its (package, hour) bucket and to the package's
        totals, and subtract `debits[org_id]` credits from each limited pool (unlimited pools
        stay unlimited; unknown orgs are skipped). At most one delta per (package, hour)."""
        ...

    def usage_totals(self, package_ids: Sequence[str] | None = None) -> dict[str, UsageTotals]:
        """Totals by package id (all packages with usage when None); absent: no usage yet."""
        ...

    def usage_buckets(
        self,
        package_id: str,
        since: int | None = None,
        until: int | None = None,
        limit: int = 1000,
    ) -> list[UsageBucket]:
        """Buckets whose hour starts at or after `since` and before `until` (epoch seconds),
        newest first, at most `limit`."""
        ...

    def close(self) -> None: ...


def open_store(url: str) -> AccountStore:
    """The store for `url`: `sqlite:///path`, `sqlite://` (in memory), `postgresql://...`."""
    from exitgate.store.sql import SqlStore

    return SqlStore(url)
