"""The SQL schema of the account store, and the engine for a URL (SQLite or PostgreSQL).

Sets and lists (allowlist, protocols, networks, rules) are JSON columns: read and written
whole, never queried inside. Usage tables carry no foreign keys: usage is history and
outlives whatever it counted.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.pool import StaticPool

SQLITE_BUSY_TIMEOUT_MS = 5000
ROWS_PER_STATEMENT = 500  # SQLite caps bound parameters per statement

metadata = sa.MetaData()

orgs = sa.Table(
    "orgs",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("credits", sa.Float, nullable=True),  # NULL: unlimited
    sa.Column("created_at", sa.Float, nullable=False),
)

packages = sa.Table(
    "packages",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("org_id", sa.String(40), sa.ForeignKey("orgs.id"), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("rps_limit", sa.Integer, nullable=True),
    sa.Column("concurrency_limit", sa.Integer, nullable=True),
    sa.Column("traffic_limit_bytes", sa.BigInteger, nullable=True),
    sa.Column("ip_allowlist", sa.JSON, nullable=False),
    sa.Column("protocols", sa.JSON, nullable=False),
    sa.Column("networks", sa.JSON, nullable=False),
    sa.Column("rules", sa.JSON(none_as_null=True), nullable=True),  # NULL: every rule
    sa.Column("created_at", sa.Float, nullable=False),
    # issue 12 (migration 0002); NULL (a row from before the column): key_or_ip
    sa.Column("auth_mode", sa.String(16), nullable=True, server_default="key_or_ip"),
)

nodes = sa.Table(
    "nodes",
    metadata,
    sa.Column("id", sa.String(80), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("url", sa.Text, nullable=False),  # upstream credentials: a secret
    sa.Column("bind_address", sa.String(64), nullable=False),
    sa.Column("ip", sa.String(64), nullable=False),
    sa.Column("country", sa.String(8), nullable=False),
    sa.Column("region", sa.String(200), nullable=False),
    sa.Column("city", sa.String(200), nullable=False),
    sa.Column("isp", sa.String(200), nullable=False),
    sa.Column("asn", sa.BigInteger, nullable=False),
    sa.Column("network", sa.String(8), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

# Names ever carried by a node: the rule language's geo catalogue outlives node deletion.
geo_table = sa.Table(
    "geo_names",
    metadata,
    sa.Column("kind", sa.String(8), primary_key=True),  # region | city | isp
    sa.Column("name", sa.String(200), primary_key=True),
)

usage_hours = sa.Table(
    "usage_hours",
    metadata,
    sa.Column("package_id", sa.String(40), primary_key=True),
    sa.Column("hour", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("bytes_up", sa.BigInteger, nullable=False),
    sa.Column("bytes_down", sa.BigInteger, nullable=False),
    sa.Column("requests", sa.BigInteger, nullable=False),
)

usage_errors = sa.Table(
    "usage_errors",
    metadata,
    sa.Column("package_id", sa.String(40), primary_key=True),
    sa.Column("hour", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("code", sa.String(40), primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False),
)

usage_totals = sa.Table(
    "usage_totals",
    metadata,
    sa.Column("package_id", sa.String(40), primary_key=True),
    sa.Column("bytes_up", sa.BigInteger, nullable=False),
    sa.Column("bytes_down", sa.BigInteger, nullable=False),
    sa.Column("requests", sa.BigInteger, nullable=False),
)

# The dashboard's per-minute history of the live figures (store/history.py); no foreign keys.
stats_minutes = sa.Table(
    "stats_minutes",
    metadata,
    sa.Column("minute", sa.BigInteger, primary_key=True, autoincrement=False),  # epoch s
    sa.Column("bytes_up", sa.BigInteger, nullable=False),
    sa.Column("bytes_down", sa.BigInteger, nullable=False),
    sa.Column("requests", sa.BigInteger, nullable=False),
    sa.Column("errors", sa.BigInteger, nullable=False),
    sa.Column("tunnels", sa.BigInteger, nullable=False),  # the most active at one sample
    sa.Column("connections", sa.BigInteger, nullable=False),
)



def engine_for(url: str) -> Engine:
    if url.startswith("sqlite:"):
        if url in ("sqlite://", "sqlite:///:memory:"):
            engine = sa.create_engine(
                "sqlite://",
                poolclass=StaticPool,
                connect_args={"check_same_thread": False},
            )
        else:
            engine = sa.create_engine(url, connect_args={"check_same_thread": False})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url[len(prefix) :]
    if url.startswith("postgresql+psycopg://"):
        return sa.create_engine(url, pool_pre_ping=True)
    raise ValueError("store url must start with sqlite:// or postgresql://")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
