"""The SQL schema of the account store, and the engine for a URL (SQLite or PostgreSQL).

Sets and lists (allowlist, protocols, networks, rules) are JSON columns: read and written
whole, never queried inside. Usage tables carry no foreign keys: usage is history and
outlives whatever it counted.
"""

from __future__ import annotations

from collections.abc import Iterator
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
    # issue 13 (migration 0004): {"statuses": [403, 429], "ttl": 600}; NULL: no automatic bans
    sa.Column("autoban", sa.JSON(none_as_null=True), nullable=True),
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

# Webhooks (issue 11): endpoints, the delivery outbox and log, attempts, watcher marks.
# No foreign keys on the log: deliveries are history and outlive their endpoint.
webhook_endpoints = sa.Table(
    "webhook_endpoints",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("org_id", sa.String(40), sa.ForeignKey("orgs.id"), nullable=True, index=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("secret", sa.Text, nullable=False),  # sealed (webhooks/vault.py), never clear
    sa.Column("events", sa.JSON, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("disabled_reason", sa.String(200), nullable=False),
    sa.Column("description", sa.String(200), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("event_id", sa.String(40), nullable=False),
    sa.Column("endpoint_id", sa.String(40), nullable=False, index=True),
    sa.Column("org_id", sa.String(40), nullable=True),
    sa.Column("type", sa.String(40), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),  # the exact body signed and sent
    sa.Column("state", sa.String(16), nullable=False),  # pending | delivered | failed
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_at", sa.Float, nullable=False),  # pending: due time (or claim lease end)
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("last_status", sa.Integer, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("last_latency_ms", sa.Float, nullable=True),
    sa.Column("replay_of", sa.String(40), nullable=True),
    sa.Index("ix_webhook_deliveries_due", "state", "next_at"),
)

webhook_attempts = sa.Table(
    "webhook_attempts",
    metadata,
    sa.Column("delivery_id", sa.String(40), primary_key=True),
    sa.Column("n", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("status", sa.Integer, nullable=True),  # None: no HTTP answer
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("error", sa.Text, nullable=True),
)

webhook_marks = sa.Table(
    "webhook_marks",
    metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("value", sa.String(80), nullable=False),
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


def chunks(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """`rows` in statements of at most ROWS_PER_STATEMENT rows."""
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        yield rows[start : start + ROWS_PER_STATEMENT]
