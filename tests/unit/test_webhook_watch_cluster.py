"""Node and pool events from several instances on one database (issue 9): each change is
announced once, by whichever instance's view changed first, and one instance's open breaker
is never undone by another that sees the node up."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from exitgate import events
from exitgate.events import EventBus
from exitgate.model import Network, Node, NodeAttrs, NodeKind, NodeState
from exitgate.policy.metering import Metering
from exitgate.registry import Registry
from exitgate.routing.health import HealthPolicy, NodeHealth
from exitgate.settings import WebhookSettings
from exitgate.store.base import AccountStore, open_store
from exitgate.store.webhooks import WebhookStore
from exitgate.webhooks.watch import Watcher

NODE = Node("nod_1", NodeKind.DIRECT, NodeAttrs(country="us", network=Network.RES))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AccountStore]:
    s = open_store(f"sqlite:///{tmp_path / 'a.db'}")
    yield s
    s.close()


class Instance:
    """One gateway's watcher: its own registry copy, breakers and event bus; shared store."""

    def __init__(self, store: AccountStore, clock: Clock) -> None:
        self.registry = Registry()
        self.registry.put_node(NODE)
        self.health = NodeHealth(clock, HealthPolicy())
        self.bus = EventBus(clock=clock)
        settings = WebhookSettings(pool_min_healthy={"res": 1}, pool_hysteresis=0)
        self.watcher = Watcher(
            settings,
            self.registry,
            Metering(self.registry.org),
            self.health,
            self.bus,
            WebhookStore.of(store),
        )

    def set_state(self, state: NodeState) -> None:
        self.registry.put_node(replace(NODE, state=state))

    def sent(self) -> list[str]:
        return [event.type for event in self.bus.take()]


def _tick_all(instances: list[Instance]) -> None:
    async def go() -> None:
        for inst in instances:
            await inst.watcher.tick()

    asyncio.run(go())


def test_an_outage_seen_by_three_instances_is_announced_once(store: AccountStore) -> None:
    clock = Clock()
    cluster = [Instance(store, clock) for _ in range(3)]
    asyncio.run(_load(cluster))
    _tick_all(cluster)  # the silent baseline
    for inst in cluster:  # the shared registry tells every instance
        inst.set_state(NodeState.OFFLINE)
    _tick_all(cluster)
    sent = [inst.sent() for inst in cluster]
    assert sorted(e for each in sent for e in each) == [events.NODE_DOWN, events.POOL_DEGRADED]
    assert sent[0] == [events.NODE_DOWN, events.POOL_DEGRADED]  # the first to look
    for inst in cluster:
        inst.set_state(NodeState.ONLINE)
    _tick_all(cluster)
    assert [e for inst in cluster for e in inst.sent()] == [events.NODE_RECOVERED]


def test_one_instances_open_breaker_is_not_undone_by_the_others(store: AccountStore) -> None:
    clock = Clock()
    a, b = Instance(store, clock), Instance(store, clock)
    asyncio.run(_load([a, b]))
    _tick_all([a, b])
    for _ in range(a.health.policy.threshold):
        a.health.record_failure(NODE.id)  # A's breaker opens; B still sees the node up
    _tick_all([a, b])
    assert a.sent() == [events.NODE_DOWN, events.POOL_DEGRADED] and b.sent() == []
    _tick_all([a, b])
    assert a.sent() == [] and b.sent() == []  # no flapping between the two views
    clock.now += a.health.policy.cooldown(0) + 1  # half open: not closed yet
    a.health.record_success(NODE.id)  # closes
    _tick_all([a, b])
    assert a.sent() == [events.NODE_RECOVERED] and b.sent() == []


async def _load(instances: list[Instance]) -> None:
    for inst in instances:
        await inst.watcher.load()
