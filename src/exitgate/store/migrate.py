"""Bring a database to the newest schema with alembic; safe when several instances start at once.

- A fresh database gets every migration in order (store/migrations/versions).
- A database created before migrations existed (by `create_all`: tables but no
  `alembic_version`) is stamped with the baseline `0001`, then upgraded in place.
- Concurrent first starts: on PostgreSQL the whole upgrade runs in one transaction holding a
  transaction-level advisory lock (DDL is transactional there, so a second instance waits, then
  finds the schema current); on SQLite a file lock beside the database file does the same.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger("exitgate.store")

BASELINE = "0001"
ADVISORY_LOCK = 0x65786974_67617465  # "exitgate": one lock id for schema changes
SCRIPTS = Path(__file__).resolve().parent / "migrations"


def config(connection: Connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine: Engine, target: str = "head") -> None:
    """To `target` (tests build an older schema with it; the store always goes to head)."""
    # alembic narrates every step at INFO; one line of ours says what changed
    logging.getLogger("alembic").setLevel(logging.WARNING)
    with _file_lock(engine), engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK})
        cfg = config(conn)
        tables = set(sa.inspect(conn).get_table_names())
        if "orgs" in tables and "alembic_version" not in tables:
            command.stamp(cfg, BASELINE)
        before = _version(conn)
        command.upgrade(cfg, target)
        after = _version(conn)
        if after != before:
            log.info("database schema upgraded: %s -> %s", before or "empty", after)


def _version(conn: Connection) -> str | None:
    if "alembic_version" not in sa.inspect(conn).get_table_names():
        return None
    found = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    return None if found is None else str(found)


def head() -> str | None:
    """The newest revision in store/migrations/versions."""
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    return ScriptDirectory.from_config(cfg).get_current_head()


def current(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if "alembic_version" not in sa.inspect(conn).get_table_names():
            return None
        return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


@contextlib.contextmanager
def _file_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    fd = os.open(f"{database}.migrate-lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


__all__ = ["current", "head", "upgrade"]
