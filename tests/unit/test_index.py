"""The node index and selection (SPEC 5, DESIGN 8): checked against a brute-force reference."""

from __future__ import annotations

import ast
import random
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from exitgate.model import ALL_NETWORKS, Network, Node, NodeAttrs, NodeKind, NodeState
from exitgate.routing import Filters, NodeIndex, filters_for, matches
from exitgate.routing import index as index_module
from exitgate.rules import Rules

RES, MOB, DC = Network.RES, Network.MOB, Network.DC


def node(
    node_id: str,
    country: str = "us",
    region: str = "ca",
    city: str = "la",
    isp: str = "verizon",
    asn: int = 701,
    network: Network = RES,
    state: NodeState = NodeState.ONLINE,
) -> Node:
    return Node(
        id=node_id,
        kind=NodeKind.UPSTREAM,
        attrs=NodeAttrs(country, region, city, isp, asn, network),
        state=state,
    )


def reference(
    nodes: dict[str, Node], filters: Filters, exclude: frozenset[str] = frozenset()
) -> set[str]:
    """What select may return: online, matching, not excluded. By brute force."""
    return {
        n.id
        for n in nodes.values()
        if n.state is NodeState.ONLINE
        and n.id not in exclude
        and (filters.country is None or n.attrs.country == filters.country)
        and (filters.region is None or n.attrs.region == filters.region)
        and (filters.city is None or n.attrs.city == filters.city)
        and (filters.isp is None or n.attrs.isp == filters.isp)
        and (filters.asn is None or n.attrs.asn == filters.asn)
        and (filters.networks is None or n.attrs.network in filters.networks)
    }


# Small domains so that random pools and filters overlap, miss and contradict each other.
attrs_st = st.builds(
    NodeAttrs,
    country=st.sampled_from(["us", "de"]),
    region=st.sampled_from(["r1", "r2"]),
    city=st.sampled_from(["c1", "c2", "c3"]),
    isp=st.sampled_from(["i1", "i2"]),
    asn=st.sampled_from([1, 2]),
    network=st.sampled_from(Network),
)
filters_st = st.builds(
    Filters,
    country=st.sampled_from([None, "us", "de", "fr"]),
    region=st.sampled_from([None, "r1", "r2"]),
    city=st.sampled_from([None, "c1", "c2", "c3"]),
    isp=st.sampled_from([None, "i1", "i2"]),
    asn=st.sampled_from([None, 1, 2, 3]),
    networks=st.one_of(st.none(), st.frozensets(st.sampled_from(Network))),
)
pool_st = st.lists(
    st.tuples(attrs_st, st.sampled_from(NodeState)), max_size=150
).map(
    lambda items: {
        f"n{i}": Node(f"n{i}", NodeKind.DIRECT, attrs, state)
        for i, (attrs, state) in enumerate(items)
    }
)


@contextmanager
def tiny_thresholds(on: bool = True) -> Iterator[None]:
    """Small pools take every path (sampling, sparse miss, scan, cache) with tiny thresholds."""
    if not on:
        yield
        return
    with (
        patch.object(index_module, "_SCAN_BELOW", 2),
        patch.object(index_module, "_MAX_DRAWS", 3),
        patch.object(index_module, "_EXCLUDED_DRAWS", 2),
        patch.object(index_module, "_SCAN_CACHE", 4),
    ):
        yield


def load_of(node_id: str) -> float:
    return float(hash(node_id) % 7)


@settings(deadline=None)
@given(pool_st, filters_st, st.booleans(), st.data())
def test_select_matches_the_reference(
    nodes: dict[str, Node], filters: Filters, tiny: bool, data: st.DataObject
) -> None:
    index = NodeIndex()
    for n in nodes.values():
        index.upsert(n)
    exclude = data.draw(st.frozensets(st.sampled_from(sorted(nodes)))) if nodes else frozenset()
    allowed = reference(nodes, filters, exclude)
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    with tiny_thresholds(tiny):
        for load in (None, load_of):
            for _ in range(3):
                for excluded in (exclude, frozenset()):  # alternate: cached scans must hold
                    picked = index.select(filters, exclude=excluded, load=load, rng=rng)
                    wanted = allowed if excluded else reference(nodes, filters)
                    if wanted:
                        assert picked is not None and picked.id in wanted
                    else:
                        assert picked is None


class PoolMachine(RuleBasedStateMachine):
    """Upserts, state changes and removals interleaved with selections (and the scan cache)."""

    def __init__(self) -> None:
        super().__init__()
        self.index = NodeIndex(rng=random.Random(0))
        self.nodes: dict[str, Node] = {}

    @rule(number=st.integers(0, 60), attrs=attrs_st, state=st.sampled_from(NodeState))
    def upsert(self, number: int, attrs: NodeAttrs, state: NodeState) -> None:
        n = Node(f"n{number}", NodeKind.AGENT, attrs, state)
        self.nodes[n.id] = n
        self.index.upsert(n)

    @rule(number=st.integers(0, 60))
    def remove(self, number: int) -> None:
        self.nodes.pop(f"n{number}", None)
        self.index.remove(f"n{number}")

    @rule(filters=filters_st, use_load=st.booleans())
    def select(self, filters: Filters, use_load: bool) -> None:
        allowed = reference(self.nodes, filters)
        picked = self.index.select(filters, load=load_of if use_load else None)
        if allowed:
            assert picked is not None and picked.id in allowed
        else:
            assert picked is None

    @invariant()
    def views_agree(self) -> None:
        online = {i for i, n in self.nodes.items() if n.state is NodeState.ONLINE}
        assert len(self.index) == len(online)
        assert {n.id for n in self.index} == online
        for node_id, n in self.nodes.items():
            assert self.index.get(node_id) == n


class TinyPoolMachine(PoolMachine):
    def __init__(self) -> None:
        super().__init__()
        self.patch = tiny_thresholds()
        self.patch.__enter__()

    def teardown(self) -> None:
        self.patch.__exit__(None, None, None)


TestPoolMachine = PoolMachine.TestCase
TestPoolMachine.settings = settings(stateful_step_count=30, deadline=None)
TestTinyPoolMachine = TinyPoolMachine.TestCase
TestTinyPoolMachine.settings = settings(stateful_step_count=30, deadline=None)


def test_upsert_state_changes_and_remove() -> None:
    index = NodeIndex()
    a, b = node("a"), node("b", country="de")
    index.upsert(a)
    index.upsert(b)
    assert len(index) == 2 and "a" in index
    offline = node("a", state=NodeState.OFFLINE)
    index.upsert(offline)
    assert len(index) == 1 and "a" not in index
    assert index.get("a") == offline  # still readable
    assert index.select(Filters(country="us")) is None
    index.upsert(node("a", state=NodeState.DRAINING))
    assert index.select(Filters(country="us")) is None
    index.upsert(a)
    assert index.select(Filters(country="us")) == a
    moved = node("a", country="fr", city="paris")
    index.upsert(moved)  # changed attributes: old buckets left, new ones joined
    assert index.select(Filters(country="us")) is None
    assert index.select(Filters(country="fr", city="paris")) == moved
    assert len(index) == 2
    index.remove("a")
    index.remove("a")  # unknown: no error
    index.remove("nope")
    assert index.get("a") is None and len(index) == 1
    assert index.select(Filters()) == b


def test_exclude_and_empty_pool() -> None:
    index = NodeIndex()
    assert index.select(Filters()) is None
    index.upsert(node("a"))
    index.upsert(node("b"))
    assert index.select(Filters(), exclude={"a"}) == node("b")
    assert index.select(Filters(), exclude=["a", "b"]) is None
    assert index.select(Filters(), exclude=("b",), load=load_of) == node("a")


def big_pool(index: NodeIndex, count: int = 5000) -> None:
    rng = random.Random(3)
    for i in range(count):
        country = rng.choice(["us", "de", "gb"])
        index.upsert(
            node(
                f"n{i}",
                country=country,
                city=f"{country}{rng.randrange(20)}",
                isp=rng.choice(["a", "b", "c"]),
                asn=100 if country == "de" else rng.randrange(1, 50),
                network=RES,
            )
        )


def test_a_rare_match_is_found_and_a_non_match_is_proven() -> None:
    index = NodeIndex(rng=random.Random(1))
    big_pool(index)
    rare = node("rare", country="us", city="us1", isp="a", asn=100, network=MOB)
    index.upsert(rare)
    # The ASN bucket is ~1700 German nodes plus one: sampling misses, the exact scan finds it.
    assert index.select(Filters(country="us", asn=100)) == rare
    assert index.select(Filters(country="us", asn=100), load=load_of) == rare
    assert index.select(Filters(asn=100, networks=frozenset({MOB}))) == rare
    assert index.select(Filters(country="us", asn=100), exclude={"rare"}) is None
    # The answer is cached and stamped: changes to the bucket are seen at once.
    index.upsert(node("rare", country="us", asn=100, network=MOB, state=NodeState.OFFLINE))
    assert index.select(Filters(country="us", asn=100)) is None
    assert index.select(Filters(country="us", asn=100)) is None  # from the cache
    index.upsert(rare)
    assert index.select(Filters(country="us", asn=100)) == rare
    index.remove("rare")
    assert index.select(Filters(country="us", asn=100)) is None
    second = node("second", country="us", city="us2", asn=100, network=DC)
    index.upsert(second)
    assert index.select(Filters(country="us", asn=100)) == second


def test_every_matching_node_gets_picked() -> None:
    index = NodeIndex()
    big_pool(index, 2000)
    rng = random.Random(5)
    for filters in (Filters(country="de"), Filters(country="us", city="us3"), Filters()):
        wanted = reference({n.id: n for n in index}, filters)
        for load in (None, lambda _id: 0.0):
            seen = Counter(
                n.id for _ in range(len(wanted) * 30)
                if (n := index.select(filters, load=load, rng=rng)) is not None
            )
            assert set(seen) == wanted  # spread: every candidate, nothing else


def test_load_weights_picks_away_from_busy_nodes() -> None:
    index = NodeIndex()
    for i in range(10):
        index.upsert(node(f"n{i}"))
    loads = {f"n{i}": float(i) for i in range(10)}
    rng = random.Random(9)
    picks = Counter(
        picked.id
        for _ in range(20000)
        if (picked := index.select(Filters(), load=loads.__getitem__, rng=rng)) is not None
    )
    # Power of two choices: rank k (0 = idlest) wins with probability 2(n-1-k)/(n(n-1)).
    for i in range(9):
        assert picks[f"n{i}"] > picks[f"n{i + 1}"]
        assert abs(picks[f"n{i}"] / 20000 - 2 * (9 - i) / 90) < 0.02
    assert picks["n9"] == 0  # the busiest of all loses every comparison
    uniform = Counter(
        picked.id for _ in range(20000) if (picked := index.select(Filters(), rng=rng)) is not None
    )
    assert min(uniform.values()) > 1700  # no load: uniform (expected 2000 each)


def test_load_weighting_in_the_scan_paths() -> None:
    index = NodeIndex()
    for i in range(5):  # small source: scanned directly
        index.upsert(node(f"s{i}", city="small"))
    busy = {"s0": 100.0}
    rng = random.Random(2)
    picks = Counter(
        picked.id
        for _ in range(2000)
        if (picked := index.select(Filters(country="us", city="small"),
                                   load=lambda i: busy.get(i, 0.0), rng=rng)) is not None
    )
    assert picks["s0"] == 0 and len(picks) == 4


def test_selection_is_deterministic_with_a_seed() -> None:
    first, second = NodeIndex(), NodeIndex()
    big_pool(first, 1000)
    big_pool(second, 1000)
    for filters in (Filters(), Filters(country="gb", networks=frozenset({RES, MOB}))):
        one = [first.select(filters, load=load_of, rng=random.Random(4)) for _ in range(50)]
        two = [second.select(filters, load=load_of, rng=random.Random(4)) for _ in range(50)]
        assert one == two
    a = random.Random(11)
    b = random.Random(11)
    assert [first.select(Filters(), rng=a) for _ in range(100)] == [
        second.select(Filters(), rng=b) for _ in range(100)
    ]


def test_network_sets_union_buckets() -> None:
    index = NodeIndex()
    for i, network in enumerate([RES, MOB, DC] * 20):
        index.upsert(node(f"n{i}", network=network))
    rng = random.Random(1)
    got = {
        n.attrs.network
        for _ in range(300)
        if (n := index.select(Filters(networks=frozenset({MOB, DC})), rng=rng))
    }
    assert got == {MOB, DC}
    assert index.select(Filters(networks=frozenset())) is None
    assert index.select(Filters(country="de", networks=frozenset({RES}))) is None


def test_matches() -> None:
    n = node("a", network=MOB)
    index = NodeIndex()
    assert index.matches(n, Filters())
    assert index.matches(n, Filters("us", "ca", "la", "verizon", 701, frozenset({MOB, DC})))
    assert not index.matches(n, Filters(networks=frozenset({RES})))
    assert not index.matches(n, Filters(asn=702))
    assert not matches(n.attrs, Filters(country="de"))
    assert not matches(n.attrs, Filters(region="ny"))
    assert not matches(n.attrs, Filters(city="ny"))
    assert not matches(n.attrs, Filters(isp="att"))


def test_describe() -> None:
    assert Filters().describe() == "any"
    assert (
        Filters(country="us", city="los_angeles", networks=frozenset({MOB})).describe()
        == "country=us, city=los_angeles, network=mob"
    )
    full = Filters("us", "california", "los_angeles", "verizon", 701, frozenset({DC, RES, MOB}))
    assert full.describe() == (
        "country=us, region=california, city=los_angeles, isp=verizon, asn=701, "
        "network=res_mob_dc"
    )
    assert Filters(networks=frozenset({DC, RES})).describe() == "network=res_dc"
    assert Filters(networks=frozenset()).describe() == "network=none"


@pytest.mark.parametrize(
    ("rule_networks", "package_networks", "expected"),
    [
        (None, ALL_NETWORKS, None),
        (None, frozenset({RES, MOB}), frozenset({RES, MOB})),
        (frozenset({MOB}), ALL_NETWORKS, frozenset({MOB})),
        (frozenset({MOB, DC}), frozenset({MOB, RES}), frozenset({MOB})),
        (ALL_NETWORKS, ALL_NETWORKS, None),  # admits everything: no filter
    ],
)
def test_filters_for(
    rule_networks: frozenset[Network] | None,
    package_networks: frozenset[Network],
    expected: frozenset[Network] | None,
) -> None:
    rules = Rules(country="us", region="ca", city="la", isp="v", asn=7, networks=rule_networks,
                  session="s")
    assert filters_for(rules, package_networks) == Filters("us", "ca", "la", "v", 7, expected)


def test_routing_is_pure() -> None:
    folder = Path(__file__).parents[2] / "src" / "exitgate" / "routing"
    for path in (folder / "index.py", folder / "select.py", folder / "__init__.py"):
        imported: set[str] = set()
        for stmt in ast.walk(ast.parse(path.read_text())):
            if isinstance(stmt, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in stmt.names)
            elif isinstance(stmt, ast.ImportFrom) and stmt.module:
                imported.add(stmt.module.split(".")[0])
        assert not imported & {"asyncio", "socket", "ssl", "selectors", "time"}, path
