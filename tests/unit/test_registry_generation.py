"""The registry counts local writes (so a refresh never applies a snapshot older than one) and
announces them, except routine credit debits."""

from __future__ import annotations

from exitgate.model import Network, Node, NodeAttrs, NodeKind, Org
from exitgate.registry import Registry, Snapshot
from exitgate.store.base import GeoNames


def test_local_writes_count_and_announce_snapshots_do_not() -> None:
    registry = Registry()
    heard: list[int] = []
    registry.on_write = lambda: heard.append(registry.generation)
    registry.put_org(Org("o1", "acme", 10.0))
    registry.put_node(Node("n1", NodeKind.DIRECT, NodeAttrs(country="us", network=Network.DC)))
    registry.remove_node("n1")
    assert registry.generation == 3 and heard == [1, 2, 3]
    registry.put_org(Org("o1", "acme", 9.5), quiet=True)  # a usage flush's debit
    assert registry.generation == 4 and heard == [1, 2, 3]
    registry.apply(Snapshot(orgs=(), packages=(), nodes=(), names=GeoNames()))
    assert registry.generation == 4 and heard == [1, 2, 3]
