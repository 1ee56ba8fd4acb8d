"""Opening a database written by an older exitgate: add the columns it lacks (issue 13).

`metadata.create_all` creates missing tables but never alters existing ones, so a column
added to a table since (today `packages.autoban`) is added here with `ALTER TABLE ... ADD
COLUMN`, nullable, at start. Deliberately simple: only nullable columns are added, nothing
is renamed or dropped; a later change turns schema evolution into alembic migrations.

Also the JSON shape of `packages.autoban`, so sql.py stays a list of columns.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from exitgate.model import AutoBan
from exitgate.store.sql_schema import metadata


def add_missing_columns(engine: Engine) -> list[str]:
    """Add every nullable column of the schema a table lacks; the `table.column`s added."""
    added: list[str] = []
    with engine.begin() as conn:
        inspector = sa.inspect(conn)
        for table in metadata.sorted_tables:
            present = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name in present or not column.nullable:
                    continue
                kind = column.type.compile(dialect=engine.dialect)
                name = engine.dialect.identifier_preparer.quote(column.name)
                conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {name} {kind}"))
                added.append(f"{table.name}.{column.name}")
    return added


def autoban_to(autoban: AutoBan | None) -> dict[str, Any] | None:
    if autoban is None:
        return None
    return {"statuses": sorted(autoban.statuses), "ttl": autoban.ttl}


def autoban_from(value: Any) -> AutoBan | None:
    if not value:
        return None
    return AutoBan(frozenset(int(s) for s in value["statuses"]), int(value["ttl"]))
