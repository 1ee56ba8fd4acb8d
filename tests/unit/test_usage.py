"""Hourly usage (policy.usage.UsageBook) and its flusher (services.UsageService): buckets,
hour boundaries, one upsert per package-hour, retries, shutdown, credits."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from typing import cast

import pytest

from exitgate.model import Limits, Network, Org, Package
from exitgate.policy.metering import GB, Metering
from exitgate.policy.usage import UsageBook, merge_buckets
from exitgate.registry import Registry
from exitgate.services import AccountService, UsageService
from exitgate.settings import BillingSettings
from exitgate.store.base import (
    AccountStore,
    UsageBucket,
    UsageDelta,
    UsageRecorded,
    UsageTotals,
)

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z, an hour boundary


class Clock:
    def __init__(self, now: float = T0 + 10.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def pkg(pid: str = "pkg_1", org: str = "org_1") -> Package:
    return Package(pid, org, "p", "h", limits=Limits())


def book_with(*orgs: Org, clock: Clock) -> tuple[UsageBook, Metering]:
    by_id = {o.id: o for o in orgs}
    metering = Metering(by_id.get, {"res": 2.0, "mob": 1.0, "dc": 0.5})
    return UsageBook(metering, clock), metering


# -- the book ----------------------------------------------------------------------------------


def test_take_makes_one_row_per_package_hour_and_prices_debits() -> None:
    clock = Clock()
    book, metering = book_with(Org("org_1", "o", 10.0), clock=clock)
    a, b = pkg("a"), pkg("b")
    ra, da = metering.open(a, Network.RES), metering.open(a, Network.DC)
    for _ in range(1000):
        ra.tick_up(3)
        da.tick_down(5)
        book.request("a")
    metering.open(b, Network.MOB).tick_up(GB)
    book.error("a", "NODE_NOT_FOUND")
    book.error("a", "NODE_NOT_FOUND")
    book.error("b", "AUTH_FAILED")
    clock.now += 1
    batch = book.take()
    assert batch is not None
    rows = {r.package_id: r for r in batch.rows}
    assert len(batch.rows) == 2
    assert rows["a"] == UsageDelta("a", T0, 3000, 5000, 1000, {"NODE_NOT_FOUND": 2})
    assert rows["b"] == UsageDelta("b", T0, GB, 0, 0, {"AUTH_FAILED": 1})
    assert batch.debits == {"org_1": pytest.approx(3000 * 2.0 / GB + 5000 * 0.5 / GB + 1.0)}
    assert book.take() is None  # nothing new: nothing to write


def test_hour_rollover_files_each_interval_under_the_hour_it_started() -> None:
    clock = Clock(T0 + 3600 - 1.5)
    book, metering = book_with(Org("org_1", "o", None), clock=clock)
    meter = metering.open(pkg(), Network.DC)
    assert book.delay(1.0) == pytest.approx(1.0)
    clock.now = T0 + 3600 - 0.5
    meter.tick_up(10)
    assert book.take() is not None  # 10 bytes in the first hour
    assert book.delay(1.0) == pytest.approx(0.5)  # woken at the boundary, not after it
    meter.tick_up(20)
    clock.now = T0 + 3600.0
    batch = book.take()
    assert batch is not None and [(r.hour, r.bytes_up) for r in batch.rows] == [(T0, 20)]
    meter.tick_up(40)
    book.request("pkg_1")
    clock.now = T0 + 3601
    batch = book.take()
    assert batch is not None
    assert [(r.hour, r.bytes_up, r.requests) for r in batch.rows] == [(T0 + 3600, 40, 1)]


def test_failed_batches_merge_into_the_next_one() -> None:
    clock = Clock()
    book, metering = book_with(Org("org_1", "o", 5.0), clock=clock)
    meter = metering.open(pkg(), Network.MOB)
    meter.tick_up(GB)
    book.request("pkg_1")
    first = book.take()
    assert first is not None
    book.failed(first)
    meter.tick_down(GB)
    book.request("pkg_1")
    book.error("pkg_1", "GATEWAY_TIMEOUT")
    assert book.unflushed("pkg_1") == UsageTotals(GB, GB, 2)
    clock.now += 1
    merged = book.take()
    assert merged is not None
    assert merged.rows == (UsageDelta("pkg_1", T0, GB, GB, 2, {"GATEWAY_TIMEOUT": 1}),)
    assert merged.debits == {"org_1": pytest.approx(2.0)}
    assert sum(t.bytes_up + t.bytes_down for t in merged.traffic) == 2 * GB
    assert book.unflushed("pkg_1") == UsageTotals()


def test_a_failed_batch_keeps_its_hour() -> None:
    clock = Clock(T0 + 3599.5)
    book, metering = book_with(Org("org_1", "o", None), clock=clock)
    metering.open(pkg(), Network.DC).tick_up(7)
    clock.now = T0 + 3600
    failed = book.take()
    assert failed is not None
    book.failed(failed)
    book.request("pkg_1")
    clock.now = T0 + 3601
    batch = book.take()
    assert batch is not None
    assert sorted((r.hour, r.bytes_up, r.requests) for r in batch.rows) == [
        (T0, 7, 0),
        (T0 + 3600, 0, 1),
    ]


def test_merge_buckets_adds_live_rows_filters_and_limits() -> None:
    stored = [
        UsageBucket(T0 + 3600, 1, 2, 3, {"A": 1}),
        UsageBucket(T0, 10, 20, 30, {}),
    ]
    live = [
        UsageDelta("p", T0 + 3600, 1, 1, 1, {"A": 1, "B": 2}),
        UsageDelta("p", T0 + 7200, 5, 0, 0, {}),
    ]
    merged = merge_buckets(stored, live)
    assert merged == [
        UsageBucket(T0 + 7200, 5, 0, 0, {}),
        UsageBucket(T0 + 3600, 2, 3, 4, {"A": 2, "B": 2}),
        UsageBucket(T0, 10, 20, 30, {}),
    ]
    assert merge_buckets(stored, live, until=T0 + 7200, limit=1) == [merged[1]]
    assert merge_buckets([], live, since=T0 + 7200) == [merged[0]]


# -- the flusher -------------------------------------------------------------------------------


class FakeStore:
    """Records `record_usage` calls; sums like the SQL store; can fail or stall on demand."""

    def __init__(self, *orgs: Org) -> None:
        self.orgs = {o.id: o for o in orgs}
        self.calls: list[tuple[list[UsageDelta], dict[str, float]]] = []
        self.hours: dict[tuple[str, int], UsageDelta] = {}
        self.totals: dict[str, UsageTotals] = {}
        self.fail = 0
        self.stall: threading.Event | None = None
        self.entered = threading.Event()

    def record_usage(
        self, deltas: Sequence[UsageDelta], debits: Mapping[str, float]
    ) -> UsageRecorded:
        self.entered.set()
        if self.stall is not None:
            self.stall.wait(5)
        if self.fail:
            self.fail -= 1
            raise OSError("database is down")
        keys = [(d.package_id, d.hour) for d in deltas]
        assert len(keys) == len(set(keys)), "one upsert per (package, hour) per flush"
        self.calls.append((list(deltas), dict(debits)))
        for d in deltas:
            old = self.hours.get((d.package_id, d.hour), UsageDelta(d.package_id, d.hour))
            self.hours[(d.package_id, d.hour)] = UsageDelta(
                d.package_id,
                d.hour,
                old.bytes_up + d.bytes_up,
                old.bytes_down + d.bytes_down,
                old.requests + d.requests,
            )
            self.totals[d.package_id] = self.totals.get(d.package_id, UsageTotals()) + (
                UsageTotals(d.bytes_up, d.bytes_down, d.requests)
            )
        for org_id, amount in debits.items():
            org = self.orgs[org_id]
            if org.credits is not None:
                self.orgs[org_id] = Org(org.id, org.name, org.credits - amount)
        touched = {d.package_id for d in deltas}
        return UsageRecorded(
            totals={p: self.totals[p] for p in touched},
            orgs=[self.orgs[o] for o in debits if o in self.orgs],
        )

    def usage_totals(self, package_ids: Sequence[str] | None = None) -> dict[str, UsageTotals]:
        return {p: t for p, t in self.totals.items() if package_ids is None or p in package_ids}

    def usage_buckets(
        self, package_id: str, since: int | None = None, until: int | None = None, limit: int = 1
    ) -> list[UsageBucket]:
        rows = [d for (p, _), d in self.hours.items() if p == package_id]
        return [
            UsageBucket(d.hour, d.bytes_up, d.bytes_down, d.requests)
            for d in sorted(rows, key=lambda d: -d.hour)
        ][:limit]


def service_with(store: FakeStore, clock: Clock, interval: float = 3600.0) -> UsageService:
    registry = Registry()
    for org in store.orgs.values():
        registry.put_org(org)
    accounts = AccountService(cast(AccountStore, store), registry)
    billing = BillingSettings(price_per_gb={"res": 2.0})
    return UsageService(accounts, billing, interval=interval, clock=clock)


async def test_flush_writes_one_row_per_package_hour_and_debits_credits() -> None:
    store = FakeStore(Org("org_1", "o", 10.0))
    usage = service_with(store, Clock())
    await usage.start()
    a = pkg("a")
    meter = usage.metering.open(a, Network.RES)
    for _ in range(500):
        meter.tick_up(GB // 1000)
        usage.request("a")
    usage.error("a", "NODE_NOT_FOUND")
    assert await usage.totals("a") == {"bytes_up": GB // 2, "bytes_down": 0, "requests": 500}
    assert await usage.flush()
    assert len(store.calls) == 1
    ((rows, debits),) = store.calls
    assert rows == [UsageDelta("a", int(T0), GB // 2, 0, 500, {"NODE_NOT_FOUND": 1})]
    assert debits == {"org_1": pytest.approx(1.0)}
    registry = usage.accounts.registry
    org = registry.org("org_1")
    assert org is not None and org.credits == pytest.approx(9.0)
    assert usage.metering.credits_left(org) == pytest.approx(9.0)  # nothing pending any more
    assert await usage.totals("a") == {"bytes_up": GB // 2, "bytes_down": 0, "requests": 500}
    await usage.close()
    assert len(store.calls) == 1  # nothing new: close wrote nothing


async def test_store_outage_loses_nothing_and_close_flushes() -> None:
    store = FakeStore(Org("org_1", "o", None))
    usage = service_with(store, Clock())
    await usage.start()
    meter = usage.metering.open(pkg(), Network.DC)
    meter.tick_up(100)
    store.fail = 1
    assert not await usage.flush()
    meter.tick_down(50)
    usage.request("pkg_1")
    assert await usage.totals("pkg_1") == {"bytes_up": 100, "bytes_down": 50, "requests": 1}
    await usage.close()  # the failed batch and the new bytes go in one write
    assert len(store.calls) == 1
    assert store.totals["pkg_1"] == UsageTotals(100, 50, 1)


async def test_cancelling_a_flush_mid_write_keeps_the_books_straight() -> None:
    store = FakeStore(Org("org_1", "o", 1.0))
    usage = service_with(store, Clock())
    await usage.start()
    usage.metering.open(pkg(), Network.RES).tick_up(GB // 4)
    store.stall = threading.Event()
    flush = asyncio.get_running_loop().create_task(usage.flush())
    await asyncio.to_thread(store.entered.wait, 5)
    flush.cancel()  # the database write is in a thread: it will finish regardless
    with pytest.raises(asyncio.CancelledError):
        await flush
    store.stall.set()
    await usage.close()
    assert len(store.calls) == 1  # written once: neither lost nor retried
    org = usage.accounts.registry.org("org_1")
    assert org is not None and org.credits == pytest.approx(0.5)
    assert usage.metering.credits_left(org) == pytest.approx(0.5)


async def test_background_loop_flushes_every_interval() -> None:
    store = FakeStore(Org("org_1", "o", None))
    usage = service_with(store, Clock(), interval=0.01)
    await usage.start()
    usage.request("pkg_1")
    for _ in range(200):
        if store.calls:
            break
        await asyncio.sleep(0.01)
    assert store.totals["pkg_1"].requests == 1
    await usage.close()


async def test_start_seeds_caps_and_buckets_merge_unflushed() -> None:
    store = FakeStore(Org("org_1", "o", None))
    store.totals["pkg_1"] = UsageTotals(600, 400, 2)
    store.hours[("pkg_1", int(T0))] = UsageDelta("pkg_1", int(T0), 600, 400, 2)
    usage = service_with(store, Clock())
    await usage.start()
    assert usage.metering.used("pkg_1") == 1000
    usage.request("pkg_1")
    found = await usage.buckets("pkg_1", since=T0 + 1800, until=T0 + 1801)
    assert found == [UsageBucket(int(T0), 600, 400, 3, {})]
    await usage.close()
