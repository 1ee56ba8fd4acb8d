"""Micro-benchmark of NodeIndex.select: µs per pick over pools of 10^3, 10^5 and 10^6 nodes.

    python bench/select_bench.py [--sizes 1000,100000,1000000] [--picks 20000]

Pools have a skewed, realistic spread: country popularity falls off like a Zipf law (the
first country holds ~30%), each country has its own regions, cities, ISPs and ASNs, and
networks are 70% res, 20% mob, 10% dc. Every pick passes a load function (a dict lookup),
as the gateway does. The "nothing" cases name values that exist, in another country: "city"
answered by a missing (country, city) key; "asn elsewhere" needs one scan of the ASN's
bucket, then its cached (and version-stamped) answer.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from exitgate.model import Network, Node, NodeAttrs, NodeKind
from exitgate.routing import Filters, NodeIndex

COUNTRIES = ["us", "de", "gb", "fr", "br", "in", "jp", "ca", "it", "es", "nl", "pl", "mx", "au"]
NETWORKS = [Network.RES] * 7 + [Network.MOB] * 2 + [Network.DC]


def build(size: int, rng: random.Random) -> NodeIndex:
    weights = [1 / (rank + 1) for rank in range(len(COUNTRIES))]
    index = NodeIndex(rng=random.Random(1))
    for i in range(size):
        country = rng.choices(COUNTRIES, weights)[0]
        region = int(rng.paretovariate(1.2)) % 40
        city = int(rng.paretovariate(1.0)) % 15
        isp = int(rng.paretovariate(1.1)) % 25
        attrs = NodeAttrs(
            country=country,
            region=f"{country}_region_{region}",
            city=f"{country}_city_{region}_{city}",
            isp=f"{country}_isp_{isp}",
            asn=10_000 + COUNTRIES.index(country) * 100 + isp * 3 + rng.randrange(3),
            network=rng.choice(NETWORKS),
        )
        index.upsert(Node(id=f"n{i}", kind=NodeKind.UPSTREAM, attrs=attrs))
    return index


CASES = {
    "no filter": Filters(),
    "country": Filters(country="us"),
    "country+city": Filters(country="us", city="us_city_1_1"),
    "country+isp+network": Filters(country="de", isp="de_isp_2", networks=frozenset({Network.MOB})),
    "nothing: city elsewhere": Filters(country="us", city="de_city_1_1"),
    "nothing: asn elsewhere": Filters(country="us", asn=10_100),  # a German ASN: scan, cached
}


def bench(index: NodeIndex, filters: Filters, picks: int) -> tuple[float, int]:
    loads: dict[str, float] = {}
    load = loads.get
    rng = random.Random(7)

    def load_of(node_id: str) -> float:
        return load(node_id, 0.0)

    found = 0
    start = time.perf_counter()
    for _ in range(picks):
        if index.select(filters, load=load_of, rng=rng) is not None:
            found += 1
    elapsed = time.perf_counter() - start
    return elapsed / picks * 1e6, found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--picks", type=int, default=20000)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{'pool':>9} {'case':<22} {'us/pick':>9} {'found':>7}")
    for size in sizes:
        started = time.perf_counter()
        gc.disable()  # a million small objects: the cyclic GC would rescan them repeatedly
        index = build(size, random.Random(size))
        gc.enable()
        gc.freeze()
        built = time.perf_counter() - started
        print(f"{size:>9} {'(build, s)':<22} {built:>9.2f}")
        for name, filters in CASES.items():
            micros, found = bench(index, filters, args.picks)
            print(f"{size:>9} {name:<22} {micros:>9.2f} {found:>7}")


if __name__ == "__main__":
    main()
