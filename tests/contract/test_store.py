"""One suite over every account store (SQLite file, SQLite in memory, PostgreSQL), plus the
registry loaded from each.

PostgreSQL: 127.0.0.1:5432, database `test`, user `postgres` (override with
EXITGATE_TEST_POSTGRES_URL); each test gets its own schema, dropped afterwards. Skipped when
the server is unreachable.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from exitgate.model import (
    Limits,
    Network,
    Node,
    NodeAttrs,
    NodeKind,
    NodeState,
    PackageStatus,
    Protocol,
)
from exitgate.registry import Registry
from exitgate.store.base import (
    AccountStore,
    NewNode,
    NewPackage,
    NodeUpdate,
    NotFound,
    OrgUpdate,
    PackageUpdate,
    open_store,
)
from exitgate.store.keys import hash_key, new_key

PG_URL = os.environ.get("EXITGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_admin() -> object | None:
    try:
        import psycopg
    except ImportError:
        return None
    try:
        return psycopg.connect(PG_URL, connect_timeout=2, autocommit=True)
    except psycopg.OperationalError:
        return None


@pytest.fixture(params=["sqlite-file", "sqlite-memory", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AccountStore]:
    if request.param == "sqlite-file":
        s = open_store(f"sqlite:///{tmp_path / 'accounts.db'}")
        yield s
        s.close()
        return
    if request.param == "sqlite-memory":
        s = open_store("sqlite://")
        yield s
        s.close()
        return
    conn = _pg_admin()
    if conn is None:
        pytest.skip("PostgreSQL not reachable (or psycopg missing)")
    schema = "t_" + secrets.token_hex(6)
    conn.execute(f'CREATE SCHEMA "{schema}"')  # type: ignore[attr-defined]
    sep = "&" if "?" in PG_URL else "?"
    s = open_store(f"{PG_URL}{sep}options=-csearch_path%3D{schema}")
    try:
        yield s
    finally:
        s.close()
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')  # type: ignore[attr-defined]
        conn.close()  # type: ignore[attr-defined]


# -- organizations


def test_org_create_get_update_list(store: AccountStore) -> None:
    a = store.create_org("acme", 100.5)
    b = store.create_org("zeta", None)
    assert a.id.startswith("org_") and a.id != b.id
    assert store.get_org(a.id) == a
    assert store.get_org(b.id).credits is None

    renamed = store.update_org(a.id, OrgUpdate(name="acme2"))
    assert (renamed.name, renamed.credits) == ("acme2", 100.5)  # credits untouched
    unlimited = store.update_org(a.id, OrgUpdate(credits=None))
    assert (unlimited.name, unlimited.credits) == ("acme2", None)
    assert store.update_org(a.id, OrgUpdate()) == unlimited  # empty update: no change
    assert [o.id for o in store.list_orgs()] == [a.id, b.id]


def test_org_credits_are_added_atomically(store: AccountStore) -> None:
    org = store.create_org("acme", 10.0)
    threads = [threading.Thread(target=store.add_credits, args=(org.id, -0.5)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get_org(org.id).credits == pytest.approx(6.0)
    assert store.add_credits(org.id, 4.0).credits == pytest.approx(10.0)
    free = store.create_org("free", None)
    assert store.add_credits(free.id, -5.0).credits is None  # unlimited stays unlimited


def test_org_missing(store: AccountStore) -> None:
    with pytest.raises(NotFound) as info:
        store.get_org("org_nope")
    assert (info.value.kind, info.value.id) == ("org", "org_nope")
    with pytest.raises(NotFound):
        store.update_org("org_nope", OrgUpdate(name="x"))
    with pytest.raises(NotFound):
        store.update_org("org_nope", OrgUpdate())
    with pytest.raises(NotFound):
        store.add_credits("org_nope", 1.0)


# -- packages


def _full_package(org_id: str) -> NewPackage:
    return NewPackage(
        org_id=org_id,
        name="scraper",
        status=PackageStatus.PAUSED,
        limits=Limits(rps=5, concurrency=2, traffic_bytes=10**12),
        ip_allowlist=(
            ipaddress.ip_network("203.0.113.7/32"),
            ipaddress.ip_network("2001:db8::/48"),
        ),
        protocols=frozenset({Protocol.HTTP, Protocol.SOCKS5}),
        networks=frozenset({Network.RES}),
        rules=frozenset({"country", "session"}),
    )


def test_package_roundtrip_keeps_every_field(store: AccountStore) -> None:
    org = store.create_org("acme", None)
    key_hash = hash_key(new_key())
    new = _full_package(org.id)
    pkg = store.create_package(new, key_hash)
    assert pkg.id.startswith("pkg_")
    assert pkg.org_id == org.id and pkg.key_hash == key_hash
    assert (pkg.name, pkg.status, pkg.limits) == (new.name, new.status, new.limits)
    assert pkg.ip_allowlist == new.ip_allowlist
    assert (pkg.protocols, pkg.networks, pkg.rules) == (new.protocols, new.networks, new.rules)
    assert store.get_package(pkg.id) == pkg


def test_package_defaults(store: AccountStore) -> None:
    org = store.create_org("acme", None)
    pkg = store.create_package(NewPackage(org_id=org.id), hash_key(new_key()))
    assert pkg.status is PackageStatus.ACTIVE
    assert pkg.limits == Limits()
    assert pkg.ip_allowlist == ()
    assert pkg.protocols == frozenset(Protocol) and pkg.networks == frozenset(Network)
    assert pkg.rules is None


def test_package_update_changes_only_named_fields(store: AccountStore) -> None:
    org = store.create_org("acme", None)
    pkg = store.create_package(_full_package(org.id), hash_key(new_key()))
    updated = store.update_package(
        pkg.id, PackageUpdate(status=PackageStatus.ACTIVE, rps_limit=None, rules=None)
    )
    assert updated.status is PackageStatus.ACTIVE
    assert updated.limits == Limits(rps=None, concurrency=2, traffic_bytes=10**12)
    assert updated.rules is None
    assert (updated.name, updated.ip_allowlist, updated.protocols) == (
        pkg.name,
        pkg.ip_allowlist,
        pkg.protocols,
    )
    again = store.update_package(
        pkg.id,
        PackageUpdate(
            name="renamed",
            concurrency_limit=0,
            traffic_limit_bytes=None,
            ip_allowlist=(),
            protocols=frozenset(),
            networks=frozenset({Network.MOB, Network.DC}),
            rules=frozenset({"bind"}),
        ),
    )
    assert again.name == "renamed"
    assert again.limits == Limits(rps=None, concurrency=0, traffic_bytes=None)
    assert again.ip_allowlist == () and again.protocols == frozenset()
    assert again.networks == frozenset({Network.MOB, Network.DC})
    assert again.rules == frozenset({"bind"})
    assert store.get_package(pkg.id) == again
    assert store.update_package(pkg.id, PackageUpdate()) == again


def test_package_key_hash_is_replaced(store: AccountStore) -> None:
    org = store.create_org("acme", None)
    pkg = store.create_package(NewPackage(org_id=org.id), hash_key("old"))
    rotated = store.set_key_hash(pkg.id, hash_key("new"))
    assert rotated.key_hash == hash_key("new")
    assert store.get_package(pkg.id).key_hash == hash_key("new")


def test_package_list_by_org(store: AccountStore) -> None:
    a = store.create_org("a", None)
    b = store.create_org("b", None)
    p1 = store.create_package(NewPackage(org_id=a.id, name="1"), hash_key(new_key()))
    p2 = store.create_package(NewPackage(org_id=b.id, name="2"), hash_key(new_key()))
    p3 = store.create_package(NewPackage(org_id=a.id, name="3"), hash_key(new_key()))
    assert [p.id for p in store.list_packages()] == [p1.id, p2.id, p3.id]
    assert [p.id for p in store.list_packages(a.id)] == [p1.id, p3.id]
    assert store.list_packages("org_none") == []


def test_package_missing(store: AccountStore) -> None:
    with pytest.raises(NotFound) as info:
        store.create_package(NewPackage(org_id="org_nope"), hash_key("k"))
    assert info.value.kind == "org"
    with pytest.raises(NotFound):
        store.get_package("pkg_nope")
    with pytest.raises(NotFound):
        store.update_package("pkg_nope", PackageUpdate(name="x"))
    with pytest.raises(NotFound):
        store.set_key_hash("pkg_nope", hash_key("k"))


# -- nodes


def _upstream() -> NewNode:
    return NewNode(
        kind=NodeKind.UPSTREAM,
        attrs=NodeAttrs("us", "new_york", "new_york", "verizon", 701, Network.RES),
        url="socks5://user:secret@127.0.0.1:1080",
        ip="198.51.100.9",
    )


def test_node_roundtrip_keeps_url(store: AccountStore) -> None:
    node = store.create_node(_upstream())
    assert node.id.startswith("node_")
    assert node.url == "socks5://user:secret@127.0.0.1:1080"  # the store holds the secret
    assert node.state is NodeState.ONLINE and node.ip == "198.51.100.9"
    assert node.attrs == _upstream().attrs
    assert store.get_node(node.id) == node

    direct = store.create_node(
        NewNode(kind=NodeKind.DIRECT, bind_address="127.0.0.2", id="node_fixed")
    )
    assert direct.id == "node_fixed" and direct.bind_address == "127.0.0.2"
    assert [n.id for n in store.list_nodes()] == [node.id, "node_fixed"]


def test_node_update_and_delete(store: AccountStore) -> None:
    node = store.create_node(_upstream())
    drained = store.update_node(node.id, NodeUpdate(state=NodeState.DRAINING))
    assert drained.state is NodeState.DRAINING and drained.attrs == node.attrs
    moved = store.update_node(
        node.id,
        NodeUpdate(
            country="de",
            region="",
            city="berlin",
            isp="dtag",
            asn=3320,
            network=Network.MOB,
            url="http://u:p@127.0.0.1:3128",
            ip="",
        ),
    )
    assert moved.attrs == NodeAttrs("de", "", "berlin", "dtag", 3320, Network.MOB)
    assert moved.url == "http://u:p@127.0.0.1:3128" and moved.ip == ""
    assert moved.state is NodeState.DRAINING
    assert store.get_node(node.id) == moved
    store.delete_node(node.id)
    assert store.list_nodes() == []
    with pytest.raises(NotFound):
        store.get_node(node.id)
    with pytest.raises(NotFound):
        store.delete_node(node.id)
    with pytest.raises(NotFound):
        store.update_node(node.id, NodeUpdate(state=NodeState.ONLINE))


def test_geo_names_outlive_nodes(store: AccountStore) -> None:
    node = store.create_node(_upstream())
    store.update_node(node.id, NodeUpdate(city="brooklyn"))
    store.delete_node(node.id)
    names = store.geo_names()
    assert names.regions == {"new_york"}
    assert names.cities == {"new_york", "brooklyn"}
    assert names.isps == {"verizon"}
    store.create_node(_upstream())  # the same names again: no duplicate error
    assert store.geo_names() == names


# -- the registry over each store


def test_registry_load_and_lookups(store: AccountStore) -> None:
    org = store.create_org("acme", 3.0)
    key = new_key()
    pkg = store.create_package(_full_package(org.id), hash_key(key))
    plain = store.create_package(NewPackage(org_id=org.id), hash_key(new_key()))
    node = store.create_node(_upstream())

    seen: list[tuple[Node | None, str]] = []
    reg = Registry(extra_cities=("gotham",))
    reg.on_node_change(lambda n, i: seen.append((n, i)))
    reg.load(store)

    assert reg.org(org.id) == org and reg.org("org_x") is None
    assert reg.package(pkg.id) == pkg
    assert reg.package_by_key(key) == pkg
    assert reg.package_by_key(key[:-1]) is None and reg.package_by_key("") is None
    assert reg.packages_for_ip("203.0.113.7") == [pkg]
    assert reg.packages_for_ip("::ffff:203.0.113.7") == [pkg]
    assert reg.packages_for_ip("2001:db8:0:1::5") == [pkg]
    assert reg.packages_for_ip("203.0.113.8") == []
    assert reg.packages_for_ip("not-an-ip") == []
    assert plain not in reg.packages_for_ip("203.0.113.7")  # empty allowlist: not listed
    assert dict(reg.nodes) == {node.id: node}
    assert seen == [(node, node.id)]
    regions, cities, isps = reg.catalogue_names()
    assert cities == {"new_york", "gotham"} and regions == {"new_york"} and isps == {"verizon"}

    # a reload that changes nothing notifies nothing and keeps the catalogue object
    names = reg.catalogue_names()
    catalogue = reg.catalogue
    reg.load(store)
    assert seen == [(node, node.id)]
    assert reg.catalogue_names() is names and reg.catalogue is catalogue

    # a reload after a deletion reports it
    store.delete_node(node.id)
    reg.load(store)
    assert seen[-1] == (None, node.id)
    assert reg.catalogue_names() is names  # names outlive the node


def test_registry_follows_writes(store: AccountStore, caplog: pytest.LogCaptureFixture) -> None:
    org = store.create_org("acme", None)
    reg = Registry()
    reg.load(store)
    old_key, new_key_ = new_key(), new_key()
    pkg = store.create_package(_full_package(org.id), hash_key(old_key))
    reg.put_package(pkg)
    assert reg.package_by_key(old_key) == pkg
    assert reg.packages_for_ip("203.0.113.7") == [pkg]

    rotated = store.set_key_hash(pkg.id, hash_key(new_key_))
    reg.put_package(rotated)
    assert reg.package_by_key(old_key) is None  # the old key fails at once
    assert reg.package_by_key(new_key_) == rotated
    opened = store.update_package(pkg.id, PackageUpdate(ip_allowlist=()))
    reg.put_package(opened)
    assert reg.packages_for_ip("203.0.113.7") == []
    reg.remove_package(pkg.id)
    assert reg.package(pkg.id) is None and reg.package_by_key(new_key_) is None

    calls: list[str] = []

    def broken(node: Node | None, node_id: str) -> None:
        raise RuntimeError("listener bug")

    reg.on_node_change(broken)
    unsubscribe = reg.on_node_change(lambda n, i: calls.append(i))
    node = store.create_node(_upstream())
    names = reg.catalogue_names()
    reg.put_node(node)  # the broken listener is logged, the next one still runs
    assert calls == [node.id] and "listener bug" in caplog.text
    assert reg.catalogue_names() is not names and "verizon" in reg.catalogue_names()[2]
    names = reg.catalogue_names()
    reg.put_node(node)  # unchanged: no notification
    reg.put_node(store.update_node(node.id, NodeUpdate(state=NodeState.OFFLINE)))
    assert calls == [node.id, node.id]
    assert reg.catalogue_names() is names  # same names: same object
    unsubscribe()
    reg.remove_node(node.id)
    assert calls == [node.id, node.id] and reg.node(node.id) is None

    reg.set_extra_names(["kent"], [], ["acme_net"])
    regions, _cities, isps = reg.catalogue_names()
    assert "kent" in regions and {"verizon", "acme_net"} <= isps
