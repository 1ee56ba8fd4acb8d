"""The attribute index over the node pool, and `select` over it. Pure: no I/O, no clock.

Theory of operation
-------------------
Every ONLINE node sits in one bucket per key: its country, (country, region),
(country, city), isp, (country, isp), asn, network, (country, network), and the bucket of all
online nodes. Region and city are only meaningful inside a country (SPEC 3 demands a
country for them), and the country-scoped ISP and network keys make the frequent
"country + something" filters exact. A bucket is a list; each node keeps its position in each
of its buckets, so adding appends and removing swaps the last element into the hole: O(1)
both ways, and a uniform random member is one index away.

`select(filters)` takes the smallest bucket the filters name (a union of buckets for a network
set) as the source, then rejection-samples: draw a random member, keep it if it matches every
filter and is not excluded. Two distinct keepers go to the strategy (`two_choices`, lower load
wins); with no load function one keeper is enough. When `_MAX_DRAWS` draws find nothing, the
source is scanned exactly, so a rare match is still found and None means nothing matches.
Small sources are scanned right away.

The scan result is cached per Filters, stamped with the versions of its source buckets: every
change to a bucket gives it a new version from one counter, and any node that could match
lives in the source, so an unchanged stamp proves the cached answer (often "nothing") still
holds. Cost: O(1) expected for every filter that a single key pins down; a filter whose
attributes contradict each other (an ASN of another country) pays one scan of its smallest
bucket per change of that bucket.

Nodes that are not ONLINE stay readable through `get` but leave every bucket.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Hashable, Iterator
from typing import Final

from mypy_extensions import mypyc_attr

from exitgate.model import Node, NodeAttrs, NodeState
from exitgate.routing.select import NETWORK_ORDER, Filters, Load, matches, two_choices

# Bucket slots: the keys a node is filed under (see _keys).
_COUNTRY, _REGION, _CITY, _ISP, _COUNTRY_ISP, _ASN, _NETWORK, _COUNTRY_NETWORK, _ALL = range(9)
_SLOTS: Final = 9
_SCAN_BELOW: Final = 32  # sources this small are scanned: as cheap as sampling, and exact
_MAX_DRAWS: Final = 64  # draws without a single match before sampling gives up and scans
_EXCLUDED_DRAWS: Final = 16  # draws over a cached candidate list before filtering it
_SCAN_CACHE: Final = 1024  # Filters whose exact scans are remembered


def _keys(attrs: NodeAttrs) -> tuple[Hashable, ...]:
    country = attrs.country
    return (
        country,
        (country, attrs.region),
        (country, attrs.city),
        attrs.isp,
        (country, attrs.isp),
        attrs.asn,
        attrs.network,
        (country, attrs.network),
    )


class _Entry:
    """A selectable node and its position in each of its buckets."""

    __slots__ = ("node", "pos")

    def __init__(self, node: Node) -> None:
        self.node = node
        self.pos = [0] * _SLOTS


# A list subclass: mypyc compiles it as a regular class (it cannot subclass list natively).
@mypyc_attr(native_class=False)
class _Bucket(list[_Entry]):
    """The selectable nodes under one key; `version` changes with every add or remove."""

    __slots__ = ("version",)

    def __init__(self) -> None:
        super().__init__()
        self.version = 0


class NodeIndex:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._nodes: dict[str, Node] = {}  # every known node, any state
        self._entries: dict[str, _Entry] = {}  # the selectable (ONLINE) ones
        self._all = _Bucket()
        self._buckets: tuple[dict[Hashable, _Bucket], ...] = tuple({} for _ in range(_ALL))
        self._clock = 0  # bucket versions: unique across buckets, so stamps never collide
        self._scans: dict[Filters, tuple[tuple[int, ...], list[Node]]] = {}
        self._rng = rng or random.Random()

    # -- the pool -----------------------------------------------------------------------------

    def upsert(self, node: Node) -> None:
        """Add or replace a node; only ONLINE nodes become selectable."""
        old = self._entries.pop(node.id, None)
        if old is not None:
            self._unlink(old)
        self._nodes[node.id] = node
        if node.state is NodeState.ONLINE:
            entry = _Entry(node)
            self._link(entry)
            self._entries[node.id] = entry

    def remove(self, node_id: str) -> None:
        self._nodes.pop(node_id, None)
        entry = self._entries.pop(node_id, None)
        if entry is not None:
            self._unlink(entry)

    def get(self, node_id: str) -> Node | None:
        return self._nodes.get(node_id)

    def __len__(self) -> int:
        return len(self._all)

    def __contains__(self, node_id: object) -> bool:
        """Selectable: known and ONLINE."""
        return node_id in self._entries

    def __iter__(self) -> Iterator[Node]:
        """The selectable nodes, in no particular order."""
        return (entry.node for entry in self._all)

    def _link(self, entry: _Entry) -> None:
        self._clock += 1
        for slot, key in enumerate(_keys(entry.node.attrs)):
            bucket = self._buckets[slot].get(key)
            if bucket is None:
                bucket = self._buckets[slot][key] = _Bucket()
            _append(bucket, entry, slot, self._clock)
        _append(self._all, entry, _ALL, self._clock)

    def _unlink(self, entry: _Entry) -> None:
        self._clock += 1
        for slot, key in enumerate(_keys(entry.node.attrs)):
            bucket = self._buckets[slot][key]
            _swap_remove(bucket, entry, slot, self._clock)
            if not bucket:
                del self._buckets[slot][key]
        _swap_remove(self._all, entry, _ALL, self._clock)

    # -- selection ----------------------------------------------------------------------------

    def matches(self, node: Node, filters: Filters) -> bool:
        """Attributes only; whether the node is selectable is `node.id in index`."""
        return matches(node.attrs, filters)

    def select(
        self,
        filters: Filters,
        *,
        exclude: Collection[str] = (),
        load: Load | None = None,
        rng: random.Random | None = None,
    ) -> Node | None:
        """A random ONLINE node matching `filters`, not in `exclude`, weighted away from load.

        None only when no such node exists. Deterministic for a seeded `rng` (and the same
        sequence of pool changes).
        """
        sources = self._sources(filters)
        if not sources:
            return None
        excluded = exclude if isinstance(exclude, set | frozenset) else frozenset(exclude)
        random_ = (rng or self._rng).random
        total = sum(len(bucket) for bucket in sources)
        if total < _SCAN_BELOW:
            return _pick(_scan(sources, filters), excluded, load, random_)
        if self._scans:
            cached = self._scans.get(filters)
            if cached is not None and cached[0] == _stamp(sources):
                return _pick(cached[1], excluded, load, random_)
        first: Node | None = None
        for _ in range(_MAX_DRAWS):
            index = int(random_() * total)
            for bucket in sources:
                if index < len(bucket):
                    break
                index -= len(bucket)
            node = bucket[index].node
            if node.id in excluded or not matches(node.attrs, filters):
                continue
            if first is None:
                if load is None:
                    return node
                first = node
            elif node is not first:
                return two_choices(first, node, load)
        if first is not None:  # one sparse match found: uniform, though without the comparison
            return first
        candidates = _scan(sources, filters)
        if filters not in self._scans and len(self._scans) >= _SCAN_CACHE:
            del self._scans[next(iter(self._scans))]  # the oldest entry
        self._scans[filters] = (_stamp(sources), candidates)
        return _pick(candidates, excluded, load, random_)

    def _sources(self, filters: Filters) -> list[_Bucket]:
        """The smallest bucket (or network union) the filters name; [] when one is empty."""
        country = filters.country
        lookups: list[tuple[int, Hashable]] = []
        if country is not None:
            lookups.append((_COUNTRY, country))
            if filters.region is not None:
                lookups.append((_REGION, (country, filters.region)))
            if filters.city is not None:
                lookups.append((_CITY, (country, filters.city)))
            if filters.isp is not None:
                lookups.append((_COUNTRY_ISP, (country, filters.isp)))
        elif filters.isp is not None:
            lookups.append((_ISP, filters.isp))
        if filters.asn is not None:
            lookups.append((_ASN, filters.asn))
        best = [self._all]
        best_size = len(self._all)
        for slot, key in lookups:
            bucket = self._buckets[slot].get(key)
            if not bucket:
                return []
            if len(bucket) < best_size:
                best, best_size = [bucket], len(bucket)
        if filters.networks is not None:
            # Fixed network order: frozenset order follows str hashes, which vary per process.
            wanted = [n for n in NETWORK_ORDER if n in filters.networks]
            if country is None:
                union = [self._buckets[_NETWORK].get(n) for n in wanted]
            else:
                union = [self._buckets[_COUNTRY_NETWORK].get((country, n)) for n in wanted]
            present = [bucket for bucket in union if bucket]
            size = sum(len(bucket) for bucket in present)
            if not size:
                return []
            if size < best_size:
                best, best_size = present, size
        return best if best_size else []


def _append(bucket: _Bucket, entry: _Entry, slot: int, version: int) -> None:
    entry.pos[slot] = len(bucket)
    bucket.append(entry)
    bucket.version = version


def _swap_remove(bucket: _Bucket, entry: _Entry, slot: int, version: int) -> None:
    last = bucket.pop()
    if last is not entry:
        hole = entry.pos[slot]
        bucket[hole] = last
        last.pos[slot] = hole
    bucket.version = version


def _stamp(sources: list[_Bucket]) -> tuple[int, ...]:
    return tuple(bucket.version for bucket in sources)


def _scan(sources: list[_Bucket], filters: Filters) -> list[Node]:
    """Every node of the source matching the filters (exclusions are per call: not here)."""
    return [
        entry.node for bucket in sources for entry in bucket if matches(entry.node.attrs, filters)
    ]


def _pick(
    candidates: list[Node],
    excluded: Collection[str],
    load: Load | None,
    random_: Callable[[], float],
) -> Node | None:
    """The strategy over an exact candidate list: two distinct uniform picks, lower load."""
    if excluded and len(candidates) <= _EXCLUDED_DRAWS:
        # A short list is filtered at once: drawing could not beat one pass over it (a domain
        # spread over its few exits excludes most of them on every request).
        candidates = [node for node in candidates if node.id not in excluded]
    elif excluded and candidates:
        # A few draws usually dodge a handful of excluded ids; filter the list if not.
        first: Node | None = None
        for _ in range(_EXCLUDED_DRAWS):
            node = candidates[int(random_() * len(candidates))]
            if node.id in excluded or node is first:
                continue
            if first is None:
                if load is None:
                    return node
                first = node
            else:
                return two_choices(first, node, load)
        candidates = [node for node in candidates if node.id not in excluded]
    count = len(candidates)
    if count == 0:
        return None
    i = int(random_() * count)
    if count == 1 or load is None:
        return candidates[i]
    j = int(random_() * (count - 1))
    if j >= i:
        j += 1  # two distinct candidates, uniformly
    return two_choices(candidates[i], candidates[j], load)
