"""The targeting catalogue: what can be targeted now, with counts of online nodes (issue 13).

`targeting_catalog(nodes, ...)` counts the nodes it is given (the routing index's selectable,
ONLINE nodes: `iter(NodeIndex)`, never the database) per value of each targeting rule:

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
allowed, so `nodes` and `networks` stay filled. Pure: no I/O; cost O(nodes) per call, about
60 ms per 100 000 online nodes on this machine (measured, see docs/decisions.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable
from typing import Any, Final

from exitgate.model import Network, Node
from exitgate.rules import TARGETING_NAMES, Entitlements

_NETWORK_ORDER: Final = {n: i for i, n in enumerate((Network.RES, Network.MOB, Network.DC))}


def targeting_catalog(
    nodes: Iterable[Node],
    *,
    country: str | None = None,
    network: Network | None = None,
    entitlements: Entitlements | None = None,
) -> dict[str, Any]:
    """Counts of `nodes` per targetable value, narrowed by `country`, `network` and what
    `entitlements` allow (None: everything, the admin's view)."""
    allowed_rules = TARGETING_NAMES if entitlements is None or entitlements.rules is None else (
        TARGETING_NAMES & entitlements.rules
    )
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


__all__ = ["targeting_catalog"]
