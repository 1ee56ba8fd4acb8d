"""Usage storage over every account store (SQLite file, SQLite in memory, PostgreSQL):
atomic per-hour increments, totals read back, credit debits in the same transaction.

PostgreSQL: as in test_store.py (127.0.0.1:5432, db `test`, user `postgres`; skipped when
unreachable); each test gets its own schema.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from exitgate.store.base import (
    HOUR,
    AccountStore,
    NewPackage,
    UsageBucket,
    UsageDelta,
    UsageTotals,
    hour_of,
    open_store,
)
from exitgate.store.keys import hash_key, new_key
from tests.contract.test_store import PG_URL, _pg_admin

H0 = 1_767_225_600  # 2026-01-01T00:00:00Z


@pytest.fixture(params=["sqlite-file", "sqlite-memory", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AccountStore]:
    if request.param == "sqlite-file":
        s = open_store(f"sqlite:///{tmp_path / 'usage.db'}")
    elif request.param == "sqlite-memory":
        s = open_store("sqlite://")
    else:
        conn = _pg_admin()
        if conn is None:
            pytest.skip("PostgreSQL not reachable (or psycopg missing)")
        schema = "u_" + secrets.token_hex(6)
        conn.execute(f'CREATE SCHEMA "{schema}"')  # type: ignore[attr-defined]
        sep = "&" if "?" in PG_URL else "?"
        s = open_store(f"{PG_URL}{sep}options=-csearch_path%3D{schema}")
        try:
            yield s
        finally:
            s.close()
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')  # type: ignore[attr-defined]
            conn.close()  # type: ignore[attr-defined]
        return
    yield s
    s.close()


def _package(store: AccountStore, org_id: str) -> str:
    return store.create_package(NewPackage(org_id=org_id), hash_key(new_key())).id


def test_hour_of() -> None:
    assert hour_of(H0) == H0 and hour_of(H0 + 3599.999) == H0 and hour_of(H0 + 3600) == H0 + HOUR


def test_record_usage_adds_per_hour_and_returns_totals(store: AccountStore) -> None:
    org = store.create_org("acme", 10.0)
    a, b = _package(store, org.id), _package(store, org.id)
    done = store.record_usage(
        [
            UsageDelta(a, H0, 100, 200, 3, {"NODE_NOT_FOUND": 2}),
            UsageDelta(b, H0, 1, 0, 1),
        ],
        {org.id: 0.25},
    )
    assert done.totals == {a: UsageTotals(100, 200, 3), b: UsageTotals(1, 0, 1)}
    assert [(o.id, o.credits) for o in done.orgs] == [(org.id, 9.75)]
    done = store.record_usage(
        [
            UsageDelta(a, H0, 10, 20, 1, {"NODE_NOT_FOUND": 1, "AUTH_FAILED": 4}),
            UsageDelta(a, H0 + HOUR, 5, 5, 5),
        ],
        {org.id: 0.75},
    )
    assert done.totals == {a: UsageTotals(115, 225, 9)}
    assert done.orgs[0].credits == pytest.approx(9.0)
    assert store.get_org(org.id).credits == pytest.approx(9.0)
    assert store.usage_buckets(a) == [
        UsageBucket(H0 + HOUR, 5, 5, 5, {}),
        UsageBucket(H0, 110, 220, 4, {"AUTH_FAILED": 4, "NODE_NOT_FOUND": 3}),
    ]
    assert store.usage_totals() == {a: UsageTotals(115, 225, 9), b: UsageTotals(1, 0, 1)}
    assert store.usage_totals([b]) == {b: UsageTotals(1, 0, 1)}
    assert store.usage_totals([]) == {} and store.usage_totals(["pkg_none"]) == {}


def test_buckets_since_until_limit(store: AccountStore) -> None:
    org = store.create_org("acme", None)
    p = _package(store, org.id)
    store.record_usage([UsageDelta(p, H0 + i * HOUR, i, 0, 1) for i in range(6)], {})
    hours = [b.hour for b in store.usage_buckets(p)]
    assert hours == [H0 + i * HOUR for i in reversed(range(6))]
    assert [b.bytes_up for b in store.usage_buckets(p, since=H0 + 2 * HOUR)] == [5, 4, 3, 2]
    assert [b.bytes_up for b in store.usage_buckets(p, until=H0 + 2 * HOUR)] == [1, 0]
    got = store.usage_buckets(p, since=H0 + HOUR, until=H0 + 5 * HOUR, limit=2)
    assert [b.bytes_up for b in got] == [4, 3]
    assert store.usage_buckets("pkg_none") == []


def test_debits_leave_unlimited_pools_and_skip_unknown_orgs(store: AccountStore) -> None:
    free = store.create_org("free", None)
    p = _package(store, free.id)
    done = store.record_usage([UsageDelta(p, H0, 1, 1, 1)], {free.id: 5.0, "org_gone": 1.0})
    assert [(o.id, o.credits) for o in done.orgs] == [(free.id, None)]
    paid = store.create_org("paid", 0.5)
    done = store.record_usage([], {paid.id: 1.5})  # a debit may take a pool below zero
    assert done.orgs[0].credits == pytest.approx(-1.0) and done.totals == {}


def test_empty_rows_write_nothing(store: AccountStore) -> None:
    done = store.record_usage([UsageDelta("pkg_x", H0)], {})
    assert done.totals == {} and store.usage_buckets("pkg_x") == []


def test_many_rows_in_one_flush(store: AccountStore) -> None:
    org = store.create_org("acme", None)
    ids = [f"pkg_{i}" for i in range(1200)]  # more than one statement's worth of rows
    done = store.record_usage([UsageDelta(i, H0, 1, 2, 3, {"X": 1}) for i in ids], {org.id: 1})
    assert len(done.totals) == 1200 and set(done.totals.values()) == {UsageTotals(1, 2, 3)}
    assert store.usage_buckets("pkg_1199") == [UsageBucket(H0, 1, 2, 3, {"X": 1})]


def test_concurrent_flushes_never_lose_each_other(store: AccountStore) -> None:
    """Several instances (threads here) flush the same package-hour and debit one pool."""
    org = store.create_org("acme", 100.0)
    p = _package(store, org.id)
    errors: list[BaseException] = []

    def instance() -> None:
        try:
            for _ in range(20):
                store.record_usage([UsageDelta(p, H0, 1, 2, 1, {"E": 1})], {org.id: 0.5})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=instance) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert store.usage_totals([p]) == {p: UsageTotals(80, 160, 80)}
    assert store.usage_buckets(p) == [UsageBucket(H0, 80, 160, 80, {"E": 80})]
    assert store.get_org(org.id).credits == pytest.approx(60.0)


def test_usage_survives_reopening(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'again.db'}"
    first = open_store(url)
    org = first.create_org("acme", 1.0)
    p = _package(first, org.id)
    first.record_usage([UsageDelta(p, H0, 7, 8, 9, {"E": 1})], {org.id: 0.5})
    first.close()
    second = open_store(url)
    try:
        assert second.usage_totals() == {p: UsageTotals(7, 8, 9)}
        assert second.usage_buckets(p) == [UsageBucket(H0, 7, 8, 9, {"E": 1})]
        assert second.get_org(org.id).credits == pytest.approx(0.5)
    finally:
        second.close()
