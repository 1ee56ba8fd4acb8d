"""`AccountStore` over SQLAlchemy Core: one code path for SQLite and PostgreSQL.

Tables are created or upgraded on open (alembic, store/migrate.py). SQLite runs in WAL mode
with a busy timeout, and this process serialises its own SQLite transactions with a lock:
SQLite has one writer anyway, and a lock turns "database is locked" races between our threads
into waits.
`sqlite://` (in memory) keeps one connection for the life of the store, since each new
connection to `:memory:` would be a new, empty database. PostgreSQL goes through psycopg 3
(`postgresql://` is rewritten to `postgresql+psycopg://`); its transactions need no lock.

Sets and lists (allowlist, protocols, networks, rules) are JSON columns: they are read and
written whole, never queried inside.

Usage: `usage_hours` (package, hour) → bytes and requests, `usage_errors` (package, hour,
code) → count, `usage_totals` package → bytes and requests. No foreign keys: usage is history
and outlives whatever it counted. `record_usage` sends one multi-row UPSERT per table (rows
unique by key within a flush, so PostgreSQL never sees one row twice in a statement) and
reads the new totals back with RETURNING (SQLite >= 3.35).
The usage half of the store is `SqlUsage` (store/sql_usage.py); rows become model values in
store/sql_values.py.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from exitgate.model import (
    Node,
    NodeKind,
    NodeState,
    Org,
    Package,
)
from exitgate.store.base import (
    UNSET,
    GeoNames,
    NewNode,
    NewPackage,
    NodeUpdate,
    NotFound,
    OrgUpdate,
    PackageUpdate,
)
from exitgate.store.keys import new_id
from exitgate.store.migrate import upgrade
from exitgate.store.sql_schema import (
    chunks,
    engine_for,
    geo_table,
    nodes,
    orgs,
    packages,
)
from exitgate.store.sql_usage import SqlUsage
from exitgate.store.sql_values import autoban_to, nets_to, node_from, org_from, package_from

_AGENT_FIELDS = ("ip", "country", "region", "city", "isp", "asn", "network")


class SqlStore(SqlUsage):
    """The SQLAlchemy Core `AccountStore`."""

    def __init__(self, url: str) -> None:
        self.engine = engine_for(url)
        self._is_sqlite = self.engine.dialect.name == "sqlite"
        self._lock = threading.Lock() if self._is_sqlite else None
        upgrade(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self._lock or contextlib.nullcontext(), self.engine.begin() as conn:
            yield conn

    # organizations

    def create_org(self, name: str, credits: float | None) -> Org:
        org = Org(id=new_id("org"), name=name, credits=credits)
        with self._tx() as conn:
            conn.execute(
                orgs.insert().values(id=org.id, name=name, credits=credits, created_at=time.time())
            )
        return org

    def get_org(self, org_id: str) -> Org:
        with self._tx() as conn:
            return self._org(conn, org_id)

    def update_org(self, org_id: str, update: OrgUpdate) -> Org:
        values: dict[str, Any] = {}
        if update.name is not UNSET:
            values["name"] = update.name
        if update.credits is not UNSET:
            values["credits"] = update.credits
        with self._tx() as conn:
            self._update(conn, orgs, "org", org_id, values)
            return self._org(conn, org_id)

    def add_credits(self, org_id: str, delta: float) -> Org:
        # One UPDATE: concurrent debits from several instances never lose each other.
        # NULL + delta stays NULL, so an unlimited pool stays unlimited.
        values = {"credits": orgs.c.credits + delta}
        with self._tx() as conn:
            self._update(conn, orgs, "org", org_id, values)
            return self._org(conn, org_id)

    def list_orgs(self) -> list[Org]:
        with self._tx() as conn:
            rows = conn.execute(orgs.select().order_by(orgs.c.created_at, orgs.c.id))
            return [org_from(r) for r in rows.mappings()]

    # packages

    def create_package(self, new: NewPackage, key_hash: str) -> Package:
        package_id = new_id("pkg")
        with self._tx() as conn:
            self._org(conn, new.org_id)  # NotFound("org") before the FK error
            conn.execute(
                packages.insert().values(
                    id=package_id,
                    org_id=new.org_id,
                    name=new.name,
                    key_hash=key_hash,
                    status=new.status.value,
                    rps_limit=new.limits.rps,
                    concurrency_limit=new.limits.concurrency,
                    traffic_limit_bytes=new.limits.traffic_bytes,
                    ip_allowlist=nets_to(new.ip_allowlist),
                    protocols=sorted(p.value for p in new.protocols),
                    networks=sorted(n.value for n in new.networks),
                    rules=None if new.rules is None else sorted(new.rules),
                    auth_mode=new.auth_mode.value,
                    created_at=time.time(),
                    autoban=autoban_to(new.autoban),
                )
            )
            return self._package(conn, package_id)

    def get_package(self, package_id: str) -> Package:
        with self._tx() as conn:
            return self._package(conn, package_id)

    def update_package(self, package_id: str, update: PackageUpdate) -> Package:
        values: dict[str, Any] = {}
        if update.name is not UNSET:
            values["name"] = update.name
        if update.status is not UNSET:
            values["status"] = update.status.value
        if update.rps_limit is not UNSET:
            values["rps_limit"] = update.rps_limit
        if update.concurrency_limit is not UNSET:
            values["concurrency_limit"] = update.concurrency_limit
        if update.traffic_limit_bytes is not UNSET:
            values["traffic_limit_bytes"] = update.traffic_limit_bytes
        if update.ip_allowlist is not UNSET:
            values["ip_allowlist"] = nets_to(update.ip_allowlist)
        if update.protocols is not UNSET:
            values["protocols"] = sorted(p.value for p in update.protocols)
        if update.networks is not UNSET:
            values["networks"] = sorted(n.value for n in update.networks)
        if update.rules is not UNSET:
            values["rules"] = None if update.rules is None else sorted(update.rules)
        if update.auth_mode is not UNSET:
            values["auth_mode"] = update.auth_mode.value
        if update.autoban is not UNSET:
            values["autoban"] = autoban_to(update.autoban)
        with self._tx() as conn:
            self._update(conn, packages, "package", package_id, values)
            return self._package(conn, package_id)

    def set_key_hash(self, package_id: str, key_hash: str) -> Package:
        with self._tx() as conn:
            self._update(conn, packages, "package", package_id, {"key_hash": key_hash})
            return self._package(conn, package_id)

    def list_packages(self, org_id: str | None = None) -> list[Package]:
        query = packages.select().order_by(packages.c.created_at, packages.c.id)
        if org_id is not None:
            query = query.where(packages.c.org_id == org_id)
        with self._tx() as conn:
            return [package_from(r) for r in conn.execute(query).mappings()]

    # nodes

    def create_node(self, new: NewNode) -> Node:
        node_id = new.id or new_id("node")
        a = new.attrs
        with self._tx() as conn:
            conn.execute(
                nodes.insert().values(
                    id=node_id,
                    kind=new.kind.value,
                    state=new.state.value,
                    url=new.url,
                    bind_address=new.bind_address,
                    ip=new.ip,
                    country=a.country,
                    region=a.region,
                    city=a.city,
                    isp=a.isp,
                    asn=a.asn,
                    network=a.network.value,
                    created_at=time.time(),
                )
            )
            self._remember_names(conn, region=a.region, city=a.city, isp=a.isp)
            return self._node(conn, node_id)

    def get_node(self, node_id: str) -> Node:
        with self._tx() as conn:
            return self._node(conn, node_id)

    def update_node(self, node_id: str, update: NodeUpdate) -> Node:
        values: dict[str, Any] = {}
        for name in ("country", "region", "city", "isp", "asn", "url", "bind_address", "ip"):
            value = getattr(update, name)
            if value is not UNSET:
                values[name] = value
        if update.state is not UNSET:
            values["state"] = update.state.value
        if update.network is not UNSET:
            values["network"] = update.network.value
        with self._tx() as conn:
            self._update(conn, nodes, "node", node_id, values)
            self._remember_names(
                conn,
                region=values.get("region", ""),
                city=values.get("city", ""),
                isp=values.get("isp", ""),
            )
            return self._node(conn, node_id)

    def delete_node(self, node_id: str) -> None:
        with self._tx() as conn:
            result = conn.execute(nodes.delete().where(nodes.c.id == node_id))
            if result.rowcount == 0:
                raise NotFound("node", node_id)

    def sync_agents(self, online: Sequence[NewNode], offline: Sequence[str]) -> list[Node]:
        """Agent nodes as the hub sees them, in one transaction (hub/nodes.py batches them).

        `online`: each upserted with its attributes, address and state (`online`; `offline`
        for an agent gone before its first write), except that an admin's `draining` is kept;
        `offline`: each marked `offline` if it is `online` now.
        A row of another kind is never touched. Returns every named node as stored after."""
        upsert = sqlite.insert if self._is_sqlite else postgresql.insert
        now = time.time()
        names: set[tuple[str, str]] = set()
        with self._tx() as conn:
            rows = []
            for new in online:
                a = new.attrs
                rows.append({
                    "id": new.id, "kind": NodeKind.AGENT.value, "state": new.state.value,
                    "url": "", "bind_address": "", "ip": new.ip, "country": a.country,
                    "region": a.region, "city": a.city, "isp": a.isp, "asn": a.asn,
                    "network": a.network.value, "created_at": now,
                })  # fmt: skip
                names.update((k, v) for k, v in (("region", a.region), ("city", a.city),
                                                 ("isp", a.isp)) if v)
            if rows:
                # one statement, compiled once (cached), executed for many rows: the driver
                # batches them (psycopg's pipeline / SQLAlchemy's insertmanyvalues)
                stmt = upsert(nodes)
                new_row = stmt.excluded
                keep_draining = sa.case(
                    (nodes.c.state == NodeState.DRAINING.value, nodes.c.state),
                    else_=new_row.state,
                )
                changed = {c: new_row[c] for c in _AGENT_FIELDS} | {"state": keep_draining}
                conn.execute(stmt.on_conflict_do_update(
                    index_elements=[nodes.c.id], set_=changed,
                    where=nodes.c.kind == NodeKind.AGENT.value,
                ), rows)  # fmt: skip
            ids = [r["id"] for r in rows]
            for chunk in chunks([{"id": i} for i in offline]):
                conn.execute(
                    nodes.update()
                    .where(nodes.c.id.in_([r["id"] for r in chunk]))
                    .where(nodes.c.kind == NodeKind.AGENT.value)
                    .where(nodes.c.state == NodeState.ONLINE.value)
                    .values(state=NodeState.OFFLINE.value)
                )
            if names:
                geo = [{"kind": k, "name": v} for k, v in sorted(names)]
                for chunk in chunks(geo):
                    conn.execute(upsert(geo_table).values(chunk).on_conflict_do_nothing())
            found: list[Node] = []
            for chunk in chunks([{"id": i} for i in [*ids, *offline]]):
                query = nodes.select().where(nodes.c.id.in_([r["id"] for r in chunk]))
                found.extend(node_from(r) for r in conn.execute(query).mappings())
            return found

    def list_nodes(self) -> list[Node]:
        query = nodes.select().order_by(nodes.c.created_at, nodes.c.id)
        with self._tx() as conn:
            return [node_from(r) for r in conn.execute(query).mappings()]

    def geo_names(self) -> GeoNames:
        found: dict[str, set[str]] = {"region": set(), "city": set(), "isp": set()}
        with self._tx() as conn:
            for kind, name in conn.execute(sa.select(geo_table.c.kind, geo_table.c.name)):
                found.setdefault(kind, set()).add(name)
        return GeoNames(
            regions=frozenset(found["region"]),
            cities=frozenset(found["city"]),
            isps=frozenset(found["isp"]),
        )

    # helpers

    def _update(
        self, conn: Connection, table: sa.Table, kind: str, id_: str, values: Mapping[str, Any]
    ) -> None:
        if not values:  # nothing to change: still a 404 for a missing record
            exists = conn.execute(sa.select(table.c.id).where(table.c.id == id_)).first()
            if exists is None:
                raise NotFound(kind, id_)
            return
        result = conn.execute(table.update().where(table.c.id == id_).values(**values))
        if result.rowcount == 0:
            raise NotFound(kind, id_)

    def _remember_names(self, conn: Connection, **names: str) -> None:
        rows = [{"kind": kind, "name": name} for kind, name in names.items() if name]
        if not rows:
            return
        insert = sqlite.insert if self._is_sqlite else postgresql.insert
        conn.execute(insert(geo_table).values(rows).on_conflict_do_nothing())

    def _org(self, conn: Connection, org_id: str) -> Org:
        row = conn.execute(orgs.select().where(orgs.c.id == org_id)).mappings().first()
        if row is None:
            raise NotFound("org", org_id)
        return org_from(row)

    def _package(self, conn: Connection, package_id: str) -> Package:
        query = packages.select().where(packages.c.id == package_id)
        row = conn.execute(query).mappings().first()
        if row is None:
            raise NotFound("package", package_id)
        return package_from(row)

    def _node(self, conn: Connection, node_id: str) -> Node:
        row = conn.execute(nodes.select().where(nodes.c.id == node_id)).mappings().first()
        if row is None:
            raise NotFound("node", node_id)
        return node_from(row)
