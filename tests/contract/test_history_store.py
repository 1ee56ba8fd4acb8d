"""The dashboard's per-minute history (`store.history`) over SQLite file, SQLite in memory and
PostgreSQL: UPSERT adds counters and keeps the larger gauges, reads bucket by step, prune
drops old minutes, and the sampler turns `LiveStats` growth into per-minute deltas."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from exitgate.observe.stats import LiveStats
from exitgate.store.history import HistoryStore, HistoryWriter, MinuteRow, minute_of
from tests.contract.test_store import PG_URL, _pg_admin

M0 = 1_767_225_600  # 2026-01-01T00:00:00Z, a minute (and hour) boundary


@pytest.fixture(params=["sqlite-file", "sqlite-memory", "postgresql"])
def history(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HistoryStore]:
    if request.param == "sqlite-file":
        s = HistoryStore(f"sqlite:///{tmp_path / 'h.db'}")
    elif request.param == "sqlite-memory":
        s = HistoryStore("sqlite://")
    else:
        conn = _pg_admin()
        if conn is None:
            pytest.skip("PostgreSQL not reachable (or psycopg missing)")
        schema = "h_" + secrets.token_hex(6)
        conn.execute(f'CREATE SCHEMA "{schema}"')  # type: ignore[attr-defined]
        sep = "&" if "?" in PG_URL else "?"
        s = HistoryStore(f"{PG_URL}{sep}options=-csearch_path%3D{schema}")
        try:
            yield s
        finally:
            s.close()
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')  # type: ignore[attr-defined]
            conn.close()  # type: ignore[attr-defined]
        return
    yield s
    s.close()


def test_add_sums_counters_and_keeps_peak_gauges(history: HistoryStore) -> None:
    history.add(MinuteRow(M0, bytes_up=10, bytes_down=100, requests=1, tunnels=5, connections=2))
    history.add(MinuteRow(M0, bytes_up=5, bytes_down=50, requests=2, errors=1, tunnels=3))
    history.add(MinuteRow(M0 + 60, bytes_down=7, tunnels=1))
    assert history.read(M0) == [
        MinuteRow(M0, 15, 150, 3, 1, 5, 2),
        MinuteRow(M0 + 60, 0, 7, 0, 0, 1, 0),
    ]
    assert history.read(M0, until=M0 + 60) == [MinuteRow(M0, 15, 150, 3, 1, 5, 2)]


def test_read_buckets_by_step_and_prune_drops_old_minutes(history: HistoryStore) -> None:
    for i in range(12):  # one whole 10-minute bucket and two minutes of the next
        history.add(MinuteRow(M0 + 60 * i, bytes_up=1, requests=2, tunnels=i))
    buckets = history.read(M0, step=600)
    assert [(b.minute, b.bytes_up, b.requests, b.tunnels) for b in buckets] == [
        (M0, 10, 20, 9),
        (M0 + 600, 2, 4, 11),
    ]
    assert history.prune(M0 + 600) == 10
    assert [r.minute for r in history.read(M0)] == [M0 + 600, M0 + 660]


async def test_writer_writes_growth_since_the_last_sample(tmp_path: Path) -> None:
    store = HistoryStore(f"sqlite:///{tmp_path / 'w.db'}")
    now = [M0 + 5.0]
    stats = LiveStats()
    stats.bytes_up, stats.requests_total = 1000, 4  # before the writer: not this history's
    writer = HistoryWriter(stats, store, interval=1.0, clock=lambda: now[0])
    stats.bytes_up += 300
    stats.bytes_down += 700
    stats.requests_total += 3
    stats.errors_total += 1
    stats.tunnels_active = 2
    now[0] += 2.0
    await writer.sample()
    assert writer.rates.bytes_down == pytest.approx(350.0)
    assert writer.rates.error_rate == pytest.approx(1 / 3)
    stats.bytes_down += 100
    stats.tunnels_active = 1
    now[0] = M0 + 61.0  # the next minute
    await writer.sample()
    await writer.sample()  # nothing new: adds zeros, no new figures
    assert store.read(M0) == [
        MinuteRow(M0, 300, 700, 3, 1, 2, 0),
        MinuteRow(minute_of(M0 + 61), 0, 100, 0, 0, 1, 0),
    ]
    store.close()
