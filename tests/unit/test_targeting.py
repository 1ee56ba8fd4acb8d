"""The targeting catalogue over the routing index's online nodes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from exitgate.model import Network, Node, NodeAttrs, NodeKind, NodeState
from exitgate.registry import Registry
from exitgate.routing.index import NodeIndex
from exitgate.rules import Entitlements
from exitgate.targeting import TargetingCounts, targeting_catalog


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


# -- the kept counts equal the reference scan, through any sequence of changes

changes = st.lists(
    st.tuples(
        st.integers(0, 7),  # node id
        st.none()  # removed
        | st.tuples(
            st.sampled_from(["us", "de", ""]),
            st.sampled_from(list(Network)),
            st.sampled_from(["", "a", "b"]),  # region/city/isp
            st.sampled_from([0, 1, 2]),
            st.sampled_from(list(NodeState)),
        ),
    ),
    max_size=40,
)
queries = st.tuples(
    st.sampled_from([None, "us", "de"]),
    st.sampled_from([None, *Network]),
    st.sampled_from([
        None,
        Entitlements(),
        Entitlements(rules=frozenset({"country", "city"}), networks=frozenset({Network.RES})),
        Entitlements(rules=frozenset({"isp", "asn"})),
    ]),
)


@given(changes, st.lists(queries, min_size=1, max_size=4))
def test_kept_counts_equal_the_scan(steps: list, asks: list) -> None:
    registry = Registry()
    index = NodeIndex()
    registry.on_node_change(
        lambda n, i: index.remove(i) if n is None else index.upsert(n)
    )
    counts = TargetingCounts(max_age=0.0)  # no staleness: every change is seen at once
    registry.on_node_change(counts.update)
    for i, spec in steps:
        if spec is None:
            registry.remove_node(f"n{i}")
        else:
            country, net, name, asn, state = spec
            registry.put_node(node(i, country, net, name, name, name, asn, state))
        for country, net, ent in asks:
            want = targeting_catalog(index, country=country, network=net, entitlements=ent)
            assert counts.catalog(country=country, network=net, entitlements=ent) == want


def test_follow_seeds_from_the_registry() -> None:
    registry = Registry()
    registry.put_node(node(1, "us", Network.RES, "x"))
    now = [0.0]
    counts = TargetingCounts.follow(registry, clock=lambda: now[0])
    assert counts.catalog()["nodes"] == 1
    registry.put_node(node(1, "us", Network.RES, "x", state=NodeState.DRAINING))
    assert counts.catalog()["nodes"] == 1  # cached: at most max_age (1 s) stale
    now[0] += 1.0
    assert counts.catalog()["nodes"] == 0
