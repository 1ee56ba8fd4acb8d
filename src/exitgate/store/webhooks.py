"""The webhook tables of the SQL store: endpoints, the delivery outbox and log, marks.

The outbox is `webhook_deliveries`: one row per (event, endpoint), written in the same
transaction for every endpoint an event matches, so an emitted event survives a restart.
Workers `claim` due rows with a compare-and-set on `next_at` (pushing it to a lease end), so
two gateway instances on one PostgreSQL database never send the same attempt twice, and a
crashed worker's claims come due again when the lease runs out. Every attempt is a row of
`webhook_attempts` (the delivery log); a replay is a new delivery row with `replay_of`.

`webhook_marks` holds the watchers' levels (usage thresholds, credits) under a key, changed
only by compare-and-set, so a restart or a second instance does not fire an event again.

Same conventions as `sql.SqlStore`: synchronous, one transaction per method (called through
`asyncio.to_thread`), SQLite writes serialised by the account store's lock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping

from exitgate.store.base import AccountStore, NotFound
from exitgate.store.keys import new_id
from exitgate.store.sql_schema import (
    webhook_attempts,
    webhook_deliveries,
    webhook_endpoints,
    webhook_marks,
)

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"


@dataclass(frozen=True, slots=True)
class EndpointRecord:
    id: str
    org_id: str | None
    url: str
    sealed_secret: str
    events: tuple[str, ...]
    enabled: bool
    disabled_reason: str
    description: str
    created_at: float


@dataclass(frozen=True, slots=True)
class NewDelivery:
    event_id: str
    endpoint_id: str
    org_id: str | None
    type: str
    payload: str
    at: float


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    id: str
    event_id: str
    endpoint_id: str
    org_id: str | None
    type: str
    payload: str
    state: str
    attempts: int
    next_at: float
    created_at: float
    updated_at: float
    last_status: int | None
    last_error: str | None
    last_latency_ms: float | None
    replay_of: str | None


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    n: int
    at: float
    status: int | None
    latency_ms: float
    error: str | None


class WebhookStore:
    def __init__(
        self, engine: sa.engine.Engine, tx: Callable[[], AbstractContextManager[Connection]]
    ) -> None:
        self.engine = engine
        self._tx = tx

    @classmethod
    def of(cls, store: AccountStore) -> WebhookStore:
        """The webhook tables next to an account store's (they share its engine and lock)."""
        from exitgate.store.sql import SqlStore

        if not isinstance(store, SqlStore):
            raise TypeError("webhooks need the SQL account store")
        return cls(store.engine, store._tx)  # one store, one write lock

    # -- endpoints ------------------------------------------------------------------------------
    def create_endpoint(  # noqa: PLR0917
        self,
        endpoint_id: str,
        org_id: str | None,
        url: str,
        sealed_secret: str,
        events: Sequence[str],
        description: str,
        at: float,
    ) -> EndpointRecord:
        with self._tx() as conn:
            conn.execute(
                webhook_endpoints.insert().values(
                    id=endpoint_id,
                    org_id=org_id,
                    url=url,
                    secret=sealed_secret,
                    events=list(events),
                    enabled=True,
                    disabled_reason="",
                    description=description,
                    created_at=at,
                )
            )
            return self._endpoint(conn, endpoint_id)

    def get_endpoint(self, endpoint_id: str) -> EndpointRecord:
        with self._tx() as conn:
            return self._endpoint(conn, endpoint_id)

    def list_endpoints(self, org_id: str | None = None) -> list[EndpointRecord]:
        query = webhook_endpoints.select().order_by(
            webhook_endpoints.c.created_at, webhook_endpoints.c.id
        )
        if org_id is not None:
            query = query.where(webhook_endpoints.c.org_id == org_id)
        with self._tx() as conn:
            return [_endpoint_from(r) for r in conn.execute(query).mappings()]

    def update_endpoint(self, endpoint_id: str, values: Mapping[str, Any]) -> EndpointRecord:
        with self._tx() as conn:
            if values:
                done = conn.execute(
                    webhook_endpoints.update()
                    .where(webhook_endpoints.c.id == endpoint_id)
                    .values(**values)
                )
                if done.rowcount == 0:
                    raise NotFound("webhook", endpoint_id)
            return self._endpoint(conn, endpoint_id)

    def delete_endpoint(self, endpoint_id: str) -> None:
        with self._tx() as conn:
            done = conn.execute(
                webhook_endpoints.delete().where(webhook_endpoints.c.id == endpoint_id)
            )
            if done.rowcount == 0:
                raise NotFound("webhook", endpoint_id)
            # Its undelivered rows have nowhere to go: end them, keep them in the log.
            conn.execute(
                webhook_deliveries.update()
                .where(
                    webhook_deliveries.c.endpoint_id == endpoint_id,
                    webhook_deliveries.c.state == PENDING,
                )
                .values(state=FAILED, last_error="endpoint deleted")
            )

    # -- the outbox -----------------------------------------------------------------------------
    def enqueue(self, rows: Sequence[NewDelivery]) -> list[str]:
        ids = [new_id("whd") for _ in rows]
        if not rows:
            return ids
        values = [
            {
                "id": delivery_id,
                "event_id": r.event_id,
                "endpoint_id": r.endpoint_id,
                "org_id": r.org_id,
                "type": r.type,
                "payload": r.payload,
                "state": PENDING,
                "attempts": 0,
                "next_at": r.at,
                "created_at": r.at,
                "updated_at": r.at,
                "replay_of": None,
            }
            for delivery_id, r in zip(ids, rows, strict=True)
        ]
        with self._tx() as conn:
            conn.execute(webhook_deliveries.insert(), values)
        return ids

    def claim(self, now: float, lease: float, limit: int) -> list[DeliveryRecord]:
        """Due pending rows, each claimed until `now + lease` (compare-and-set on next_at)."""
        d = webhook_deliveries
        with self._tx() as conn:
            due = conn.execute(
                d.select()
                .where(d.c.state == PENDING, d.c.next_at <= now)
                .order_by(d.c.next_at)
                .limit(limit)
            ).mappings().all()
            claimed = []
            for row in due:
                done = conn.execute(
                    d.update()
                    .where(d.c.id == row["id"], d.c.state == PENDING, d.c.next_at == row["next_at"])
                    .values(next_at=now + lease)
                )
                if done.rowcount == 1:
                    claimed.append(_delivery_from(row))
            return claimed

    def release(self, delivery_ids: Sequence[str], at: float) -> None:
        """Claims given back unfinished (a stopping worker): due again at `at`."""
        if not delivery_ids:
            return
        d = webhook_deliveries
        with self._tx() as conn:
            conn.execute(
                d.update()
                .where(d.c.id.in_(list(delivery_ids)), d.c.state == PENDING)
                .values(next_at=at)
            )

    def next_due(self) -> float | None:
        d = webhook_deliveries
        with self._tx() as conn:
            return conn.execute(
                sa.select(sa.func.min(d.c.next_at)).where(d.c.state == PENDING)
            ).scalar()

    def record_attempt(
        self, delivery: DeliveryRecord, attempt: AttemptRecord, state: str, next_at: float
    ) -> None:
        d = webhook_deliveries
        with self._tx() as conn:
            conn.execute(
                webhook_attempts.insert().values(
                    delivery_id=delivery.id,
                    n=attempt.n,
                    at=attempt.at,
                    status=attempt.status,
                    latency_ms=attempt.latency_ms,
                    error=attempt.error,
                )
            )
            conn.execute(
                d.update()
                .where(d.c.id == delivery.id)
                .values(
                    state=state,
                    attempts=attempt.n,
                    next_at=next_at,
                    updated_at=attempt.at,
                    last_status=attempt.status,
                    last_error=attempt.error,
                    last_latency_ms=attempt.latency_ms,
                )
            )

    def end(self, delivery_id: str, error: str, at: float) -> None:
        """Fail a pending delivery without an attempt (its endpoint is gone or disabled)."""
        d = webhook_deliveries
        with self._tx() as conn:
            conn.execute(
                d.update()
                .where(d.c.id == delivery_id, d.c.state == PENDING)
                .values(state=FAILED, last_error=error, updated_at=at)
            )

    def replay(self, delivery_id: str, at: float) -> DeliveryRecord:
        """A new pending delivery of the same message (same event id and body), due now."""
        d = webhook_deliveries
        new = new_id("whd")
        with self._tx() as conn:
            old = self._delivery(conn, delivery_id)
            conn.execute(
                d.insert().values(
                    id=new,
                    event_id=old.event_id,
                    endpoint_id=old.endpoint_id,
                    org_id=old.org_id,
                    type=old.type,
                    payload=old.payload,
                    state=PENDING,
                    attempts=0,
                    next_at=at,
                    created_at=at,
                    updated_at=at,
                    replay_of=old.id,
                )
            )
            return self._delivery(conn, new)

    def get_delivery(self, delivery_id: str) -> tuple[DeliveryRecord, list[AttemptRecord]]:
        a = webhook_attempts
        with self._tx() as conn:
            delivery = self._delivery(conn, delivery_id)
            rows = conn.execute(
                a.select().where(a.c.delivery_id == delivery_id).order_by(a.c.n)
            ).mappings()
            attempts = [
                AttemptRecord(r["n"], r["at"], r["status"], r["latency_ms"], r["error"])
                for r in rows
            ]
        return delivery, attempts

    def list_deliveries(
        self,
        *,
        endpoint_id: str | None = None,
        org_id: str | None = None,
        state: str | None = None,
        limit: int = 100,
    ) -> list[DeliveryRecord]:
        d = webhook_deliveries
        query = d.select().order_by(d.c.created_at.desc(), d.c.id).limit(limit)
        if endpoint_id is not None:
            query = query.where(d.c.endpoint_id == endpoint_id)
        if org_id is not None:
            query = query.where(d.c.org_id == org_id)
        if state is not None:
            query = query.where(d.c.state == state)
        with self._tx() as conn:
            return [_delivery_from(r) for r in conn.execute(query).mappings()]

    # -- marks ----------------------------------------------------------------------------------
    def marks(self, prefix: str) -> dict[str, str]:
        m = webhook_marks
        with self._tx() as conn:
            rows = conn.execute(m.select().where(m.c.key.startswith(prefix, autoescape=True)))
            return {r["key"]: r["value"] for r in rows.mappings()}

    def swap_mark(self, key: str, old: str | None, new: str) -> bool:
        """Set `key` to `new` if it holds `old` (None: absent). False: someone else moved it."""
        m = webhook_marks
        with self._tx() as conn:
            if old is None:
                with contextlib.suppress(sa.exc.IntegrityError), conn.begin_nested():
                    conn.execute(m.insert().values(key=key, value=new))
                    return True
                return False
            done = conn.execute(
                m.update().where(m.c.key == key, m.c.value == old).values(value=new)
            )
            return done.rowcount == 1

    # -- internals ------------------------------------------------------------------------------
    def _endpoint(self, conn: Connection, endpoint_id: str) -> EndpointRecord:
        row = conn.execute(
            webhook_endpoints.select().where(webhook_endpoints.c.id == endpoint_id)
        ).mappings().first()
        if row is None:
            raise NotFound("webhook", endpoint_id)
        return _endpoint_from(row)

    def _delivery(self, conn: Connection, delivery_id: str) -> DeliveryRecord:
        row = conn.execute(
            webhook_deliveries.select().where(webhook_deliveries.c.id == delivery_id)
        ).mappings().first()
        if row is None:
            raise NotFound("delivery", delivery_id)
        return _delivery_from(row)


def _endpoint_from(r: RowMapping) -> EndpointRecord:
    return EndpointRecord(
        id=r["id"],
        org_id=r["org_id"],
        url=r["url"],
        sealed_secret=r["secret"],
        events=tuple(r["events"]),
        enabled=bool(r["enabled"]),
        disabled_reason=r["disabled_reason"],
        description=r["description"],
        created_at=r["created_at"],
    )


def _delivery_from(r: RowMapping) -> DeliveryRecord:
    return DeliveryRecord(
        id=r["id"],
        event_id=r["event_id"],
        endpoint_id=r["endpoint_id"],
        org_id=r["org_id"],
        type=r["type"],
        payload=r["payload"],
        state=r["state"],
        attempts=r["attempts"],
        next_at=r["next_at"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
        last_status=r["last_status"],
        last_error=r["last_error"],
        last_latency_ms=r["last_latency_ms"],
        replay_of=r["replay_of"],
    )


