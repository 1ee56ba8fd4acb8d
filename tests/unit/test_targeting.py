"""The targeting catalogue over the routing index's online nodes."""

from __future__ import annotations

from exitgate.model import Network, Node, NodeAttrs, NodeKind, NodeState
from exitgate.routing.index import NodeIndex
from exitgate.rules import Entitlements
from exitgate.targeting import targeting_catalog


def node(i: int, country: str, network: Network, city: str = "", region: str = "",
         isp: str = "", asn: int = 0, state: NodeState = NodeState.ONLINE) -> Node:
    attrs = NodeAttrs(country, region, city, isp, asn, network)
    return Node(f"n{i}", NodeKind.DIRECT, attrs, state)


def pool() -> NodeIndex:
    index = NodeIndex()
    for n in (
        node(1, "us", Network.RES, "new_york", "new_york", "comcast", 7922),
        node(2, "us", Network.RES, "new_york", "new_york", "comcast", 7922),
        node(3, "us", Network.MOB, "boston", "massachusetts", "verizon", 701),
        node(4, "de", Network.DC, "berlin", "berlin", "hetzner", 24940),
        node(5, "de", Network.DC, "berlin", "berlin", "hetzner", 24940, NodeState.OFFLINE),
        node(6, "fr", Network.RES),  # nothing but a country and a network to target
    ):
        index.upsert(n)
    return index


def test_counts_online_nodes_per_value() -> None:
    found = targeting_catalog(pool())
    assert found["nodes"] == 5  # the offline node is not targetable now
    assert found["countries"] == [
        {"country": "us", "nodes": 3}, {"country": "de", "nodes": 1}, {"country": "fr", "nodes": 1}
    ]
    assert found["networks"] == [
        {"network": "res", "nodes": 3},
        {"network": "mob", "nodes": 1},
        {"network": "dc", "nodes": 1},
    ]
    assert found["cities"][0] == {"country": "us", "city": "new_york", "nodes": 2}
    assert {"country": "de", "region": "berlin", "nodes": 1} in found["regions"]
    assert found["isps"][0] == {"isp": "comcast", "nodes": 2}
    assert found["asns"][0] == {"asn": 7922, "nodes": 2}
    assert all(row["asn"] != 0 for row in found["asns"])


def test_filters_by_country_and_network() -> None:
    found = targeting_catalog(pool(), country="us", network=Network.RES)
    assert found["nodes"] == 2
    assert found["filters"] == {"country": "us", "network": "res"}
    assert found["cities"] == [{"country": "us", "city": "new_york", "nodes": 2}]
    assert found["isps"] == [{"isp": "comcast", "nodes": 2}]
    assert targeting_catalog(pool(), country="jp")["nodes"] == 0


def test_entitlements_limit_networks_and_rules() -> None:
    ent = Entitlements(rules=frozenset({"country", "isp"}), networks=frozenset({Network.DC}))
    found = targeting_catalog(pool(), entitlements=ent)
    assert found["nodes"] == 1
    assert found["countries"] == [{"country": "de", "nodes": 1}]
    assert found["isps"] == [{"isp": "hetzner", "nodes": 1}]
    assert found["cities"] == found["regions"] == found["asns"] == []
    assert found["rules"] == ["country", "isp"]
    # city without country is not targetable (SPEC 3): nothing listed
    only_city = Entitlements(rules=frozenset({"city"}))
    assert targeting_catalog(pool(), entitlements=only_city)["cities"] == []
