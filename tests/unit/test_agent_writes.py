"""Agent node writes: the pure decision (hub/nodes.py `decide`) and the batched store write
(`sync_agents`) on SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest

from exitgate.hub.nodes import Change, Wanted, decide
from exitgate.model import Network, Node, NodeAttrs, NodeKind, NodeState
from exitgate.store.base import NewNode, NodeUpdate, open_store

US = NodeAttrs(country="us", city="boston", network=Network.MOB)
DE = NodeAttrs(country="de")


def node(state: NodeState, attrs: NodeAttrs = US, ip: str = "10.0.0.1",
         kind: NodeKind = NodeKind.AGENT) -> Node:
    return Node(id="a-1", kind=kind, state=state, attrs=attrs, ip=ip)


def test_decide() -> None:
    live = Wanted(US, "10.0.0.1")
    assert decide(live, None) is Change.ONLINE
    assert decide(live, node(NodeState.ONLINE)) is Change.NONE  # nothing changed
    assert decide(Wanted(DE, "10.0.0.1"), node(NodeState.ONLINE)) is Change.ONLINE
    assert decide(Wanted(US, "10.0.0.2"), node(NodeState.ONLINE)) is Change.ONLINE
    assert decide(live, node(NodeState.OFFLINE)) is Change.ONLINE
    assert decide(live, node(NodeState.DRAINING)) is Change.NONE  # the admin's draining stays
    assert decide(None, node(NodeState.ONLINE)) is Change.OFFLINE
    assert decide(None, node(NodeState.OFFLINE)) is Change.NONE
    assert decide(None, node(NodeState.DRAINING)) is Change.NONE
    assert decide(None, None) is Change.NONE
    assert decide(None, None, first=live) is Change.NEW_OFFLINE  # gone before its write
    for kind in (NodeKind.DIRECT, NodeKind.UPSTREAM):
        assert decide(live, node(NodeState.ONLINE, kind=kind)) is Change.NONE
        assert decide(None, node(NodeState.ONLINE, kind=kind)) is Change.NONE


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = open_store(f"sqlite:///{tmp_path / 'agents.db'}")
    yield s
    s.close()


def agent(agent_id: str, attrs: NodeAttrs = US, state: NodeState = NodeState.ONLINE) -> NewNode:
    return NewNode(kind=NodeKind.AGENT, id=agent_id, attrs=attrs, state=state, ip="10.0.0.9")


def test_sync_agents_in_one_call(store) -> None:  # type: ignore[no-untyped-def]
    check_sync_agents(store)


def check_sync_agents(store) -> None:  # type: ignore[no-untyped-def]
    """Also run on PostgreSQL (tests/e2e/test_agent_registration.py)."""
    direct = store.create_node(NewNode(kind=NodeKind.DIRECT, bind_address="127.0.0.2"))
    store.create_node(agent("drained", DE))
    store.update_node("drained", NodeUpdate(state=NodeState.DRAINING))
    store.create_node(agent("was-on"))
    store.create_node(agent("was-off", state=NodeState.OFFLINE))
    many = [agent(f"new-{i}") for i in range(1200)]  # more than one statement's rows
    found = store.sync_agents(
        [*many, agent("drained", US), agent("blink", state=NodeState.OFFLINE),
         agent(direct.id)],
        ["was-on", "was-off", "unknown"],
    )
    by_id = {n.id: n for n in found}
    assert all(by_id[f"new-{i}"].state is NodeState.ONLINE for i in range(1200))
    assert by_id["new-7"].attrs == US and by_id["new-7"].ip == "10.0.0.9"
    assert by_id["drained"].state is NodeState.DRAINING and by_id["drained"].attrs == US
    assert by_id["blink"].state is NodeState.OFFLINE
    assert by_id["was-on"].state is NodeState.OFFLINE
    assert by_id["was-off"].state is NodeState.OFFLINE
    assert "unknown" not in by_id
    kept = by_id[direct.id]  # another kind's row is never touched
    assert kept.kind is NodeKind.DIRECT and kept.bind_address == "127.0.0.2"
    assert {n.id for n in store.list_nodes()} >= set(by_id)
    assert "boston" in store.geo_names().cities
