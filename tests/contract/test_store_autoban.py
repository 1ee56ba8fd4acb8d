"""The package `autoban` setting in every account store, and opening an older database that
lacks its column (issue 13)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from exitgate.model import AutoBan
from exitgate.store import migrate
from exitgate.store.base import UNSET, AccountStore, NewPackage, PackageUpdate, open_store
from exitgate.store.keys import hash_key, new_key
from exitgate.store.sql import SqlStore
from exitgate.store.sql_schema import engine_for
from tests.contract.test_store import store  # noqa: F401 - the parametrized store fixture


def test_autoban_roundtrips_and_clears(store: AccountStore) -> None:  # noqa: F811
    org = store.create_org("acme", None)
    setting = AutoBan(frozenset({403, 429}), 120)
    pkg = store.create_package(NewPackage(org_id=org.id, autoban=setting), hash_key(new_key()))
    assert pkg.autoban == setting and store.get_package(pkg.id).autoban == setting
    plain = store.create_package(NewPackage(org_id=org.id), hash_key(new_key()))
    assert plain.autoban is None
    assert store.update_package(pkg.id, PackageUpdate(name="x")).autoban == setting
    assert store.update_package(pkg.id, PackageUpdate(autoban=None)).autoban is None
    changed = store.update_package(plain.id, PackageUpdate(autoban=AutoBan(frozenset({403}))))
    assert changed.autoban == AutoBan(frozenset({403}), 600)
    assert PackageUpdate().autoban is UNSET


def test_an_older_database_without_the_column_still_opens(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = engine_for(url)
    migrate.upgrade(engine, "0003")  # the schema before issue 13, with a package in it
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO orgs (id, name, credits, created_at) VALUES ('org_old', 'a', NULL, 0)"))
        conn.execute(sa.text(
            "INSERT INTO packages (id, org_id, name, key_hash, status, ip_allowlist, protocols,"
            " networks, created_at) VALUES ('pkg_old', 'org_old', 'old', 'h', 'active', '[]',"
            " '[]', '[]', 0)"))
    engine.dispose()
    reopened = open_store(url)  # upgrades in place
    try:
        assert reopened.get_package("pkg_old").name == "old"
        assert reopened.get_package("pkg_old").autoban is None
        assert isinstance(reopened, SqlStore)
        assert migrate.current(reopened.engine) == migrate.head()
    finally:
        reopened.close()
