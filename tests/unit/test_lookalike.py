"""prefer-lookalike: similarity tiers and the narrowed filters (routing/lookalike.py)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exitgate.model import Network, Node, NodeAttrs, NodeKind
from exitgate.routing import Filters, NodeIndex, matches
from exitgate.routing.lookalike import Likeness, likeness, lookalike_filters

REF = NodeAttrs("us", "ca", "la", "comcast", 7922, Network.RES)


def attrs(
    country: str = "us", region: str = "ca", city: str = "la", asn: int = 7922,
    isp: str = "comcast", network: Network = Network.RES,
) -> NodeAttrs:
    return NodeAttrs(country, region, city, isp, asn, network)


@pytest.mark.parametrize(
    ("other", "tier"),
    [
        (attrs(), Likeness.ASN_CITY),
        (attrs(city="sf"), Likeness.ASN_REGION),
        (attrs(region="ny", city="nyc"), Likeness.ASN),
        (attrs(country="de", region="be", city="berlin"), Likeness.ASN),
        (attrs(asn=1), Likeness.CITY),
        (attrs(asn=1, city="sf"), Likeness.REGION),
        (attrs(asn=1, region="ny", city="nyc"), Likeness.ANY),
        # names are per country: a "la" in another country is not the same city
        (attrs(country="mx", asn=1), Likeness.ANY),
    ],
)
def test_likeness_tiers(other: NodeAttrs, tier: Likeness) -> None:
    assert likeness(REF, other) is tier


def test_unknown_attributes_are_never_alike() -> None:
    blank = NodeAttrs("us", "", "", "", 0, Network.RES)
    assert likeness(blank, blank) is Likeness.ANY


def test_filters_ladder() -> None:
    base = Filters(networks=frozenset({Network.RES}))
    net = base.networks
    assert lookalike_filters(base, REF) == [
        Filters(country="us", city="la", asn=7922, networks=net),
        Filters(country="us", region="ca", asn=7922, networks=net),
        Filters(asn=7922, networks=net),
        Filters(country="us", city="la", networks=net),
        Filters(country="us", region="ca", networks=net),
        base,
    ]


def test_filters_skip_contradictions_and_unknowns() -> None:
    base = Filters(country="us", asn=1)  # the request pins another ASN than the reference's
    assert lookalike_filters(base, REF) == [
        Filters(country="us", city="la", asn=1),
        Filters(country="us", region="ca", asn=1),
        base,
    ]
    no_asn = NodeAttrs("us", "ca", "", "x", 0, Network.RES)
    assert lookalike_filters(Filters(country="us"), no_asn) == [
        Filters(country="us", region="ca"),
        Filters(country="us"),
    ]


def test_filters_stop_where_every_node_qualifies() -> None:
    base = Filters(country="us", city="la")  # every candidate already shares the city
    assert lookalike_filters(base, REF) == [
        Filters(country="us", city="la", asn=7922),
        base,
    ]
    assert lookalike_filters(Filters(asn=7922), REF) == [
        Filters(country="us", city="la", asn=7922),
        Filters(country="us", region="ca", asn=7922),
        Filters(asn=7922),
    ]


def node(i: int, a: NodeAttrs) -> Node:
    return Node(f"n{i}", NodeKind.UPSTREAM, a)


def drain(index: NodeIndex, tiers: list[Filters], rng: random.Random) -> list[Node]:
    """Take nodes one by one the way routing does: first tier with a hit, excluding taken."""
    taken: list[Node] = []
    excluded: set[str] = set()
    while True:
        for tier in tiers:
            picked = index.select(tier, exclude=excluded, rng=rng)
            if picked is not None:
                break
        else:
            return taken
        taken.append(picked)
        excluded.add(picked.id)


def test_replacements_come_most_similar_first() -> None:
    pool = [
        attrs(asn=1, region="ny", city="nyc"),  # ANY
        attrs(asn=1, city="sf"),  # REGION
        attrs(asn=1),  # CITY
        attrs(region="ny", city="nyc"),  # ASN
        attrs(city="sf"),  # ASN_REGION
        attrs(),  # ASN_CITY
    ]
    index = NodeIndex()
    for i, a in enumerate(pool):
        index.upsert(node(i, a))
    order = drain(index, lookalike_filters(Filters(country="us"), REF), random.Random(1))
    assert [likeness(REF, n.attrs) for n in order] == list(Likeness)
    assert [n.id for n in order] == ["n5", "n4", "n3", "n2", "n1", "n0"]


small = st.sampled_from
ATTRS = st.builds(
    NodeAttrs,
    country=small(["us", "de", ""]),
    region=small(["ca", "ny", ""]),
    city=small(["la", "sf", ""]),
    isp=small(["x", "y"]),
    asn=small([0, 1, 2]),
    network=small(list(Network)),
)
FILTERS = st.builds(
    Filters,
    country=small([None, "us", "de"]),
    region=small([None, "ca"]),
    city=small([None, "la"]),
    isp=small([None, "x"]),
    asn=small([None, 1, 2]),
    networks=small([None, frozenset({Network.RES}), frozenset({Network.RES, Network.MOB})]),
)


@given(pool=st.lists(ATTRS, max_size=40), reference=ATTRS, base=FILTERS, seed=st.integers())
def test_draining_the_tiers_is_a_likeness_sort(
    pool: list[NodeAttrs], reference: NodeAttrs, base: Filters, seed: int
) -> None:
    index = NodeIndex()
    for i, a in enumerate(pool):
        index.upsert(node(i, a))
    tiers = lookalike_filters(base, reference)
    assert tiers[-1] == base
    order = drain(index, tiers, random.Random(seed))
    expected = {f"n{i}" for i, a in enumerate(pool) if matches(a, base)}
    assert sorted(n.id for n in order) == sorted(expected)  # every candidate, once
    ranks = [likeness(reference, n.attrs) for n in order]
    assert ranks == sorted(ranks)  # never a less similar node before a more similar one
