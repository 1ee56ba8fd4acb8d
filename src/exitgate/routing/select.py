"""Selection = filters, then one strategy (DESIGN principle 8). Pure.

`Filters` is what a request asks of a node's attributes: the targeting part of its `Rules`
narrowed by the package's networks (`filters_for`). `matches` is the one predicate the index,
sessions and health code share. `two_choices` is the strategy: of two uniformly random
candidates take the one with the lower load ("power of two random choices": load spreads
almost as well as least-loaded, at O(1), without herding every request onto the one idlest
node). The node of rank k (0 = idlest) among n wins with probability 2(n-1-k)/(n(n-1)): the
busiest gets nothing while there is another candidate. `NodeIndex.select` (index.py) draws the
candidates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from exitgate.model import ALL_NETWORKS, Network, Node, NodeAttrs
from exitgate.rules import Rules

# Higher = busier or recently failing. Called with a node id, only on the hot path's two picks.
Load = Callable[[str], float]

NETWORK_ORDER: Final = (Network.RES, Network.MOB, Network.DC)


@dataclass(frozen=True, slots=True)
class Filters:
    """Attribute constraints; None is "any". Every set field must match."""

    country: str | None = None
    region: str | None = None
    city: str | None = None
    isp: str | None = None
    asn: int | None = None
    networks: frozenset[Network] | None = None

    def describe(self) -> str:
        """`country=us, city=los_angeles, network=mob`, or `any`: the NODE_NOT_FOUND detail."""
        parts = [
            f"{name}={value}"
            for name, value in (
                ("country", self.country),
                ("region", self.region),
                ("city", self.city),
                ("isp", self.isp),
                ("asn", self.asn),
            )
            if value is not None
        ]
        if self.networks is not None:
            joined = "_".join(n for n in NETWORK_ORDER if n in self.networks)
            parts.append(f"network={joined or 'none'}")  # none: the package allows no network
        return ", ".join(parts) if parts else "any"


def filters_for(rules: Rules, package_networks: frozenset[Network]) -> Filters:
    """The node filters for parsed rules on a package.

    Networks: the rule's set cut down to the package's, or the package's set without a rule.
    A set admitting every network is no filter (None), so `describe` stays short.
    """
    networks = package_networks if rules.networks is None else rules.networks & package_networks
    return Filters(
        country=rules.country,
        region=rules.region,
        city=rules.city,
        isp=rules.isp,
        asn=rules.asn,
        networks=None if networks >= ALL_NETWORKS else networks,
    )


def matches(attrs: NodeAttrs, filters: Filters) -> bool:
    """Attributes only: online state, exclusions and load are the caller's business."""
    return (
        (filters.country is None or attrs.country == filters.country)
        and (filters.region is None or attrs.region == filters.region)
        and (filters.city is None or attrs.city == filters.city)
        and (filters.isp is None or attrs.isp == filters.isp)
        and (filters.asn is None or attrs.asn == filters.asn)
        and (filters.networks is None or attrs.network in filters.networks)
    )


def two_choices(first: Node, second: Node, load: Load | None) -> Node:
    """The strategy: the less loaded of two random candidates; ties and no load keep `first`."""
    if load is None or load(second.id) >= load(first.id):
        return first
    return second
