"""The account store: organizations, packages and nodes, behind one narrow protocol.

Every method is synchronous and is one transaction; the async edges call them through
`asyncio.to_thread`. The proxy never calls the store per request: it reads the in-memory
`Registry`, which the services keep in step with each write.

Creates take a `New*` value and return the stored record with its generated id. Updates take
a `*Update` value whose fields default to `UNSET`, so "leave alone" differs from "set to None"
(`credits=None` means unlimited, `rps=None` means no limit) and only the named columns are
written: a concurrent credit debit is never overwritten by a rename.

The store is chosen by URL with `open_store` (`sqlite:///path`, `sqlite://` in memory,
`postgresql://...`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final, Protocol

from exitgate.model import (
    ALL_NETWORKS,
    ALL_PROTOCOLS,
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


class AccountStore(Protocol):
    """Accounts and nodes. Reads of a missing id raise `NotFound`; so do updates."""

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
    def geo_names(self) -> GeoNames: ...

    def close(self) -> None: ...


def open_store(url: str) -> AccountStore:
    """The store for `url`: `sqlite:///path`, `sqlite://` (in memory), `postgresql://...`."""
    from exitgate.store.sql import SqlStore

    return SqlStore(url)
