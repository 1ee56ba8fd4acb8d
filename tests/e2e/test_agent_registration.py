"""Batched agent registration (issue 9): many agents connecting at once all become online
nodes in a few store transactions, and an agent gone right after connecting ends offline."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from exitgate.model import NodeKind, NodeState
from exitgate.store.base import open_store
from tests.support.agents import (
    HUB_TOKEN,
    RawAgent,
    attach_hub,
    detach_hub,
    hello_for,
    node_state,
    raw_agent,
    wait_until,
)
from tests.support.gateway import GatewayThread
from tests.unit.test_agent_writes import check_sync_agents


@pytest.fixture
def agw(tmp_path: Path) -> Iterator[GatewayThread]:
    gateway = GatewayThread(tmp_path, hub={"token": HUB_TOKEN})
    attach_hub(gateway)
    yield gateway
    detach_hub(gateway)
    gateway.stop()


def online(gw: GatewayThread, prefix: str) -> set[str]:
    return {
        n.id for n in list(gw.gateway.registry.nodes.values())
        if n.kind is NodeKind.AGENT and n.state is NodeState.ONLINE and n.id.startswith(prefix)
    }


async def test_a_burst_of_agents_all_become_online_in_few_writes(agw: GatewayThread) -> None:
    hub = attach_hub(agw)
    before = hub.book.batches
    count = 300
    agents: list[RawAgent] = await asyncio.gather(
        *(raw_agent(hub, hello_for(f"burst-{i}"), answer=True) for i in range(count))
    )
    try:
        replies = await asyncio.gather(*(asyncio.wait_for(a.reply, 10) for a in agents))
        assert all(r.startswith(b"OK") for r in replies)
        await asyncio.to_thread(wait_until, lambda: len(online(agw, "burst-")) == count, 15)
        writes = hub.book.batches - before
        print(f"{count} agents online in {writes} store transaction(s)")
        assert writes <= count // 10  # batched: far fewer transactions than agents
        # the routing index has them too (they are routable on this instance)
        assert all(agw.gateway.index.get(f"burst-{i}") is not None for i in range(0, count, 37))
    finally:
        for a in agents:
            if a.transport is not None:
                a.transport.close()
    await asyncio.to_thread(wait_until, lambda: not online(agw, "burst-"), 15)


async def test_an_agent_gone_right_after_connecting_ends_offline(agw: GatewayThread) -> None:
    hub = attach_hub(agw)
    # some stay, so that the blinking ones share batches with real registrations
    stay = await asyncio.gather(*(raw_agent(hub, hello_for(f"stay-{i}")) for i in range(50)))
    blinks: list[RawAgent] = []
    for round_ in range(3):
        for i in range(20):
            blink = await raw_agent(hub, hello_for(f"blink-{i}"))
            blinks.append(blink)
            assert (await asyncio.wait_for(blink.reply, 10)).startswith(b"OK")
            if round_ < 2 or i % 2:
                assert blink.transport is not None
                blink.transport.close()  # gone at once (at the last round: the odd ones)
        gone = range(20) if round_ < 2 else range(1, 20, 2)
        await asyncio.to_thread(
            wait_until, lambda gone=gone: not any(f"blink-{i}" in hub.live for i in gone), 5
        )
    try:
        await asyncio.to_thread(wait_until, lambda: len(online(agw, "stay-")) == 50, 15)
        await asyncio.to_thread(agw.call, hub.book.settle())
        for i in range(20):
            state = node_state(agw, f"blink-{i}")
            if i % 2:  # disconnected: recorded, and never left online
                assert state is NodeState.OFFLINE, (i, state)
            else:  # connected again at the last round and still there
                assert state is NodeState.ONLINE, (i, state)
    finally:
        for a in [*stay, *blinks]:
            if a.transport is not None:
                a.transport.close()


def test_the_batched_store_write_on_postgresql(shared_urls: tuple[str, str]) -> None:
    store = open_store(shared_urls[0])
    try:
        check_sync_agents(store)
    finally:
        store.close()
