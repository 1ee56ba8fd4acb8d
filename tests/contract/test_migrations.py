"""Schema migrations (issue 9): a fresh database reaches exactly the schema the code expects, a
database made before migrations existed upgrades in place keeping its rows, and several
instances starting at once on an empty PostgreSQL database all come up."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from exitgate.store import migrate
from exitgate.store.sql import SqlStore
from exitgate.store.sql_schema import engine_for, metadata
from tests.e2e.conftest import PG_ADMIN


@pytest.fixture
def pg_url() -> Iterator[str]:
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=2)
    except psycopg.Error as exc:
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    name = f"exitgate_mig_{secrets.token_hex(4)}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
    finally:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.close()


def _diff(engine: sa.Engine) -> list[object]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_fresh_database_gets_exactly_the_codes_schema(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = f"sqlite:///{tmp_path / 'db'}" if backend == "sqlite" else request.getfixturevalue(
        "pg_url")
    store = SqlStore(url)
    try:
        assert _diff(store.engine) == []
        assert migrate.current(store.engine) is not None
    finally:
        store.close()


def test_a_database_from_before_migrations_upgrades_in_place(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = engine_for(url)
    with engine.begin() as conn:  # what `create_all` made before alembic: the baseline
        context = MigrationContext.configure(conn)
        from alembic.operations import Operations

        baseline = __import__(
            "exitgate.store.migrations.versions.0001_baseline", fromlist=["upgrade"])
        with Operations.context(context):
            baseline.upgrade()
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO orgs (id, name, credits, created_at) VALUES ('org_1', 'acme', 5, 0)"))
    engine.dispose()
    store = SqlStore(url)
    try:
        assert store.get_org("org_1").name == "acme"
        assert migrate.current(store.engine) is not None
        assert _diff(store.engine) == []
    finally:
        store.close()


def _start_together(url: str, n: int = 4) -> list[SqlStore]:
    """`n` stores opened at once on one database: every one must come up."""
    errors: list[BaseException] = []
    stores: list[SqlStore] = []

    def start() -> None:
        try:
            stores.append(SqlStore(url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(stores) == n
    return stores


def test_concurrent_first_starts_on_postgresql(pg_url: str) -> None:
    stores = _start_together(pg_url)
    try:
        assert _diff(stores[0].engine) == []
    finally:
        for store in stores:
            store.close()


def test_concurrent_first_starts_on_sqlite(tmp_path: Path) -> None:
    for store in _start_together(f"sqlite:///{tmp_path / 'db'}"):
        store.close()
