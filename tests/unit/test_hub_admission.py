"""The hub's admission queue: hellos admitted ADMIT_BATCH per event-loop turn, and those of
agents that already left are dropped unprocessed."""

from __future__ import annotations

import asyncio

from exitgate.hub.server import ADMIT_BATCH, AgentLink, Hub
from exitgate.registry import Registry
from exitgate.services import AccountService
from exitgate.settings import HubSettings
from exitgate.store.base import open_store


def make_hub() -> tuple[Hub, list[str]]:
    store = open_store("sqlite://")
    registry = Registry()
    hub = Hub(HubSettings(token="t" * 20), AccountService(store, registry), registry)
    admitted: list[str] = []

    def admit(link: AgentLink, line: bytes, rest: bytes) -> None:
        admitted.append(line.decode())

    hub.admit = admit  # type: ignore[method-assign]
    return hub, admitted


def queued(hub: Hub, n: int) -> AgentLink:
    link = AgentLink(hub)
    link._line = f"hello-{n}".encode()
    hub.queue(link)
    return link


async def test_a_burst_is_admitted_a_batch_per_loop_turn_in_order() -> None:
    hub, admitted = make_hub()
    for n in range(ADMIT_BATCH * 3 + 5):
        queued(hub, n)
    assert admitted == []  # nothing in the receiving turn itself
    turns = 0
    while len(admitted) < ADMIT_BATCH * 3 + 5:
        await asyncio.sleep(0)
        turns += 1
        assert len(admitted) <= ADMIT_BATCH * turns
    assert turns >= 4
    assert admitted == [f"hello-{n}" for n in range(ADMIT_BATCH * 3 + 5)]
    hub.book.service.store.close()


async def test_the_hello_of_an_agent_gone_meanwhile_is_dropped() -> None:
    hub, admitted = make_hub()
    queued(hub, 1)
    gone = queued(hub, 2)
    queued(hub, 3)
    gone.closed = True  # its EOF was read before its turn came
    for _ in range(3):
        await asyncio.sleep(0)
    assert admitted == ["hello-1", "hello-3"]
    assert not hub._admitting  # drained: the next hello starts a new round
    queued(hub, 4)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert admitted[-1] == "hello-4"
    hub.book.service.store.close()
