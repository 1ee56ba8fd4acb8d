"""The watcher: events found by comparing what the gateway knows now with what it knew.

Every `[webhooks] watch_interval` (1 s) it walks the registry (in memory, no store reads):

- `package.usage.threshold`: each package with a traffic cap, `Metering.used` against the
  cap (`policy.usage_level`: 50/80/90/100 %, each once per period, with hysteresis);
- `org.credits.low` / `org.credits.exhausted`: `Metering.credits_left` of each limited
  organization (`policy.credit_level`);
- `node.down` / `node.recovered`: a node is down while it is `offline` or its circuit
  breaker (routing/health.py) is not closed; draining is not down. The breaker stays pure:
  the watcher compares its state before and after, as an edge would;
- `pool.degraded`: per network with a `[webhooks] pool_min_healthy` minimum, the online
  nodes with a closed breaker (`policy.pool_degraded`).

Usage and credit levels are kept in the store (`webhook_marks`) and moved only by
compare-and-set, so a restart does not announce a crossed threshold twice and several
instances on one database announce it once. Node and pool states are seen per process (the
breaker is), and the first look after start is a silent baseline: a node that was already
down at start is not announced. A node added later counts as up before its first look
(unless added offline), so one whose circuit opens within an interval is still announced.

Several instances on one database see the same node go offline (the registry is shared):
each change of this process's view moves the node's (or network's) mark in the store by
compare-and-set from the other state, and only the instance whose move succeeds announces
it. The cluster then sends one `node.down` per outage and one `node.recovered` per return,
whoever saw it first; a breaker open on one instance only is announced by that instance,
and never undone by another that sees the node up (an instance announces only changes of
its own view).
"""

from __future__ import annotations

import asyncio
import logging

from exitgate import events
from exitgate.events import EventBus
from exitgate.model import Network, NodeState
from exitgate.policy.metering import Metering
from exitgate.registry import Registry
from exitgate.routing.health import BreakerState, NodeHealth
from exitgate.settings import WebhookSettings
from exitgate.store.webhooks import WebhookStore
from exitgate.webhooks.policy import credit_level, pool_degraded, usage_level

log = logging.getLogger("exitgate.webhooks")

USAGE = "usage:"
CREDITS = "credits:"
NODE = "node:"
POOL = "pool:"
DOWN, UP = "down", "up"
_CREDIT_EVENTS = {1: events.ORG_CREDITS_LOW, 2: events.ORG_CREDITS_EXHAUSTED}


class Watcher:
    def __init__(  # noqa: PLR0917
        self,
        settings: WebhookSettings,
        registry: Registry,
        metering: Metering,
        health: NodeHealth,
        bus: EventBus,
        store: WebhookStore,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.metering = metering
        self.health = health
        self.bus = bus
        self.store = store
        self._marks: dict[str, str] = {}
        self._down: dict[str, bool] = {}
        self._pools: dict[Network, bool] = {}
        self._seen = False  # the first look is a silent baseline

    async def load(self) -> None:
        self._marks = await asyncio.to_thread(self.store.marks, "")

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.watch_interval)
            try:
                await self.tick()
            except Exception:  # one bad round must not end the watching
                log.exception("webhook watcher round failed")

    async def tick(self) -> None:
        await self._usage()
        await self._credits()
        await self._nodes()

    # -- levels kept in the store -----------------------------------------------------------------
    async def _move(self, key: str, old: str | None, new: str) -> bool:
        if await asyncio.to_thread(self.store.swap_mark, key, old, new):
            self._marks[key] = new
            return True
        # Someone else moved it (another instance): learn its value, decide next round.
        fresh = await asyncio.to_thread(self.store.marks, key)
        if key in fresh:
            self._marks[key] = fresh[key]
        return False

    async def _usage(self) -> None:
        s = self.settings
        for package in list(self.registry.packages.values()):
            key = USAGE + package.id
            mark = self._marks.get(key)
            cap = package.limits.traffic_bytes
            if cap is None and mark in (None, "0"):
                continue
            fired = int(mark or 0)
            used = self.metering.used(package.id)
            level, fire = usage_level(fired, used, cap, s.usage_levels, s.usage_hysteresis)
            if level == fired or not await self._move(key, mark, str(level)):
                continue
            for percent in fire:
                self.bus.emit(
                    events.PACKAGE_USAGE_THRESHOLD,
                    package.org_id,
                    {
                        "package_id": package.id,
                        "org_id": package.org_id,
                        "threshold_percent": percent,
                        "used_bytes": used,
                        "limit_bytes": cap,
                    },
                )

    async def _credits(self) -> None:
        s = self.settings
        for org in list(self.registry.orgs.values()):
            key = CREDITS + org.id
            mark = self._marks.get(key)
            if org.credits is None and mark in (None, "0"):
                continue
            level = int(mark or 0)
            left = self.metering.credits_left(org)
            new, fire = credit_level(level, left, s.credits_low, s.credits_hysteresis)
            if new == level or not await self._move(key, mark, str(new)):
                continue
            for lv in fire:
                data: dict[str, object] = {"org_id": org.id, "credits": left}
                if lv == 1:
                    data["threshold"] = s.credits_low
                self.bus.emit(_CREDIT_EVENTS[lv], org.id, data)

    # -- per-process states ---------------------------------------------------------------------
    async def _nodes(self) -> None:
        nodes = self.registry.nodes
        for gone in self._down.keys() - nodes.keys():
            del self._down[gone]
        healthy: dict[Network, int] = dict.fromkeys(Network, 0)
        for node in list(nodes.values()):
            breaker = self.health.state(node.id)
            offline = node.state is NodeState.OFFLINE
            down = offline or breaker is not BreakerState.CLOSED
            if node.state is NodeState.ONLINE and not down:
                healthy[node.attrs.network] += 1
            was = self._down.get(node.id)
            if was is None and self._seen:
                # Added since the last look: it was up unless it was added offline, so a
                # node whose circuit opened within one interval of its creation is announced.
                was = offline
            self._down[node.id] = down
            if was is None or was == down or not await self._announce(NODE + node.id, down):
                continue
            data = {
                "node_id": node.id,
                "kind": node.kind.value,
                "network": node.attrs.network.value,
                "country": node.attrs.country,
                "state": node.state.value,
                "circuit": breaker.value,
            }
            if down:
                data["reason"] = "offline" if offline else "circuit_open"
            self.bus.emit(events.NODE_DOWN if down else events.NODE_RECOVERED, None, data)
        await self._pool(healthy)
        self._seen = True

    async def _announce(self, key: str, down: bool) -> bool:
        """Move the shared mark from the other state (absent counts as up); True: this
        instance moved it, so it is the one to announce the change."""
        new, other = (DOWN, UP) if down else (UP, DOWN)
        mark = self._marks.get(key)
        if mark == new:  # as far as known, announced already: look again before giving up
            fresh = await asyncio.to_thread(self.store.marks, key)
            mark = fresh.get(key)
            if mark == new:
                return False
        if mark is None and not down:
            return await self._move(key, None, UP)
        return await self._move(key, other if mark is not None else None, new)

    async def _pool(self, healthy: dict[Network, int]) -> None:
        s = self.settings
        for name, minimum in s.pool_min_healthy.items():
            network = Network(name)
            count = healthy[network]
            was = self._pools.get(network)
            degraded, fire = pool_degraded(bool(was), count, minimum, s.pool_hysteresis)
            self._pools[network] = degraded
            if fire and was is not None and await self._announce(POOL + name, degraded):
                self.bus.emit(
                    events.POOL_DEGRADED,
                    None,
                    {"network": name, "healthy_nodes": count, "minimum": minimum},
                )


