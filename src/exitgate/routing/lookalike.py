"""`prefer-lookalike`: replacements that resemble the node they replace (SPEC 5). Pure.

Theory of operation
-------------------
Similarity is a ladder of tiers, most similar first:

    0 ASN_CITY     same ASN and same city
    1 ASN_REGION   same ASN and same region
    2 ASN          same ASN
    3 CITY         same city
    4 REGION       same region
    5 ANY          anything else the request's filters allow

Region and city names are only unique inside a country, so "same city" means same
(country, city). An unknown attribute (ASN 0, empty name) never counts as equal: two nodes
that both lack a city are not alike.

Rather than scoring the whole pool, `lookalike_filters` turns the ladder into a list of
narrower `Filters`, each the request's filters plus the reference's attributes of that tier.
The caller asks `NodeIndex.select` for each in turn and takes the first hit; every narrowed
filter has an index bucket of its own (asn, (country, city), (country, region)), so a
replacement costs a few O(1) selections and keeps the load spreading of `two_choices`
within its tier. Tiers no node can match, or that cannot find anything an earlier tier did
not, are left out (see `lookalike_filters`), so the list holds no wasted lookups.

Decision: lookalike applies to every move of a session with `prefer-lookalike`: failure
replacements and scheduled rotations (a rotation replaces the node as well).
"""

from __future__ import annotations

import enum

from exitgate.model import NodeAttrs
from exitgate.routing.select import Filters


class Likeness(enum.IntEnum):
    ASN_CITY = 0
    ASN_REGION = 1
    ASN = 2
    CITY = 3
    REGION = 4
    ANY = 5


def likeness(reference: NodeAttrs, other: NodeAttrs) -> Likeness:
    """The tier of `other` relative to `reference` (lower is more alike)."""
    asn = reference.asn != 0 and other.asn == reference.asn
    country = reference.country != "" and other.country == reference.country
    city = country and reference.city != "" and other.city == reference.city
    region = country and reference.region != "" and other.region == reference.region
    if asn and city:
        return Likeness.ASN_CITY
    if asn and region:
        return Likeness.ASN_REGION
    if asn:
        return Likeness.ASN
    if city:
        return Likeness.CITY
    if region:
        return Likeness.REGION
    return Likeness.ANY


def lookalike_filters(base: Filters, reference: NodeAttrs) -> list[Filters]:
    """`base` narrowed tier by tier toward `reference`, most similar first, `base` last.

    Selecting from each filter in turn, excluding what was taken, yields nodes in order of
    `likeness` (exactly: the first filter a node matches is its tier's, or `base` for the
    tier every remaining node shares). Left out: tiers no node can match (an unknown or
    contradicting attribute), tiers inside an earlier tier's filter (already exhausted), and
    everything after a tier that is `base` itself (every node of `base` qualifies for it).
    """
    tiers: list[Filters] = []
    for want_asn, want_city, want_region in _LADDER:
        narrowed = _narrow(base, reference, want_asn, want_city, want_region)
        if narrowed is None or any(_within(narrowed, earlier) for earlier in tiers):
            continue
        if narrowed == base:
            break
        tiers.append(narrowed)
    tiers.append(base)
    return tiers


# (same ASN, same city, same region) for the tiers ASN_CITY .. REGION
_LADDER = (
    (True, True, False),
    (True, False, True),
    (True, False, False),
    (False, True, False),
    (False, False, True),
)


def _narrow(
    base: Filters, ref: NodeAttrs, want_asn: bool, want_city: bool, want_region: bool
) -> Filters | None:
    """`base` plus the reference's attributes named; None when one is unknown or contradicts."""
    asn, country, city, region = base.asn, base.country, base.city, base.region
    if want_asn:
        if ref.asn == 0 or asn not in (None, ref.asn):
            return None
        asn = ref.asn
    if want_city or want_region:
        if not ref.country or country not in (None, ref.country):
            return None
        country = ref.country
    if want_city:
        if not ref.city or city not in (None, ref.city):
            return None
        city = ref.city
    if want_region:
        if not ref.region or region not in (None, ref.region):
            return None
        region = ref.region
    return Filters(country, region, city, base.isp, asn, base.networks)


def _within(inner: Filters, outer: Filters) -> bool:
    """Every node matching `inner` matches `outer` (they only differ by pinned fields)."""
    return all(
        o is None or i == o
        for i, o in (
            (inner.country, outer.country),
            (inner.region, outer.region),
            (inner.city, outer.city),
            (inner.asn, outer.asn),
        )
    )
