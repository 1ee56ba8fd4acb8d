"""The webhook tables on every SQL store (SQLite file, SQLite in memory, PostgreSQL)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from exitgate.store.base import AccountStore, NotFound, open_store
from exitgate.store.webhooks import (
    DELIVERED,
    FAILED,
    PENDING,
    AttemptRecord,
    NewDelivery,
    WebhookStore,
)
from tests.contract.test_store import PG_URL, _pg_admin


@pytest.fixture(params=["sqlite-file", "sqlite-memory", "postgresql"])
def accounts(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AccountStore]:
    if request.param != "postgresql":
        url = f"sqlite:///{tmp_path / 'a.db'}" if request.param == "sqlite-file" else "sqlite://"
        s = open_store(url)
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


@pytest.fixture
def hooks(accounts: AccountStore) -> WebhookStore:
    return WebhookStore.of(accounts)


def _endpoint(hooks: WebhookStore, accounts: AccountStore, endpoint_id: str = "whe_1") -> str:
    org = accounts.create_org("acme", None)
    hooks.create_endpoint(endpoint_id, org.id, "http://h/x", "v1:sealed", ["*"], "d", 1.0)
    return org.id


def test_endpoints_crud(hooks: WebhookStore, accounts: AccountStore) -> None:
    org_id = _endpoint(hooks, accounts)
    got = hooks.get_endpoint("whe_1")
    assert (got.org_id, got.url, got.events, got.enabled) == (org_id, "http://h/x", ("*",), True)
    hooks.create_endpoint("whe_2", None, "http://g/", "v1:s", ["node.down"], "", 2.0)
    assert [e.id for e in hooks.list_endpoints()] == ["whe_1", "whe_2"]
    assert [e.id for e in hooks.list_endpoints(org_id)] == ["whe_1"]
    off = hooks.update_endpoint("whe_1", {"enabled": False, "disabled_reason": "410"})
    assert (off.enabled, off.disabled_reason) == (False, "410")
    hooks.delete_endpoint("whe_2")
    for call in (
        lambda: hooks.get_endpoint("whe_2"),
        lambda: hooks.delete_endpoint("whe_2"),
        lambda: hooks.update_endpoint("whe_2", {"enabled": True}),
    ):
        with pytest.raises(NotFound):
            call()


def test_outbox_claim_attempts_and_replay(hooks: WebhookStore, accounts: AccountStore) -> None:
    org_id = _endpoint(hooks, accounts)
    rows = [NewDelivery(f"msg_{i}", "whe_1", org_id, "node.down", "{}", 10.0 + i) for i in range(3)]
    ids = hooks.enqueue(rows)
    assert len(set(ids)) == 3
    assert hooks.next_due() == 10.0
    first = hooks.claim(now=11.5, lease=30.0, limit=10)  # two are due
    assert [d.event_id for d in first] == ["msg_0", "msg_1"]
    assert hooks.claim(now=11.5, lease=30.0, limit=10) == []  # claimed: not again
    hooks.release([first[1].id], at=12.0)
    assert {d.id for d in hooks.claim(now=12.5, lease=30.0, limit=10)} == {first[1].id, ids[2]}

    d = first[0]
    hooks.record_attempt(d, AttemptRecord(1, 12.0, None, 5.0, "refused"), PENDING, 20.0)
    hooks.record_attempt(d, AttemptRecord(2, 20.0, 200, 7.5, None), DELIVERED, 20.0)
    stored, attempts = hooks.get_delivery(d.id)
    assert (stored.state, stored.attempts, stored.last_status) == (DELIVERED, 2, 200)
    assert [(a.n, a.status, a.error) for a in attempts] == [(1, None, "refused"), (2, 200, None)]

    again = hooks.replay(d.id, at=30.0)
    assert (again.event_id, again.replay_of, again.state, again.attempts) == (
        "msg_0", d.id, PENDING, 0
    )
    assert hooks.list_deliveries(state=PENDING)[0].id == again.id
    assert {x.id for x in hooks.list_deliveries(endpoint_id="whe_1")} >= set(ids)
    with pytest.raises(NotFound):
        hooks.replay("whd_missing", 1.0)

    hooks.delete_endpoint("whe_1")  # pending rows end, the log stays
    ended = {x.id: x for x in hooks.list_deliveries(endpoint_id="whe_1")}
    assert ended[again.id].state == FAILED and ended[again.id].last_error == "endpoint deleted"


def test_marks_compare_and_set(hooks: WebhookStore) -> None:
    assert hooks.swap_mark("usage:pkg_1", None, "50")
    assert not hooks.swap_mark("usage:pkg_1", None, "80")  # exists already
    assert not hooks.swap_mark("usage:pkg_1", "0", "80")  # stale expectation
    assert hooks.swap_mark("usage:pkg_1", "50", "80")
    assert hooks.swap_mark("credits:org_1", None, "1")
    assert hooks.marks("usage:") == {"usage:pkg_1": "80"}
    assert hooks.marks("") == {"usage:pkg_1": "80", "credits:org_1": "1"}
