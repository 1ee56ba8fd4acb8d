"""Routing for UDP associations: the TCP router, restricted to exits that can relay UDP.

An association picks its exit once, through the same `Router` machinery as a CONNECT (the
same index, node health, sticky sessions, rotation and onerror policies), with two changes:

- the filters' networks are cut down to `[udp] networks` (SPEC 2: `res` and `mob`); the
  association's handler does that before routing, and refuses with DISALLOWED when the
  request asked only for networks that do not allow UDP;
- nodes that cannot relay UDP are never chosen: `upstream` nodes with an `http://` URL
  (an HTTP proxy has no datagram service). Selection skips them, and a sticky session
  pointing at one moves off it *without* a health verdict (the node is fine for TCP).

Only `select` and the "is this node usable now" check are overridden; everything else is the
TCP router's (so the UDP and TCP paths can never disagree on sessions or health).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from functools import lru_cache

from exitgate.model import Node, NodeKind
from exitgate.routing.failover import Attempt, Router
from exitgate.routing.select import Filters
from exitgate.rules import Rules
from exitgate.store.sessions import NO_TIMINGS, SessionTimings
from exitgate.wire.upstream import parse_proxy_url

# Random picks to try before excluding every incapable node at once (an O(nodes) scan).
_QUICK_PICKS = 8


@lru_cache(maxsize=4096)
def _socks_url(url: str) -> bool:
    try:
        return parse_proxy_url(url).scheme == "socks5"
    except ValueError:
        return False


def udp_capable(node: Node) -> bool:
    """Can this exit relay datagrams? Direct and agent exits can, SOCKS5 upstreams can."""
    if node.kind is NodeKind.UPSTREAM:
        return _socks_url(node.url)
    return True


class UdpAttempt(Attempt):
    def _unusable(self, node_id: str, node: Node | None) -> str | None:
        if node is not None and not udp_capable(node):
            return "Node cannot relay UDP"
        return super()._unusable(node_id, node)


class UdpRouter(Router):
    """Shares index, health and sessions with the TCP router it is made from."""

    @classmethod
    def sharing(cls, router: Router) -> UdpRouter:
        return cls(
            router.index,
            router.health,
            router.sessions,
            max_replacements=router.max_replacements,
            rng=router.rng,
        )

    async def begin(
        self,
        package_id: str,
        rules: Rules,
        filters: Filters,
        domain: str | None = None,
        timings: SessionTimings = NO_TIMINGS,
    ) -> Attempt:
        plan = await self.sessions.plan(package_id, rules, timings)
        if plan is not None and plan.degraded:  # Redis down: the same node on every instance
            chosen = self.rendezvous(plan.key, filters)
            usable = chosen is not None and udp_capable(chosen)
            plan = replace(plan, node_id=chosen.id if usable and chosen else None)
        attempt = UdpAttempt(self, rules, filters, plan)
        if plan is not None and plan.node_id is not None and plan.rotate:
            await attempt.rotate(rules, plan, plan.node_id)
        return attempt

    def select(
        self,
        filters: Filters,
        exclude: Collection[str],
        like: str | None,
        spread: Collection[str] = (),
    ) -> Node | None:
        skip = set(exclude)
        for _ in range(_QUICK_PICKS):
            node = super().select(filters, skip, like)
            if node is None or udp_capable(node):
                return node
            skip.add(node.id)
        skip.update(n.id for n in self.index if not udp_capable(n))
        return super().select(filters, skip, like)
