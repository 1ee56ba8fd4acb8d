"""The targeting catalogue: what can be targeted now, with counts of online nodes (issue 13).

Two ways to the same answer: `targeting_catalog(nodes, ...)` scans the nodes it is given (the
routing index's ONLINE nodes, say) and is the reference; `TargetingCounts` keeps the counts
per (country, network) from the registry's node changes, the notifications the routing index
follows too, and is what the gateway serves (never the database). The answer:

    {"filters": {"country": "us", "network": null},
     "nodes": 12,
     "rules": ["asn", "city", "country", "isp", "network", "region"],
     "networks":  [{"network": "res", "nodes": 7}, ...],
     "countries": [{"country": "us", "nodes": 12}],
     "regions":   [{"country": "us", "region": "new_york", "nodes": 5}, ...],
     "cities":    [{"country": "us", "city": "new_york", "nodes": 5}, ...],
     "isps":      [{"isp": "comcast", "nodes": 4}, ...],
     "asns":      [{"asn": 7922, "nodes": 4}, ...]}

Lists are sorted by count, largest first, then by value. Region and city are listed with
their country: the rule language accepts them only after a country (SPEC 3). A node without
a region (city, isp, asn 0) counts for the others only: there is nothing to target it by.

Entitlements (a package holder's view): nodes of networks the package lacks are not
counted at all, and a rule the package may not send lists nothing (`rules` says which it
may send); region and city also need `country`. `country-any`/`network-any` are always
allowed, so `nodes` and `networks` stay filled.

Cost, measured on the 2-core test machine with 100 000 online nodes (8 countries, 400
regions, 4 000 cities, 300 ISPs, 5 000 ASNs): the scan takes 0.8 s; the kept counts take
21 µs per node change, and a read after a change takes 6 ms (one country and network) to
170 ms (everything: an answer of about 10 000 rows), then a few µs while cached. No I/O.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any, Final

from exitgate.model import Network, Node, NodeAttrs, NodeState
from exitgate.rules import TARGETING_NAMES, Entitlements

if TYPE_CHECKING:
    from exitgate.registry import Registry

_NETWORK_ORDER: Final = {n: i for i, n in enumerate((Network.RES, Network.MOB, Network.DC))}


def targeting_catalog(
    nodes: Iterable[Node],
    *,
    country: str | None = None,
    network: Network | None = None,
    entitlements: Entitlements | None = None,
) -> dict[str, Any]:
    """Counts of `nodes` per targetable value, narrowed by `country`, `network` and what
    `entitlements` allow (None: everything, the admin's view). A scan: the reference for
    `TargetingCounts`, which the gateway serves from."""
    allowed_networks = None if entitlements is None else entitlements.networks
    networks: Counter[Network] = Counter()
    countries: Counter[str] = Counter()
    regions: Counter[tuple[str, str]] = Counter()
    cities: Counter[tuple[str, str]] = Counter()
    isps: Counter[str] = Counter()
    asns: Counter[int] = Counter()
    total = 0
    for node in nodes:
        attrs = node.attrs
        if country is not None and attrs.country != country:
            continue
        if network is not None and attrs.network is not network:
            continue
        if allowed_networks is not None and attrs.network not in allowed_networks:
            continue
        total += 1
        networks[attrs.network] += 1
        if attrs.country:
            countries[attrs.country] += 1
            if attrs.region:
                regions[(attrs.country, attrs.region)] += 1
            if attrs.city:
                cities[(attrs.country, attrs.city)] += 1
        if attrs.isp:
            isps[attrs.isp] += 1
        if attrs.asn:
            asns[attrs.asn] += 1
    return _answer(
        country=country, network=network, entitlements=entitlements, total=total,
        networks=networks, countries=countries, regions=regions, cities=cities, isps=isps,
        asns=asns,
    )


def _answer(
    *,
    country: str | None,
    network: Network | None,
    entitlements: Entitlements | None,
    total: int,
    networks: Counter[Network],
    countries: Counter[str],
    regions: Counter[tuple[str, str]],
    cities: Counter[tuple[str, str]],
    isps: Counter[str],
    asns: Counter[int],
) -> dict[str, Any]:
    allowed_rules = TARGETING_NAMES if entitlements is None or entitlements.rules is None else (
        TARGETING_NAMES & entitlements.rules
    )
    with_country = "country" in allowed_rules
    return {
        "filters": {"country": country, "network": None if network is None else str(network)},
        "nodes": total,
        "rules": sorted(allowed_rules),
        "networks": [
            {"network": str(n), "nodes": c}
            for n, c in sorted(networks.items(), key=lambda kv: (-kv[1], _NETWORK_ORDER[kv[0]]))
        ],
        "countries": _rows(countries, ("country",)) if with_country else [],
        "regions": _rows(regions, ("country", "region"))
        if with_country and "region" in allowed_rules
        else [],
        "cities": _rows(cities, ("country", "city"))
        if with_country and "city" in allowed_rules
        else [],
        "isps": _rows(isps, ("isp",)) if "isp" in allowed_rules else [],
        "asns": _rows(asns, ("asn",)) if "asn" in allowed_rules else [],
    }


class _Group:
    """Counts for the online nodes of one (country, network)."""

    __slots__ = ("asns", "cities", "isps", "regions", "total")

    def __init__(self) -> None:
        self.total = 0
        self.regions: Counter[str] = Counter()
        self.cities: Counter[str] = Counter()
        self.isps: Counter[str] = Counter()
        self.asns: Counter[int] = Counter()

    def add(self, attrs: NodeAttrs, step: int) -> None:
        self.total += step
        for counter, value in (
            (self.regions, attrs.region),
            (self.cities, attrs.city),
            (self.isps, attrs.isp),
            (self.asns, attrs.asn),
        ):
            if value:
                counter[value] += step  # type: ignore[index]
                if counter[value] <= 0:  # type: ignore[index]
                    del counter[value]


class TargetingCounts:
    """The catalogue kept up to date as nodes change: O(1) per change, no scan per read.

    `follow(registry)` seeds it from the registry's nodes and subscribes to its node changes
    (the same notifications the routing index follows, so both agree on what is online).
    A read merges the per-(country, network) groups the filters select. Answers are cached
    per query until the next change, and at most `max_age` seconds (1 s) across changes: a
    pool whose agents come and go every moment would otherwise recompute every read, and a
    large answer (thousands of cities and ASNs) costs tens of milliseconds on the loop.
    `targeting_catalog` over the index's nodes is the reference it must equal (tested).
    """

    def __init__(
        self, *, max_age: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._online: dict[str, NodeAttrs] = {}
        self._groups: dict[tuple[str, Network], _Group] = {}
        self._version = 0
        self._cache: dict[Hashable, tuple[int, float, dict[str, Any]]] = {}
        self._max_age = max_age
        self._clock = clock

    @classmethod
    def follow(
        cls, registry: Registry, *, max_age: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> TargetingCounts:
        counts = cls(max_age=max_age, clock=clock)
        for node in registry.nodes.values():
            counts.update(node, node.id)
        registry.on_node_change(counts.update)
        return counts

    def update(self, node: Node | None, node_id: str) -> None:
        """A registry node listener: `node` is the new record, None once removed."""
        old = self._online.pop(node_id, None)
        if old is not None:
            self._groups[(old.country, old.network)].add(old, -1)
        if node is not None and node.state is NodeState.ONLINE:
            attrs = node.attrs
            self._online[node_id] = attrs
            group = self._groups.get((attrs.country, attrs.network))
            if group is None:
                group = self._groups[(attrs.country, attrs.network)] = _Group()
            group.add(attrs, 1)
        self._version += 1

    def catalog(
        self,
        *,
        country: str | None = None,
        network: Network | None = None,
        entitlements: Entitlements | None = None,
    ) -> dict[str, Any]:
        """What `targeting_catalog` answers for the online nodes, from the kept counts."""
        key = (country, network, entitlements)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and (cached[0] == self._version or now - cached[1] < self._max_age):
            return cached[2]
        networks = None if entitlements is None else entitlements.networks
        merged = _Group()
        by_network: Counter[Network] = Counter()
        by_country: Counter[str] = Counter()
        regions: Counter[tuple[str, str]] = Counter()
        cities: Counter[tuple[str, str]] = Counter()
        for (where, net), group in self._groups.items():
            if not group.total or (country is not None and where != country):
                continue
            if (network is not None and net is not network) or (
                networks is not None and net not in networks
            ):
                continue
            merged.total += group.total
            by_network[net] += group.total
            merged.isps.update(group.isps)
            merged.asns.update(group.asns)
            if where:
                by_country[where] += group.total
                regions.update({(where, r): n for r, n in group.regions.items()})
                cities.update({(where, c): n for c, n in group.cities.items()})
        found = _answer(
            country=country, network=network, entitlements=entitlements, total=merged.total,
            networks=by_network, countries=by_country, regions=regions, cities=cities,
            isps=merged.isps, asns=merged.asns,
        )
        if len(self._cache) > 256:
            self._cache.clear()
        self._cache[key] = (self._version, now, found)
        return found


def _rows(counts: Counter[Any], names: tuple[str, ...]) -> list[dict[str, Any]]:
    def order(item: tuple[Hashable, int]) -> tuple[int, str]:
        return -item[1], str(item[0])

    rows = []
    for value, count in sorted(counts.items(), key=order):
        values = value if isinstance(value, tuple) else (value,)
        row: dict[str, Any] = dict(zip(names, values, strict=True))
        row["nodes"] = count
        rows.append(row)
    return rows


__all__ = ["TargetingCounts", "targeting_catalog"]
