"""Bytes per live session in the in-process session store, and whether lookups stay flat.

    .venv/bin/python -m bench.sessions_scale [--sessions 1000000] [--lookups 200000]

Fills a `MemorySessionStore` (the embedded default) with N sessions the way the gateway
does (`record`, one per first request of a session: package id, session id `s<n>`, the
canonical rules, a node id from a pool of 1,000), measuring the process's RSS before and
after (the store's dicts, the expiry heap, the records and their strings: everything a live
session costs). Lookups (`get`, the call every request with a session makes) are timed at
each decade of size on random existing keys, so "flat" is a number per size, not a claim.
Issue 10, point 6.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import sys
import time
from pathlib import Path

from exitgate.store.sessions import MemorySessionStore, SessionKey


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def lookup_us(store: MemorySessionStore, keys: list[SessionKey], n: int) -> float:
    sample = [keys[random.randrange(len(keys))] for _ in range(n)]
    now = time.monotonic()
    t0 = time.perf_counter()
    for key in sample:
        await store.get(key, now)
    return (time.perf_counter() - t0) / n * 1e6


async def run(total: int, lookups: int) -> None:
    store = MemorySessionStore(idle_timeout=3600.0)
    nodes = [f"node-{i:04d}" for i in range(1000)]
    rules = "country-us"
    package = "pkg-bench"
    keys: list[SessionKey] = []
    gc.collect()
    base = rss_bytes()
    checkpoints = {10**k for k in range(3, 10) if 10**k <= total} | {total}
    rows: list[tuple[int, float, float, float | None]] = []
    now = time.monotonic()
    t0 = time.perf_counter()
    for i in range(total):
        key = SessionKey(package, f"s{i}")
        await store.record(key, rules, nodes[i % 1000], now)
        if i + 1 in checkpoints:
            fill_us = (time.perf_counter() - t0) / (i + 1) * 1e6
            # the key list is the benchmark's, not the store's: count it out
            keys_now = keys
            gc.collect()
            grown = rss_bytes() - base - sys.getsizeof(keys_now)
            rows.append((i + 1, grown / (i + 1), fill_us, None))
        keys.append(key)
        if i + 1 in checkpoints:
            get_us = await lookup_us(store, keys, lookups)
            size, per, fill, _ = rows[-1]
            rows[-1] = (size, per, fill, get_us)
    print("| live sessions | bytes per session (RSS) | record µs (mean so far) | get µs |")
    print("|---:|---:|---:|---:|")
    for size, per, fill, shown in rows:
        print(f"| {size:,} | {per:,.0f} | {fill:.2f} | {shown or 0.0:.2f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sessions_scale", description=__doc__)
    p.add_argument("--sessions", type=int, default=1_000_000)
    p.add_argument("--lookups", type=int, default=200_000)
    args = p.parse_args(argv)
    asyncio.run(run(args.sessions, args.lookups))
    return 0


if __name__ == "__main__":
    sys.exit(main())
