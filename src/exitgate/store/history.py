"""The dashboard's history: per-minute aggregates of `LiveStats`, kept in the store.

`HistoryStore` writes and reads the `stats_minutes` table (one row per UTC minute) through
SQLAlchemy Core, one code path for SQLite and PostgreSQL. A write adds deltas to the minute's
counters (bytes, requests, errors) and keeps the larger of the gauges (tunnels, connections),
in one UPSERT, so several instances on one database add up instead of overwriting each other.
Rows older than the retention are pruned by `prune`.

`HistoryWriter` samples a `LiveStats` every `interval` seconds (configurable so tests can use
~1 s), turns the growth of its totals since the last sample into deltas, and writes them to
the current minute. It also keeps the rates of the last interval for the overview cards. A
store failure is logged and the deltas are carried to the next sample: nothing is lost but
the timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from exitgate.observe.stats import LiveStats
from exitgate.store.migrate import upgrade
from exitgate.store.sql_schema import engine_for, stats_minutes
from exitgate.tasks import spawn

log = logging.getLogger("exitgate.history")
COUNTERS = ("bytes_up", "bytes_down", "requests", "errors")
GAUGES = ("tunnels", "connections")
PRUNE_EVERY = 3600.0  # seconds between retention sweeps


@dataclass(frozen=True, slots=True)
class MinuteRow:
    minute: int  # epoch seconds, start of the UTC minute (or of a wider step when read)
    bytes_up: int = 0
    bytes_down: int = 0
    requests: int = 0
    errors: int = 0
    tunnels: int = 0
    connections: int = 0


def minute_of(t: float) -> int:
    return int(t // 60) * 60


class HistoryStore:
    def __init__(self, url: str = "", engine: Engine | None = None) -> None:
        self._own = engine is None
        self.engine = engine if engine is not None else engine_for(url)
        self._lock = threading.Lock() if self.engine.dialect.name == "sqlite" else None
        if self._own:  # a shared engine comes from an opened (so migrated) store
            upgrade(self.engine)

    def close(self) -> None:
        if self._own:
            self.engine.dispose()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self._lock or contextlib.nullcontext(), self.engine.begin() as conn:
            yield conn

    def add(self, row: MinuteRow) -> None:
        """Add the counters to the row's minute; keep the larger gauges."""
        values = {name: getattr(row, name) for name in (*COUNTERS, *GAUGES)}
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        stmt = dialect.insert(stats_minutes).values(minute=row.minute, **values)
        ex = stmt.excluded
        c = stats_minutes.c
        updates: dict[str, object] = {n: c[n] + ex[n] for n in COUNTERS}
        for n in GAUGES:
            updates[n] = sa.case((ex[n] > c[n], ex[n]), else_=c[n])
        with self._tx() as conn:
            conn.execute(stmt.on_conflict_do_update(index_elements=["minute"], set_=updates))

    def read(self, since: float, until: float | None = None, step: int = 60) -> list[MinuteRow]:
        """Rows in [since, until), oldest first, summed into buckets of `step` seconds
        (gauges: the largest); minutes without a row are absent."""
        c = stats_minutes.c
        query = sa.select(stats_minutes).where(c.minute >= minute_of(since)).order_by(c.minute)
        if until is not None:
            query = query.where(c.minute < until)
        with self._tx() as conn:
            rows = [MinuteRow(**dict(r)) for r in conn.execute(query).mappings()]
        return rows if step <= 60 else _bucket(rows, step)

    def prune(self, before: float) -> int:
        with self._tx() as conn:
            gone = conn.execute(stats_minutes.delete().where(stats_minutes.c.minute < before))
            return gone.rowcount or 0


def _bucket(rows: list[MinuteRow], step: int) -> list[MinuteRow]:
    out: dict[int, dict[str, int]] = {}
    for r in rows:
        acc = out.setdefault(r.minute // step * step, dict.fromkeys((*COUNTERS, *GAUGES), 0))
        for n in COUNTERS:
            acc[n] += getattr(r, n)
        for n in GAUGES:
            acc[n] = max(acc[n], getattr(r, n))
    return [MinuteRow(minute=m, **v) for m, v in sorted(out.items())]


@dataclass(frozen=True, slots=True)
class Rates:
    """Per-second figures over the last sampling interval."""

    bytes_up: float = 0.0
    bytes_down: float = 0.0
    requests: float = 0.0
    errors: float = 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


class HistoryWriter:
    def __init__(
        self,
        stats: LiveStats,
        store: HistoryStore,
        *,
        interval: float = 10.0,
        retention: float = 8 * 86400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.stats = stats
        self.store = store
        self.interval = interval
        self.retention = retention
        self.clock = clock
        self.rates = Rates()
        self._last = self._totals()
        self._last_at = clock()
        self._carry = dict.fromkeys(COUNTERS, 0)  # deltas a failed write left over
        self._pruned_at = 0.0
        self._task: asyncio.Task[None] | None = None

    def _totals(self) -> dict[str, int]:
        s = self.stats
        up, down = s.bytes()  # metered accounts plus the unmetered part
        return {
            "bytes_up": up,
            "bytes_down": down,
            "requests": s.requests_total,
            "errors": s.errors_total,
        }

    def start(self) -> None:
        self._task = spawn(self._run(), "dashboard-history")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self.sample()  # the last partial interval

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.sample()

    async def sample(self) -> None:
        now = self.clock()
        totals = self._totals()
        deltas = {n: max(0, totals[n] - self._last[n]) + self._carry[n] for n in COUNTERS}
        elapsed = max(now - self._last_at, 1e-3)
        fresh = {n: totals[n] - self._last[n] for n in COUNTERS}
        self.rates = Rates(**{n: max(0, v) / elapsed for n, v in fresh.items()})
        self._last, self._last_at = totals, now
        row = MinuteRow(
            minute=minute_of(now),
            tunnels=self.stats.tunnels_active,
            connections=self.stats.connections_active,
            **deltas,
        )
        try:
            await asyncio.to_thread(self.store.add, row)
            self._carry = dict.fromkeys(COUNTERS, 0)
            if now - self._pruned_at >= PRUNE_EVERY:
                self._pruned_at = now
                await asyncio.to_thread(self.store.prune, now - self.retention)
        except Exception as exc:  # the store is down: keep the deltas for the next sample
            log.warning("history write failed, carried to the next sample: %s", exc)
            self._carry = deltas
