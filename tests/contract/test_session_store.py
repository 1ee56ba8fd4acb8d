"""The session store contract (tests/unit/test_sessions.py) run against Redis as well.

The contract's tests are imported from the unit module, so one text of the contract binds every
backend; here the `store` fixture yields a `RedisSessionStore` under a random key prefix
(127.0.0.1:6379, override with EXITGATE_TEST_REDIS_URL; skipped when unreachable), and the
table tests run over it too."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest

from exitgate.routing.sessions import SessionTable
from exitgate.rules import Rules
from exitgate.store.redis_sessions import RedisClock, RedisSessionStore
from exitgate.store.sessions import SessionKey
from tests.support.services import REDIS_URL, require_redis
from tests.unit.test_sessions import (  # noqa: F401 - collected here against Redis
    IDLE,
    T0,
    Clock,
    test_a_claimed_first_request_that_reaches_no_node_leaves_no_session,
    test_a_new_session_is_claimed_for_the_picked_candidate,
    test_a_plan_is_a_request_even_without_a_commit,
    test_admin_list_get_end_expire,
    test_claim_creates_a_provisional_record,
    test_claim_is_create_if_absent,
    test_delete,
    test_expire_reclaims_exactly_the_expired,
    test_expired_record_is_absent_for_every_operation,
    test_first_use_creates_with_canonical_rules,
    test_idle_expiry_boundary,
    test_idle_expiry_counts_from_the_last_request,
    test_list_shows_live_sessions_of_one_package,
    test_mismatch_is_409_and_leaves_the_session_untouched,
    test_move_races_follow_the_winner,
    test_racing_first_requests_end_on_one_node,
    test_rebind_compares_the_epoch_too,
    test_rebind_is_compare_and_set,
    test_record_counts_and_touches,
    test_record_with_other_rules_writes_nothing,
    test_refund_gives_back_a_count_taken_on_arrival,
    test_refund_keeps_what_other_requests_did,
    test_refund_of_a_claim_drops_a_session_that_lived_on_it_alone,
    test_refund_of_a_claim_keeps_a_request_that_came_meanwhile,
    test_release_drops_only_a_provisional_record_on_that_node,
    test_rotate_requests_counts_each_request_once,
    test_rotate_requests_skips_requests_that_reached_no_node,
    test_rotate_timed_boundary,
    test_sessions_are_scoped_to_the_package,
    test_touch_counts_a_kept_session_in_one_step,
    test_touch_with_a_candidate_claims_a_new_session,
)


@pytest.fixture
async def store() -> AsyncIterator[RedisSessionStore]:
    await require_redis()
    prefix = f"egtest:{secrets.token_hex(4)}:"
    made = RedisSessionStore(REDIS_URL, IDLE, prefix=prefix)
    try:
        yield made
    finally:
        keys = [k async for k in made.redis.scan_iter(match=f"{prefix}*")]
        if keys:
            await made.redis.delete(*keys)
        await made.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def table(store: RedisSessionStore, clock: Clock) -> SessionTable:
    return SessionTable(store, clock)


async def test_two_instances_racing_on_one_id_get_one_node(store: RedisSessionStore) -> None:
    """Two stores (two gateway processes) on one server: one winner, the other follows it."""
    other = RedisSessionStore(REDIS_URL, IDLE, prefix=store.prefix)
    try:
        key = SessionKey("p1", "race")
        results = await asyncio.gather(
            *(s.claim(key, "r", f"n{i}", T0) for i, s in enumerate([store, other] * 10))
        )
        assert len({r.node_id for r in results}) == 1
        a = SessionTable(store, Clock())
        b = SessionTable(other, Clock())
        plan = await a.plan("p1", Rules(country="us", session="x"))
        assert plan is not None
        node = await a.claim(plan, "n1")
        await a.commit(plan, node)
        seen = await b.plan("p1", Rules(country="us", session="x"))
        assert seen is not None and seen.node_id == "n1" and not seen.new
        assert [r.key.session_id for r in await b.list("p1")] == ["x"]
        assert await b.end("p1", "x") is True
        assert await a.get("p1", "x") is None
    finally:
        await other.redis.aclose()


async def test_keys_expire_on_the_server_and_carry_the_prefix(store: RedisSessionStore) -> None:
    import time

    now = time.time()
    await store.record(SessionKey("p9", "s"), "r", "n1", now)
    ttl = await store.redis.pttl(f"{store.prefix}s:p9:s")
    assert 0 < ttl <= IDLE * 1000
    keys = [k async for k in store.redis.scan_iter(match=f"{store.prefix}*")]
    assert keys and all(k.decode().startswith(store.prefix) for k in keys)


async def test_redis_clock_follows_the_server(store: RedisSessionStore) -> None:
    import time

    clock = RedisClock(store.redis)
    offset = await clock.sync()
    assert abs(offset) < 5.0  # same machine: the clocks agree closely
    assert abs(clock() - time.time() - offset) < 0.01


async def test_server_time_comes_from_redis_not_the_caller(store: RedisSessionStore) -> None:
    """With `server_time` (the gateway's setting) every script reads Redis's TIME: the `now`
    an instance passes is ignored, so a host whose clock is an hour off still agrees."""
    timed = RedisSessionStore(REDIS_URL, IDLE, prefix=store.prefix, server_time=True)
    try:
        seconds, micros = await timed.redis.time()
        server = seconds + micros / 1_000_000
        off = server - 3600.0  # an instance whose clock is an hour slow
        key = SessionKey("p1", "t")
        made = await timed.record(key, "r", "n1", off)
        assert made is not None and abs(made.created - server) < 5.0
        touched = await timed.touch(key, "r", off)
        assert touched.counted and abs(touched.now - server) < 5.0
        assert touched.record is not None and touched.record.last_used == touched.now
        assert await timed.get(key, off + 7200.0) is not None  # not "expired" by its clock
        assert [r.key.session_id for r in await timed.list("p1", off)] == ["t"]
        assert await timed.expire(off + 7200.0) == 0
    finally:
        await timed.redis.aclose()


async def test_one_script_per_kept_session_request(store: RedisSessionStore) -> None:
    """`plan` on a kept session is one EVALSHA; its commit sends nothing."""
    sent: list[str] = []
    original = store.redis.execute_command

    async def counting(*args: object, **kwargs: object) -> object:
        sent.append(str(args[0]).upper())
        return await original(*args, **kwargs)

    store.redis.execute_command = counting  # type: ignore[method-assign]
    table = SessionTable(store, Clock())
    r = Rules(country="us", session="one")
    first = await table.plan("p1", r)
    assert first is not None
    await table.commit(first, await table.claim(first, "n1"))
    sent.clear()
    for _ in range(3):
        kept = await table.plan("p1", r)
        assert kept is not None and kept.node_id == "n1" and kept.counted is not None
        await table.commit(kept, "n1")
    assert sent == ["EVALSHA"] * 3


async def test_one_script_per_new_session_request(store: RedisSessionStore) -> None:
    """Issue 9: a new session's first request is one EVALSHA (`touch` claims it for the
    picked candidate, counted on arrival); its commit sends nothing."""
    sent: list[str] = []
    original = store.redis.execute_command

    async def counting(*args: object, **kwargs: object) -> object:
        sent.append(str(args[0]).upper())
        return await original(*args, **kwargs)

    store.redis.execute_command = counting  # type: ignore[method-assign]
    assert store.remote
    picked: list[str] = []

    def pick() -> str:
        picked.append("n1")
        return "n1"

    table = SessionTable(store, Clock())
    for i in range(3):
        plan = await table.plan("p1", Rules(country="us", session=f"new{i}"), pick=pick)
        assert plan is not None and (plan.node_id, plan.new) == ("n1", True)
        assert await table.commit(plan, "n1") is None
    assert sent == ["EVALSHA"] * 3 and len(picked) == 3
    records = await table.list("p1")
    assert [(r.key.session_id, r.requests, r.node_requests) for r in records] == [
        ("new0", 1, 1), ("new1", 1, 1), ("new2", 1, 1)
    ]
