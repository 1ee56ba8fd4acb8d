"""The in-memory view of accounts and nodes that the proxy reads: no database per request.

`load(store)` fills it at start; after that `AccountService` writes to the store first and
then puts the stored record here, so a change (a paused package, a rotated key, a drained
node) is effective for the next request. Mutate it from the event-loop thread only: readers
run there too, so no lock is needed. To read the store off the loop (a periodic refresh when
several instances share one database), `Snapshot.read(store)` in a worker thread, then
`apply(snapshot)` on the loop.

Lookups:
- `package_by_key`: a dict keyed by the key's SHA-256, then `hmac.compare_digest` on the
  stored hash (the dict lookup only ever sees a hash, so it leaks nothing about keys);
- `packages_for_ip`: single-address allowlist entries (/32, /128) are a dict; wider
  networks are scanned. The index is rebuilt lazily after a package change.

Node listeners (`on_node_change`) let the routing index follow: they get `(node, id)` after
a put and `(None, id)` after a removal.

The geo catalogue (names the rule language accepts for region/city/isp) is every name a node
ever carried (kept by the store across deletions and restarts) plus configured extra names.
`catalogue` is a `rules.Catalogue` whose identity changes only when its contents change, so
the parser's cache keyed on it stays warm.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from exitgate.model import IPNetwork, Node, NodeAttrs, Org, Package
from exitgate.rules import Catalogue
from exitgate.store.base import AccountStore, GeoNames
from exitgate.store.keys import hash_key

log = logging.getLogger("exitgate.registry")

NodeListener = Callable[[Node | None, str], None]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the registry holds, read from a store in one go."""

    orgs: tuple[Org, ...]
    packages: tuple[Package, ...]
    nodes: tuple[Node, ...]
    names: GeoNames

    @classmethod
    def read(cls, store: AccountStore) -> Snapshot:
        """Blocking: call it in a worker thread when the loop is running.

        Packages are read before organizations: an organization is created before its
        packages, so every package read has its organization in the later read (reading them
        the other way round, a package made in between had no organization: 407 SUSPENDED
        on the other instances until the next refresh)."""
        packages = tuple(store.list_packages())
        nodes = tuple(store.list_nodes())
        orgs = tuple(store.list_orgs())
        return cls(orgs=orgs, packages=packages, nodes=nodes, names=store.geo_names())


class Registry:
    def __init__(
        self,
        *,
        extra_regions: Iterable[str] = (),
        extra_cities: Iterable[str] = (),
        extra_isps: Iterable[str] = (),
    ) -> None:
        self._orgs: dict[str, Org] = {}
        self._packages: dict[str, Package] = {}
        self._by_hash: dict[str, Package] = {}
        self._nodes: dict[str, Node] = {}
        self._listeners: list[NodeListener] = []
        self._ip_index: _IpIndex | None = None
        self._extra = Catalogue(
            frozenset(extra_regions), frozenset(extra_cities), frozenset(extra_isps)
        )
        self._catalogue = self._extra
        self._names = (self._catalogue.regions, self._catalogue.cities, self._catalogue.isps)
        self.generation = 0  # local writes so far (put_*/remove_*; `apply` is not one)
        self.on_write: Callable[[], None] | None = None  # told of each local write

    # filling

    def load(self, store: AccountStore) -> None:
        """Replace everything with the store's contents (blocking; at start)."""
        self.apply(Snapshot.read(store))

    def apply(self, snap: Snapshot) -> None:
        self._orgs = {o.id: o for o in snap.orgs}
        self._packages = {p.id: p for p in snap.packages}
        self._by_hash = {p.key_hash: p for p in snap.packages}
        self._ip_index = None
        old_nodes = self._nodes
        self._nodes = {n.id: n for n in snap.nodes}
        names = Catalogue(
            self._extra.regions | snap.names.regions,
            self._extra.cities | snap.names.cities,
            self._extra.isps | snap.names.isps,
        )
        self._set_catalogue(names.with_attrs(n.attrs for n in snap.nodes))
        for node_id in old_nodes.keys() - self._nodes.keys():
            self._notify(None, node_id)
        for node in snap.nodes:
            if old_nodes.get(node.id) != node:
                self._notify(node, node.id)

    # organizations

    def org(self, org_id: str) -> Org | None:
        return self._orgs.get(org_id)

    def put_org(self, org: Org, *, quiet: bool = False) -> None:
        """`quiet`: a routine change (credits debited by a usage flush) that other instances
        pick up at their next periodic refresh rather than at once."""
        self._orgs[org.id] = org
        self._wrote(announce=not quiet)

    # local writes: counted, so a refresh never applies a snapshot read before one of them

    def _wrote(self, *, announce: bool = True) -> None:
        self.generation += 1
        if announce and self.on_write is not None:
            self.on_write()

    # packages

    def package(self, package_id: str) -> Package | None:
        return self._packages.get(package_id)

    def package_by_key(self, key: str) -> Package | None:
        return self.package_by_hash(hash_key(key))

    def package_by_hash(self, digest: str) -> Package | None:
        """The package whose key hashes to `digest` (`store.keys.hash_key`), if any."""
        package = self._by_hash.get(digest)
        if package is None or not hmac.compare_digest(package.key_hash, digest):
            return None
        return package

    def packages_for_ip(self, ip: str) -> list[Package]:
        """Packages whose (non-empty) allowlist contains `ip`, by package id."""
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return []
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped  # a dual-stack listener reports IPv4 clients as ::ffff:a.b.c.d
        if self._ip_index is None:
            self._ip_index = _IpIndex.build(self._packages.values())
        ids = self._ip_index.lookup(addr)
        return [self._packages[i] for i in sorted(ids)]

    def put_package(self, package: Package) -> None:
        old = self._packages.get(package.id)
        if old is not None and self._by_hash.get(old.key_hash) is old:
            del self._by_hash[old.key_hash]  # a rotated key fails from now on
        self._packages[package.id] = package
        self._by_hash[package.key_hash] = package
        if old is None or old.ip_allowlist != package.ip_allowlist:
            self._ip_index = None
        self._wrote()

    def remove_package(self, package_id: str) -> None:
        old = self._packages.pop(package_id, None)
        if old is not None:
            self._by_hash.pop(old.key_hash, None)
            self._ip_index = None
        self._wrote()

    @property
    def orgs(self) -> Mapping[str, Org]:
        """A read-only live view, id → organization (the webhook watcher walks it)."""
        return MappingProxyType(self._orgs)

    @property
    def packages(self) -> Mapping[str, Package]:
        """A read-only live view, id → package (the webhook watcher walks it)."""
        return MappingProxyType(self._packages)

    # nodes

    @property
    def nodes(self) -> Mapping[str, Node]:
        """A read-only live view, id → node."""
        return MappingProxyType(self._nodes)

    def node(self, node_id: str) -> Node | None:
        return self._nodes.get(node_id)

    def put_node(self, node: Node) -> None:
        """Add or replace a node; listeners hear of it unless nothing changed."""
        if self._nodes.get(node.id) == node:
            return
        self._nodes[node.id] = node
        self._add_names(node.attrs)
        self._notify(node, node.id)
        self._wrote()

    def remove_node(self, node_id: str) -> None:
        if self._nodes.pop(node_id, None) is not None:
            self._notify(None, node_id)
        self._wrote()

    def on_node_change(self, callback: NodeListener) -> Callable[[], None]:
        """Call `callback(node_or_None, node_id)` after each change; returns an unsubscribe."""
        self._listeners.append(callback)

        def unsubscribe() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return unsubscribe

    def _notify(self, node: Node | None, node_id: str) -> None:
        for callback in tuple(self._listeners):
            try:
                callback(node, node_id)
            except Exception:
                # One broken listener must not leave the others (or the writer) half-updated.
                log.exception("node listener failed for %s", node_id)

    # geo catalogue

    @property
    def catalogue(self) -> Catalogue:
        return self._catalogue

    def catalogue_names(self) -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
        """(regions, cities, isps); the same tuple object until a name is added."""
        return self._names

    def set_extra_names(
        self, regions: Iterable[str], cities: Iterable[str], isps: Iterable[str]
    ) -> None:
        """Configured names, on top of node names; node names already seen are kept."""
        self._extra = Catalogue(frozenset(regions), frozenset(cities), frozenset(isps))
        self._set_catalogue(
            Catalogue(
                self._catalogue.regions | self._extra.regions,
                self._catalogue.cities | self._extra.cities,
                self._catalogue.isps | self._extra.isps,
            )
        )

    def _add_names(self, attrs: NodeAttrs) -> None:
        self._set_catalogue(self._catalogue.with_attrs((attrs,)))

    def _set_catalogue(self, catalogue: Catalogue) -> None:
        if catalogue is self._catalogue or catalogue == self._catalogue:
            return  # keep the old object: identity means "unchanged"
        self._catalogue = catalogue
        self._names = (catalogue.regions, catalogue.cities, catalogue.isps)


@dataclass(frozen=True, slots=True)
class _IpIndex:
    hosts: dict[IPAddress, frozenset[str]]
    networks: tuple[tuple[IPNetwork, str], ...]

    @classmethod
    def build(cls, packages: Iterable[Package]) -> _IpIndex:
        hosts: dict[IPAddress, set[str]] = {}
        networks: list[tuple[IPNetwork, str]] = []
        for package in packages:
            for net in package.ip_allowlist:
                if net.num_addresses == 1:
                    hosts.setdefault(net.network_address, set()).add(package.id)
                else:
                    networks.append((net, package.id))
        return cls({a: frozenset(ids) for a, ids in hosts.items()}, tuple(networks))

    def lookup(self, addr: IPAddress) -> set[str]:
        found = set(self.hosts.get(addr, ()))
        for net, package_id in self.networks:
            if net.version == addr.version and addr in net:
                found.add(package_id)
        return found
