"""`SqlStore`'s usage half: hourly buckets, error counts and running totals per package, added
to atomically (INSERT ... ON CONFLICT DO UPDATE), and the credit debits of the same flush, in
one transaction."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from exitgate.model import Org
from exitgate.store.base import UsageBucket, UsageDelta, UsageRecorded, UsageTotals
from exitgate.store.sql_schema import chunks, orgs, usage_errors, usage_hours, usage_totals
from exitgate.store.sql_values import org_from, totals_from

_COUNTS = ("bytes_up", "bytes_down", "requests")


class SqlUsage:
    """Mixed into `SqlStore`, which provides the transaction and the dialect."""

    _is_sqlite: bool

    def _tx(self) -> contextlib.AbstractContextManager[Connection]:
        raise NotImplementedError

    def record_usage(
        self, deltas: Sequence[UsageDelta], debits: Mapping[str, float]
    ) -> UsageRecorded:
        hours: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        totals: dict[str, dict[str, Any]] = {}
        for d in deltas:
            if d.empty:
                continue
            counts = {"bytes_up": d.bytes_up, "bytes_down": d.bytes_down, "requests": d.requests}
            hours.append({"package_id": d.package_id, "hour": d.hour, **counts})
            errors.extend(
                {"package_id": d.package_id, "hour": d.hour, "code": code, "count": n}
                for code, n in sorted(d.errors.items())
                if n
            )
            row = totals.setdefault(
                d.package_id,
                {"package_id": d.package_id, "bytes_up": 0, "bytes_down": 0, "requests": 0},
            )
            for name, n in counts.items():
                row[name] += n
        charged = {org_id: amount for org_id, amount in debits.items() if amount}
        found: dict[str, UsageTotals] = {}
        with self._tx() as conn:
            self._add_rows(conn, usage_hours, ("package_id", "hour"), _COUNTS, hours)
            self._add_rows(conn, usage_errors, ("package_id", "hour", "code"), ("count",), errors)
            for chunk in chunks(list(totals.values())):
                stmt = self._upsert(usage_totals, ("package_id",), _COUNTS, chunk).returning(
                    usage_totals.c.package_id, *(usage_totals.c[c] for c in _COUNTS)
                )
                for r in conn.execute(stmt).mappings():
                    found[r["package_id"]] = totals_from(r)
            orgs_found: list[Org] = []
            for org_id in sorted(charged):  # a fixed order: concurrent flushes never deadlock
                conn.execute(
                    orgs.update()
                    .where(orgs.c.id == org_id)
                    .values(credits=orgs.c.credits - charged[org_id])
                )
                org_row = conn.execute(orgs.select().where(orgs.c.id == org_id)).mappings()
                first = org_row.first()
                if first is not None:
                    orgs_found.append(org_from(first))
        return UsageRecorded(totals=found, orgs=orgs_found)

    def usage_totals(self, package_ids: Sequence[str] | None = None) -> dict[str, UsageTotals]:
        query = usage_totals.select()
        if package_ids is not None:
            if not package_ids:
                return {}
            query = query.where(usage_totals.c.package_id.in_(list(package_ids)))
        with self._tx() as conn:
            return {r["package_id"]: totals_from(r) for r in conn.execute(query).mappings()}

    def usage_buckets(
        self,
        package_id: str,
        since: int | None = None,
        until: int | None = None,
        limit: int = 1000,
    ) -> list[UsageBucket]:
        where = [usage_hours.c.package_id == package_id]
        if since is not None:
            where.append(usage_hours.c.hour >= since)
        if until is not None:
            where.append(usage_hours.c.hour < until)
        query = usage_hours.select().where(*where).order_by(usage_hours.c.hour.desc()).limit(limit)
        with self._tx() as conn:
            rows = list(conn.execute(query).mappings())
            if not rows:
                return []
            # Error counts of exactly the hours returned: bounded by the newest and oldest.
            err_query = usage_errors.select().where(
                usage_errors.c.package_id == package_id,
                usage_errors.c.hour >= rows[-1]["hour"],
                usage_errors.c.hour <= rows[0]["hour"],
            )
            codes: dict[int, dict[str, int]] = {}
            for e in conn.execute(err_query).mappings():
                codes.setdefault(int(e["hour"]), {})[e["code"]] = int(e["count"])
        return [
            UsageBucket(
                hour=int(r["hour"]),
                bytes_up=int(r["bytes_up"]),
                bytes_down=int(r["bytes_down"]),
                requests=int(r["requests"]),
                errors=dict(sorted(codes.get(int(r["hour"]), {}).items())),
            )
            for r in rows
        ]

    def _upsert(
        self,
        table: sa.Table,
        keys: Sequence[str],
        counts: Sequence[str],
        rows: list[dict[str, Any]],
    ) -> Any:
        """INSERT rows; on a key conflict add each count to the stored one (atomic)."""
        insert = sqlite.insert if self._is_sqlite else postgresql.insert
        stmt = insert(table).values(rows)
        return stmt.on_conflict_do_update(
            index_elements=[table.c[k] for k in keys],
            set_={c: table.c[c] + stmt.excluded[c] for c in counts},
        )

    def _add_rows(
        self,
        conn: Connection,
        table: sa.Table,
        keys: Sequence[str],
        counts: Sequence[str],
        rows: list[dict[str, Any]],
    ) -> None:
        for chunk in chunks(rows):
            conn.execute(self._upsert(table, keys, counts, chunk))
