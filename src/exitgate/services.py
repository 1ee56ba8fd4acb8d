"""Account operations for the admin API (and the CLI through it): store first, then registry.

Each write runs the blocking store call in a worker thread, then puts the stored record into
the `Registry` on the loop, so the proxy sees the change on its next request. Writes hold one
`asyncio.Lock` from the store call to the registry update: without it two concurrent updates
of one package could reach the registry in the opposite order from the database. Admin writes
are rare, so one lock costs nothing. Reads go to the store (the source of truth).

Input validation is the API schemas' job (422 naming the field); this layer trusts its typed
arguments and raises `NotFound` for unknown ids.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from exitgate.model import Network, Node, NodeKind, NodeState, Org, Package
from exitgate.registry import Registry
from exitgate.store.base import (
    AccountStore,
    NewNode,
    NewPackage,
    NodeUpdate,
    OrgUpdate,
    PackageUpdate,
)
from exitgate.store.keys import hash_key, new_key


@dataclass(frozen=True, slots=True)
class NodeFilter:
    """Node list filters; None: any. Names are compared as stored (lowercase, `_`)."""

    kind: NodeKind | None = None
    state: NodeState | None = None
    country: str | None = None
    region: str | None = None
    city: str | None = None
    isp: str | None = None
    asn: int | None = None
    network: Network | None = None

    def matches(self, node: Node) -> bool:
        a = node.attrs
        checks = (
            (self.kind, node.kind),
            (self.state, node.state),
            (self.country, a.country),
            (self.region, a.region),
            (self.city, a.city),
            (self.isp, a.isp),
            (self.asn, a.asn),
            (self.network, a.network),
        )
        return all(want is None or want == have for want, have in checks)


class AccountService:
    def __init__(self, store: AccountStore, registry: Registry) -> None:
        self.store = store
        self.registry = registry
        self._write = asyncio.Lock()

    # organizations

    async def create_org(self, name: str, credits: float | None) -> Org:
        async with self._write:
            org = await asyncio.to_thread(self.store.create_org, name, credits)
            self.registry.put_org(org)
        return org

    async def get_org(self, org_id: str) -> Org:
        return await asyncio.to_thread(self.store.get_org, org_id)

    async def update_org(self, org_id: str, update: OrgUpdate) -> Org:
        async with self._write:
            org = await asyncio.to_thread(self.store.update_org, org_id, update)
            self.registry.put_org(org)
        return org

    async def add_credits(self, org_id: str, delta: float) -> Org:
        async with self._write:
            org = await asyncio.to_thread(self.store.add_credits, org_id, delta)
            self.registry.put_org(org)
        return org

    async def list_orgs(self) -> list[Org]:
        return await asyncio.to_thread(self.store.list_orgs)

    # packages

    async def create_package(self, new: NewPackage) -> tuple[Package, str]:
        """The stored package and its key: the only time the key exists in clear."""
        key = new_key()
        async with self._write:
            package = await asyncio.to_thread(self.store.create_package, new, hash_key(key))
            self.registry.put_package(package)
        return package, key

    async def get_package(self, package_id: str) -> Package:
        return await asyncio.to_thread(self.store.get_package, package_id)

    async def update_package(self, package_id: str, update: PackageUpdate) -> Package:
        async with self._write:
            package = await asyncio.to_thread(self.store.update_package, package_id, update)
            self.registry.put_package(package)
        return package

    async def rotate_key(self, package_id: str) -> str:
        """A new key for the package; the old one fails from the next request on."""
        key = new_key()
        async with self._write:
            package = await asyncio.to_thread(self.store.set_key_hash, package_id, hash_key(key))
            self.registry.put_package(package)
        return key

    async def list_packages(self, org_id: str | None = None) -> list[Package]:
        return await asyncio.to_thread(self.store.list_packages, org_id)

    # nodes

    async def create_node(self, new: NewNode) -> Node:
        async with self._write:
            node = await asyncio.to_thread(self.store.create_node, new)
            self.registry.put_node(node)
        return node

    async def get_node(self, node_id: str) -> Node:
        return await asyncio.to_thread(self.store.get_node, node_id)

    async def list_nodes(self, filters: NodeFilter | None = None) -> list[Node]:
        found = await asyncio.to_thread(self.store.list_nodes)
        if filters is None:
            return found
        return [n for n in found if filters.matches(n)]

    async def update_node(self, node_id: str, update: NodeUpdate) -> Node:
        async with self._write:
            node = await asyncio.to_thread(self.store.update_node, node_id, update)
            self.registry.put_node(node)
        return node

    async def delete_node(self, node_id: str) -> None:
        async with self._write:
            await asyncio.to_thread(self.store.delete_node, node_id)
            self.registry.remove_node(node_id)
