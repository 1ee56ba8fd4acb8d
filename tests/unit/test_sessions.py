"""Sticky sessions: the store's atomic operations and the table's policy (SPEC 5, gate 6)."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from exitgate.errors import Code, GatewayError
from exitgate.routing.sessions import Plan, SessionTable, rotation_due
from exitgate.rules import Rotate, RotateKind, Rules
from exitgate.store.sessions import (
    MemorySessionStore,
    SessionKey,
    SessionRecord,
    SessionStore,
    SessionTimings,
    Touch,
)

T = TypeVar("T")
IDLE = 60.0
T0 = 1_700_000_000.0
KEY = SessionKey("p1", "s1")


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Drive a coroutine of the memory store, which must never suspend."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise AssertionError("the memory store suspended")


def rules(session: str = "s1", **kw: Any) -> Rules:
    return Rules(country="us", session=session, **kw)


def timed(n: int) -> Rotate:
    return Rotate(RotateKind.TIMED, n)


def counted(n: int) -> Rotate:
    return Rotate(RotateKind.REQUESTS, n)


# One contract for every SessionStore; a Redis store joins this list.
STORES = [MemorySessionStore]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> SessionStore:
    made: SessionStore = request.param(IDLE)
    return made


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def table(store: SessionStore, clock: Clock) -> SessionTable:
    return SessionTable(store, clock)


# -- the store contract -----------------------------------------------------------------------


async def test_claim_creates_a_provisional_record(store: SessionStore) -> None:
    assert await store.get(KEY, T0) is None
    record = await store.claim(KEY, "r", "n1", T0)
    assert record == SessionRecord(KEY, "r", "n1", T0, T0, T0, 0, 0)
    assert record.provisional
    assert await store.get(KEY, T0 + 1) == record


async def test_claim_is_create_if_absent(store: SessionStore) -> None:
    first = await store.claim(KEY, "r", "n1", T0)
    second = await store.claim(KEY, "other", "n2", T0 + 1)
    assert second == first  # the winner's record, rules included: the caller compares


async def test_rebind_is_compare_and_set(store: SessionStore) -> None:
    await store.claim(KEY, "r", "n1", T0)
    await store.record(KEY, "r", "n1", T0 + 1)
    lost = await store.rebind(KEY, "r", "n9", "n2", T0 + 2)
    assert lost is not None and lost.node_id == "n1"
    foreign = await store.rebind(KEY, "other", "n1", "n2", T0 + 2)
    assert foreign is not None and foreign.node_id == "n1"  # other rules: no write
    won = await store.rebind(KEY, "r", "n1", "n2", T0 + 3, epoch=0)
    assert won == SessionRecord(KEY, "r", "n2", T0, T0 + 3, T0 + 1, 1, 0, epoch=1)
    assert await store.rebind(SessionKey("p1", "nope"), "r", "n1", "n2", T0) is None


async def test_rebind_compares_the_epoch_too(store: SessionStore) -> None:
    """n1 → n2 → n1: a request that read (n1, 0) cannot move the session again (no ABA)."""
    await store.record(KEY, "r", "n1", T0)
    await store.rebind(KEY, "r", "n1", "n2", T0 + 1, epoch=0)
    back = await store.rebind(KEY, "r", "n2", "n1", T0 + 2, epoch=1, count=True)
    assert back is not None and (back.node_id, back.epoch, back.node_requests) == ("n1", 2, 1)
    stale = await store.rebind(KEY, "r", "n1", "n3", T0 + 3, epoch=0)
    assert stale == back  # nothing written: the caller follows n1
    assert await store.get(KEY, T0 + 3) == back
    moved = await store.rebind(KEY, "r", "n1", "n3", T0 + 3)  # no epoch: the node alone
    assert moved is not None and (moved.node_id, moved.epoch, moved.node_requests) == ("n3", 3, 0)


async def test_touch_counts_a_kept_session_in_one_step(store: SessionStore) -> None:
    assert await store.touch(KEY, "r", T0) == Touch(None, T0)  # nothing written
    assert await store.get(KEY, T0) is None
    provisional = await store.claim(KEY, "r", "n1", T0)
    assert await store.touch(KEY, "r", T0 + 1) == Touch(provisional, T0 + 1)  # a first request
    await store.record(KEY, "r", "n1", T0 + 2)  # ... reached n1
    mismatch = await store.touch(KEY, "other", T0 + 3)
    kept = await store.get(KEY, T0 + 3)
    assert mismatch == Touch(kept, T0 + 3)  # other rules: returned for the 409, untouched
    touched = await store.touch(KEY, "r", T0 + 4)
    assert touched == Touch(
        SessionRecord(KEY, "r", "n1", T0, T0, T0 + 4, 2, 2), T0 + 4, counted=True, previous=T0 + 2
    )
    assert await store.get(KEY, T0 + 4) == touched.record
    assert await store.get(KEY, T0 + 4 + IDLE - 0.001) is not None  # the idle clock restarted


async def test_touch_with_a_candidate_claims_a_new_session(store: SessionStore) -> None:
    """Issue 9: no live record and a candidate node: the one step claims a real record,
    counted on arrival; a later request is counted on it like on any session."""
    timings = SessionTimings(lifetime=600, idle=30, hold=5)
    claimed = await store.touch(KEY, "r", T0, "n1", timings)
    made = SessionRecord(KEY, "r", "n1", T0, T0, T0, 1, 1, timings)
    assert claimed == Touch(made, T0, counted=True, claimed=True)
    assert not made.provisional and await store.get(KEY, T0) == made
    assert [r.key.session_id for r in await store.list("p1", T0)] == ["s1"]
    racing = await store.touch(KEY, "r", T0 + 1, "n2")  # a racing first request follows n1
    assert racing == Touch(
        SessionRecord(KEY, "r", "n1", T0, T0, T0 + 1, 2, 2, timings),
        T0 + 1,
        counted=True,
        previous=T0,
    )
    mismatch = await store.touch(KEY, "other", T0 + 2, "n3")  # 409: untouched
    assert mismatch == Touch(racing.record, T0 + 2)
    assert await store.get(KEY, T0 + 2) == racing.record
    assert await store.get(KEY, T0 + 1 + 30) is None  # the claim's own idle timing
    pending = SessionKey("p1", "pending")
    provisional = await store.claim(pending, "r", "n1", T0)
    assert await store.touch(pending, "r", T0, "n2") == Touch(provisional, T0)  # joins it


async def test_refund_of_a_claim_drops_a_session_that_lived_on_it_alone(
    store: SessionStore,
) -> None:
    claimed = await store.touch(KEY, "r", T0, "n1")
    assert claimed.record is not None and claimed.previous == 0.0
    store.refund(KEY, "r", "n1", T0 + 1, epoch=0, used=T0, previous=claimed.previous)
    assert await store.get(KEY, T0 + 1) is None
    assert await store.list("p1", T0 + 1) == []
    # replaced (moved by compare-and-set), then failed everywhere: gone as well
    await store.touch(KEY, "r", T0 + 2, "n1")
    await store.rebind(KEY, "r", "n1", "n2", T0 + 3, epoch=0, count=True)
    store.refund(KEY, "r", "n1", T0 + 4, epoch=0, used=T0 + 2, previous=0.0)
    assert await store.get(KEY, T0 + 4) is None


async def test_refund_of_a_claim_keeps_a_request_that_came_meanwhile(
    store: SessionStore,
) -> None:
    """A racing request counted on the claimed session (even at the same instant) keeps it
    alive when the claimer reaches no node; only the claimer's count is given back."""
    await store.touch(KEY, "r", T0, "n1")
    await store.touch(KEY, "r", T0, "n2")  # another request, same instant: counted on n1
    store.refund(KEY, "r", "n1", T0, epoch=0, used=T0, previous=0.0)
    assert await store.get(KEY, T0) == SessionRecord(KEY, "r", "n1", T0, T0, T0, 1, 1)
    # a stale refund (the session ended and was claimed afresh meanwhile) drops nothing
    await store.delete(KEY)
    fresh = await store.touch(KEY, "r", T0 + 5, "n3")
    store.refund(KEY, "r", "n1", T0 + 6, epoch=0, used=T0, previous=0.0)
    assert await store.get(KEY, T0 + 6) == fresh.record


async def test_refund_gives_back_a_count_taken_on_arrival(store: SessionStore) -> None:
    await store.record(KEY, "r", "n1", T0)
    touched = await store.touch(KEY, "r", T0 + 10)
    assert touched.record is not None and touched.record.requests == 2
    store.refund(KEY, "r", "n1", T0 + 10, epoch=0, used=T0 + 10, previous=touched.previous)
    assert await store.get(KEY, T0 + 10) == SessionRecord(KEY, "r", "n1", T0, T0, T0, 1, 1)
    assert await store.get(KEY, T0 + IDLE) is None  # idle counts from T0 again


async def test_refund_keeps_what_other_requests_did(store: SessionStore) -> None:
    await store.record(KEY, "r", "n1", T0)
    first = await store.touch(KEY, "r", T0 + 10)
    await store.touch(KEY, "r", T0 + 20)  # another request, still on its way
    store.refund(KEY, "r", "n1", T0 + 20, epoch=0, used=T0 + 10, previous=first.previous)
    after = await store.get(KEY, T0 + 20)
    assert after == SessionRecord(KEY, "r", "n1", T0, T0, T0 + 20, 2, 2)  # last_used stays
    await store.rebind(KEY, "r", "n1", "n2", T0 + 21, epoch=0, count=True)
    # a request counted on n1 that moved the session, then failed everywhere
    store.refund(KEY, "r", "n1", T0 + 21, epoch=0, used=T0 + 30, previous=T0)
    moved = await store.get(KEY, T0 + 21)
    assert moved is not None and (moved.requests, moved.node_requests) == (1, 1)
    assert moved.last_used == T0 + 20
    store.refund(KEY, "other", "n2", T0 + 21, epoch=1, used=T0 + 20, previous=T0)  # other rules
    assert await store.get(KEY, T0 + 21) == moved


async def test_record_counts_and_touches(store: SessionStore) -> None:
    created = await store.record(KEY, "r", "n1", T0)
    assert created == SessionRecord(KEY, "r", "n1", T0, T0, T0, 1, 1)
    again = await store.record(KEY, "r", "n1", T0 + 5)
    assert again is not None and (again.requests, again.node_requests) == (2, 2)
    assert again.last_used == T0 + 5
    elsewhere = await store.record(KEY, "r", "n2", T0 + 6)  # served by a node it left
    assert elsewhere is not None
    assert (elsewhere.node_id, elsewhere.requests, elsewhere.node_requests) == ("n1", 3, 2)


async def test_record_with_other_rules_writes_nothing(store: SessionStore) -> None:
    before = await store.record(KEY, "r", "n1", T0)
    assert await store.record(KEY, "other", "n1", T0 + 1) is None
    assert await store.get(KEY, T0 + 1) == before


async def test_release_drops_only_a_provisional_record_on_that_node(store: SessionStore) -> None:
    await store.claim(KEY, "r", "n1", T0)
    store.release(KEY, "n2")
    assert await store.get(KEY, T0) is not None
    store.release(KEY, "n1")
    assert await store.get(KEY, T0) is None
    await store.record(KEY, "r", "n1", T0)
    store.release(KEY, "n1")
    assert await store.get(KEY, T0) is not None  # a session is never released


async def test_delete(store: SessionStore) -> None:
    await store.record(KEY, "r", "n1", T0)
    assert await store.delete(KEY) is True
    assert await store.delete(KEY) is False
    assert await store.get(KEY, T0) is None


async def test_idle_expiry_boundary(store: SessionStore) -> None:
    await store.record(KEY, "r", "n1", T0)
    assert await store.get(KEY, T0 + IDLE - 0.001) is not None
    assert await store.get(KEY, T0 + IDLE) is None


async def test_expired_record_is_absent_for_every_operation(store: SessionStore) -> None:
    await store.record(KEY, "r", "n1", T0)
    gone = T0 + IDLE
    assert await store.touch(KEY, "r", gone) == Touch(None, gone)
    assert await store.rebind(KEY, "r", "n1", "n2", gone) is None
    fresh = await store.claim(KEY, "other", "n3", gone)
    assert fresh == SessionRecord(KEY, "other", "n3", gone, gone, gone, 0, 0)
    await store.record(SessionKey("p1", "s2"), "r", "n1", T0)
    later = await store.record(SessionKey("p1", "s2"), "r2", "n4", gone)
    assert later is not None and (later.rules, later.requests) == ("r2", 1)


async def test_list_shows_live_sessions_of_one_package(store: SessionStore) -> None:
    await store.record(SessionKey("p1", "b"), "r", "n1", T0 + 1)
    await store.record(SessionKey("p1", "a"), "r", "n2", T0 + 2)
    await store.record(SessionKey("p2", "a"), "r", "n1", T0)
    await store.claim(SessionKey("p1", "pending"), "r", "n1", T0)
    await store.record(SessionKey("p1", "old"), "r", "n1", T0 - IDLE)
    listed = await store.list("p1", T0 + 3)
    assert [r.key.session_id for r in listed] == ["b", "a"]  # oldest first
    assert await store.list("nobody", T0) == []


async def test_expire_reclaims_exactly_the_expired(store: SessionStore) -> None:
    for i in range(5):
        await store.record(SessionKey("p1", f"s{i}"), "r", "n1", T0 + i)
    await store.record(SessionKey("p1", "s0"), "r", "n1", T0 + 10)  # touched: lives longer
    assert await store.expire(T0 + IDLE + 3) == 3  # s1, s2, s3 (s4 at T0+4 lives to T0+64)
    live = {r.key.session_id for r in await store.list("p1", T0 + IDLE + 3)}
    assert live == {"s0", "s4"}
    assert await store.expire(T0 + IDLE + 3) == 0


def test_memory_store_refuses_a_silly_timeout() -> None:
    with pytest.raises(ValueError):
        MemorySessionStore(0)


def test_memory_store_len_counts_records() -> None:
    store = MemorySessionStore(IDLE)
    run(store.record(KEY, "r", "n1", T0))
    assert len(store) == 1
    run(store.expire(T0 + IDLE))
    assert len(store) == 0


# -- the table ------------------------------------------------------------------------------


async def test_no_session_rule_no_plan(table: SessionTable) -> None:
    assert await table.plan("p1", Rules(country="us")) is None
    await table.check("p1", Rules(country="us"))


async def test_first_use_creates_with_canonical_rules(table: SessionTable, clock: Clock) -> None:
    r = rules(rotate=timed(30))
    plan = await table.plan("p1", r)
    assert plan == Plan(KEY, r.canonical(), None, new=True, rotate=False)
    assert await table.claim(plan, "n1") == "n1"
    assert await table.get("p1", "s1") is None  # provisional: not a session yet
    await table.commit(plan, "n1")
    record = await table.get("p1", "s1")
    assert record is not None
    assert (record.rules, record.node_id, record.requests) == (r.canonical(), "n1", 1)
    assert record.rules == "country-us-session-s1-rotate-timed_30"
    clock.advance(1)
    again = await table.plan("p1", r)  # a kept session: counted on arrival
    assert again == Plan(KEY, r.canonical(), "n1", new=False, rotate=False, counted=(T0 + 1, T0))
    assert await table.commit(again, "n1") is None  # nothing left to do at commit
    record = await table.get("p1", "s1")
    assert record is not None and (record.requests, record.last_used) == (2, T0 + 1)


async def test_same_rules_in_another_spelling_are_the_same_session(table: SessionTable) -> None:
    plan = await table.plan("p1", Rules(country="us", session="s1"))
    assert plan is not None
    await table.claim(plan, "n1")
    await table.commit(plan, "n1")
    # network-any and the default onerror are no-ops in canonical form
    same = await table.plan("p1", Rules(country="us", session="s1", networks=None))
    assert same is not None and same.node_id == "n1"


async def test_mismatch_is_409_and_leaves_the_session_untouched(
    table: SessionTable, store: SessionStore, clock: Clock
) -> None:
    plan = await table.plan("p1", rules())
    assert plan is not None
    await table.claim(plan, "n1")
    await table.commit(plan, "n1")
    before = await store.get(KEY, clock())
    clock.advance(5)
    for call in (table.plan, table.check):
        with pytest.raises(GatewayError) as caught:
            await call("p1", Rules(country="de", session="s1"))
        assert caught.value.code is Code.SESSION_PARAMS_MISMATCH
        assert caught.value.status == 409
        assert caught.value.detail == "Session s1 is locked to rules country-us-session-s1"
    assert await store.get(KEY, clock()) == before  # not even last_used moved


async def test_sessions_are_scoped_to_the_package(table: SessionTable) -> None:
    plan = await table.plan("p1", rules())
    assert plan is not None
    await table.claim(plan, "n1")
    await table.commit(plan, "n1")
    other = await table.plan("p2", Rules(country="de", session="s1"))
    assert other is not None and other.node_id is None


async def test_racing_first_requests_end_on_one_node(table: SessionTable) -> None:
    first = await table.plan("p1", rules())
    second = await table.plan("p1", rules())
    assert first is not None and second is not None
    assert await table.claim(first, "n1") == "n1"
    assert await table.claim(second, "n2") == "n1"  # follows the claim that won


async def test_a_racing_first_request_with_other_rules_gets_409(table: SessionTable) -> None:
    first = await table.plan("p1", rules())
    other = await table.plan("p1", Rules(country="de", session="s1"))
    assert first is not None and other is not None
    await table.claim(first, "n1")
    with pytest.raises(GatewayError) as caught:
        await table.claim(other, "n2")
    assert caught.value.code is Code.SESSION_PARAMS_MISMATCH


async def test_joining_a_provisional_session(table: SessionTable) -> None:
    first = await table.plan("p1", rules())
    assert first is not None
    await table.claim(first, "n1")
    joined = await table.plan("p1", rules())
    assert joined == Plan(KEY, first.rules, "n1", new=True, rotate=False)


async def test_idle_expiry_counts_from_the_last_request(table: SessionTable, clock: Clock) -> None:
    """A request restarts the idle clock on arrival (one store step, issue 9); one that
    reaches no node gives it back, so expiry counts from the last request that reached one."""
    plan = await table.plan("p1", rules())
    assert plan is not None
    await table.claim(plan, "n1")
    await table.commit(plan, "n1")
    clock.advance(50)
    kept = await table.plan("p1", rules())  # arrives at T0+50 and reaches n1
    assert kept is not None and kept.node_id == "n1" and kept.counted == (T0 + 50, T0)
    await table.commit(kept, "n1")
    clock.advance(IDLE - 0.001)
    failed = await table.plan("p1", rules())  # arrives at T0+110-, reaches no node
    assert failed is not None and failed.node_id == "n1"
    table.abandon(failed, None)
    clock.advance(0.001)
    gone = await table.plan("p1", rules())  # T0+110: IDLE after the last request that got through
    assert gone is not None and gone.node_id is None
    assert await table.list("p1") == []


async def test_a_plan_is_a_request_even_without_a_commit(table: SessionTable, clock: Clock) -> None:
    """What a kept-session request costs: `plan` alone counts it; `commit` writes nothing."""
    plan = await table.plan("p1", rules())
    assert plan is not None
    await table.claim(plan, "n1")
    await table.commit(plan, "n1")
    for i in range(1, 4):
        clock.advance(IDLE - 1)  # each request keeps the session a whole IDLE longer
        kept = await table.plan("p1", rules())
        assert kept is not None and kept.node_id == "n1" and not kept.new
        record = await table.get("p1", "s1")
        assert record is not None and record.requests == 1 + i
        assert record.expires(IDLE) == clock() + IDLE


async def test_a_new_session_is_claimed_for_the_picked_candidate(
    table: SessionTable, clock: Clock
) -> None:
    """With `pick`, a first request's plan names a claimed, counted session (remote store:
    picked before the one step; in process: picked after a step that found nothing); its
    commit writes nothing; a kept request is not affected by the candidate."""
    picks: list[str] = []

    def pick() -> str:
        picks.append(f"n{len(picks) + 1}")
        return picks[-1]

    r = rules(rotate=counted(2))
    plan = await table.plan("p1", r, pick=pick)
    assert plan == Plan(
        KEY, r.canonical(), "n1", new=True, rotate=False, counted=(T0, 0.0)
    )
    assert await table.commit(plan, "n1") is None
    record = await table.get("p1", "s1")
    assert record == SessionRecord(KEY, r.canonical(), "n1", T0, T0, T0, 1, 1)
    clock.advance(1)
    kept = await table.plan("p1", r, pick=pick)
    assert kept is not None and (kept.node_id, kept.new, kept.rotate) == ("n1", False, False)
    clock.advance(1)
    due = await table.plan("p1", r, pick=pick)  # 2 requests counted on n1: rotate
    assert due is not None and due.rotate and due.node_id == "n1"
    assert picks[0] == "n1"
    with pytest.raises(GatewayError) as caught:
        await table.plan("p1", Rules(country="de", session="s1"), pick=pick)
    assert caught.value.code is Code.SESSION_PARAMS_MISMATCH
    nothing = await table.plan("p1", rules("s2"), pick=lambda: None)  # no node matches
    assert nothing == Plan(
        SessionKey("p1", "s2"), rules("s2").canonical(), None, new=True, rotate=False
    )
    assert await table.get("p1", "s2") is None


async def test_a_claimed_first_request_that_reaches_no_node_leaves_no_session(
    table: SessionTable, clock: Clock
) -> None:
    plan = await table.plan("p1", rules(), pick=lambda: "n1")
    assert plan is not None and plan.node_id == "n1"
    assert await table.move(plan, "n1", "n2", plan.epoch) == "n2"  # n1 failed: replaced
    table.abandon(plan, "n2")  # n2 failed too
    assert await table.get("p1", "s1") is None
    again = await table.plan("p1", rules(), pick=lambda: "n3")
    assert again is not None and (again.node_id, again.new) == ("n3", True)


async def test_rotate_timed_boundary(table: SessionTable, clock: Clock) -> None:
    r = rules(rotate=timed(10))
    plan = await table.plan("p1", r)
    assert plan is not None
    await table.claim(plan, "n1")
    await table.commit(plan, "n1")
    clock.advance(9.999)
    early = await table.plan("p1", r)
    assert early is not None and not early.rotate
    await table.commit(early, "n1")  # requests keep the session alive, not the node young
    clock.advance(0.001)
    due = await table.plan("p1", r)
    assert due is not None and due.rotate and due.node_id == "n1"
    assert await table.move(due, "n1", "n2") == "n2"
    clock.advance(9.999)
    fresh = await table.plan("p1", r)
    assert fresh is not None and not fresh.rotate and fresh.node_id == "n2"
    clock.advance(0.001)
    again = await table.plan("p1", r)
    assert again is not None and again.rotate


async def request(table: SessionTable, r: Rules, candidate: str) -> tuple[str, Plan]:
    """One request the way routing/failover.py makes it: plan, point, dial (works), commit."""
    plan = await table.plan("p1", r)
    assert plan is not None
    if plan.node_id is None:
        node = await table.claim(plan, candidate)
    elif plan.rotate:
        node = await table.move(plan, plan.node_id, candidate, plan.epoch)
    else:
        node = plan.node_id
    await table.commit(plan, node)
    return node, plan


async def test_rotate_requests_counts_each_request_once(table: SessionTable) -> None:
    r = rules(rotate=counted(3))
    served = [await request(table, r, f"n{i // 3 + 1}") for i in range(7)]
    assert [node for node, _ in served] == ["n1"] * 3 + ["n2"] * 3 + ["n3"]
    assert [plan.rotate for _, plan in served] == [False] * 3 + [True] + [False] * 2 + [True]
    record = await table.get("p1", "s1")
    assert record is not None and (record.requests, record.node_requests) == (7, 1)
    assert record.epoch == 2


async def test_rotate_requests_skips_requests_that_reached_no_node(table: SessionTable) -> None:
    r = rules(rotate=counted(2))
    await request(table, r, "n1")
    failed = await table.plan("p1", r)
    assert failed is not None and not failed.rotate
    table.abandon(failed, None)  # no node answered: it is not one of the 2
    assert (await request(table, r, "n2"))[0] == "n1"
    third, plan = await request(table, r, "n2")
    assert (third, plan.rotate) == ("n2", True)


async def test_a_due_rotation_stays_due_until_it_happens(
    table: SessionTable, clock: Clock
) -> None:
    r = rules(rotate=timed(5))
    plan = await table.plan("p1", r)
    assert plan is not None
    await table.claim(plan, "n1")
    await table.commit(plan, "n1")
    clock.advance(5)
    for _ in range(3):  # no other node: the caller keeps n1 and commits
        due = await table.plan("p1", r)
        assert due is not None and due.rotate
        await table.commit(due, "n1")
        clock.advance(1)


def test_rotation_due_never_for_a_provisional_record() -> None:
    record = SessionRecord(KEY, "r", "n1", T0, T0, T0, 0, 5)
    assert not rotation_due(record, rules(rotate=counted(1)), T0 + 100)
    assert not rotation_due(record, rules(rotate=timed(1)), T0 + 100)
    assert not rotation_due(record, rules(), T0 + 100)


async def test_move_races_follow_the_winner(table: SessionTable, clock: Clock) -> None:
    r = rules(rotate=timed(1))
    plan = await table.plan("p1", r)
    assert plan is not None
    await table.claim(plan, "n1")
    await table.commit(plan, "n1")
    clock.advance(1)
    a = await table.plan("p1", r)
    b = await table.plan("p1", r)
    assert a is not None and b is not None and a.rotate and b.rotate
    assert await table.move(a, "n1", "n2") == "n2"
    assert await table.move(b, "n1", "n3") == "n2"


async def test_move_after_the_session_vanished_claims_afresh(table: SessionTable) -> None:
    plan = await table.plan("p1", rules())
    assert plan is not None
    await table.claim(plan, "n1")
    await table.commit(plan, "n1")
    assert await table.end("p1", "s1")
    assert await table.move(plan, "n1", "n2") == "n2"
    joined = await table.plan("p1", rules())
    assert joined is not None and (joined.node_id, joined.new) == ("n2", True)


async def test_move_never_touches_a_session_with_other_rules(
    table: SessionTable, store: SessionStore, clock: Clock
) -> None:
    plan = await table.plan("p1", rules())
    assert plan is not None
    await store.record(KEY, "someone-else", "n7", clock())
    before = await store.get(KEY, clock())
    assert await table.move(plan, "n7", "n2") == "n2"
    assert await store.get(KEY, clock()) == before


async def test_abandon_drops_only_an_unused_claim(table: SessionTable) -> None:
    plan = await table.plan("p1", rules())
    assert plan is not None
    await table.claim(plan, "n1")
    table.abandon(plan, "n1")
    fresh = await table.plan("p1", rules())
    assert fresh is not None and fresh.node_id is None
    await table.claim(plan, "n1")
    await table.commit(plan, "n1")
    table.abandon(plan, "n1")
    assert await table.get("p1", "s1") is not None


async def test_admin_list_get_end_expire(table: SessionTable, clock: Clock) -> None:
    for sid, node in (("a", "n1"), ("b", "n2")):
        plan = await table.plan("p1", rules(sid))
        assert plan is not None
        await table.claim(plan, node)
        await table.commit(plan, node)
        clock.advance(1)
    listed = await table.list("p1")
    assert [(r.key.session_id, r.node_id, r.requests, r.created) for r in listed] == [
        ("a", "n1", 1, T0),
        ("b", "n2", 1, T0 + 1),
    ]
    assert listed[0].rules == "country-us-session-a"
    assert listed[0].expires(table.idle_timeout) == T0 + IDLE
    assert await table.end("p1", "a") is True
    assert await table.end("p1", "a") is False
    assert [r.key.session_id for r in await table.list("p1")] == ["b"]
    clock.advance(IDLE)
    assert await table.expire() == 1
    assert await table.list("p1") == []


# -- invariants under random operation sequences --------------------------------------------

PACKAGES = ("p1", "p2")
IDS = ("a", "b")
NODES = ("n1", "n2", "n3")
RULESETS = (Rules(country="us"), Rules(country="us", rotate=counted(2)), Rules(country="de"))


class SessionMachine(RuleBasedStateMachine):
    """Requests, racing first requests, failed first requests, ends and time, at random."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.store = MemorySessionStore(IDLE)
        self.table = SessionTable(self.store, self.clock)

    def record(self, package: str, sid: str) -> SessionRecord | None:
        return run(self.store.get(SessionKey(package, sid), self.clock()))

    def request_rules(self, sid: str, ruleset: int) -> Rules:
        base = RULESETS[ruleset]
        return Rules(country=base.country, rotate=base.rotate, session=sid)

    @rule(
        package=st.sampled_from(PACKAGES),
        sid=st.sampled_from(IDS),
        ruleset=st.integers(0, len(RULESETS) - 1),
        candidate=st.sampled_from(NODES),
    )
    def request(self, package: str, sid: str, ruleset: int, candidate: str) -> None:
        r = self.request_rules(sid, ruleset)
        before = self.record(package, sid)
        try:
            plan = run(self.table.plan(package, r))
        except GatewayError as exc:
            assert exc.code is Code.SESSION_PARAMS_MISMATCH
            assert before is not None and before.rules != r.canonical()
            assert self.record(package, sid) == before  # mismatch never mutates
            return
        assert plan is not None
        if plan.node_id is None:
            node = run(self.table.claim(plan, candidate))
        elif plan.rotate and candidate != plan.node_id:
            node = run(self.table.move(plan, plan.node_id, candidate))
            assert node == candidate
        else:
            node = plan.node_id
        run(self.table.commit(plan, node))
        after = self.record(package, sid)
        assert after is not None
        assert after.node_id == node  # the session points at the node that served
        assert after.rules == r.canonical()
        previous = 0 if before is None else before.requests
        assert after.requests == previous + 1  # one request, one count
        assert after.last_used == self.clock()

    @rule(
        package=st.sampled_from(PACKAGES),
        sid=st.sampled_from(IDS),
        ruleset=st.integers(0, len(RULESETS) - 1),
    )
    def request_reaching_no_node(self, package: str, sid: str, ruleset: int) -> None:
        before = self.record(package, sid)
        try:
            plan = run(self.table.plan(package, self.request_rules(sid, ruleset)))
        except GatewayError:
            return
        assert plan is not None
        self.table.abandon(plan, None)
        assert self.record(package, sid) == before  # counted on arrival, given back

    @rule(
        package=st.sampled_from(PACKAGES),
        sid=st.sampled_from(IDS),
        candidates=st.lists(st.sampled_from(NODES), min_size=2, max_size=4),
    )
    def racing_first_requests(self, package: str, sid: str, candidates: list[str]) -> None:
        r = self.request_rules(sid, 0)
        try:
            plans = [run(self.table.plan(package, r)) for _ in candidates]
        except GatewayError:
            return
        if any(p is None or p.node_id is not None for p in plans):
            return
        chosen = {
            run(self.table.claim(p, c)) for p, c in zip(plans, candidates, strict=True) if p
        }
        assert chosen == {candidates[0]}  # every racer follows the first claim

    @rule(package=st.sampled_from(PACKAGES), sid=st.sampled_from(IDS), node=st.sampled_from(NODES))
    def failed_first_request(self, package: str, sid: str, node: str) -> None:
        try:
            plan = run(self.table.plan(package, self.request_rules(sid, 0)))
        except GatewayError:
            return
        if plan is None or plan.node_id is not None:
            return
        run(self.table.claim(plan, node))
        self.table.abandon(plan, node)
        assert self.record(package, sid) is None  # no session left behind

    @rule(package=st.sampled_from(PACKAGES), sid=st.sampled_from(IDS))
    def end(self, package: str, sid: str) -> None:
        run(self.table.end(package, sid))
        assert self.record(package, sid) is None

    @rule(seconds=st.sampled_from([0.5, 1.0, 20.0, IDLE - 0.5, IDLE]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def expire(self) -> None:
        live = {(p, s): self.record(p, s) for p in PACKAGES for s in IDS}
        run(self.table.expire())
        assert {(p, s): self.record(p, s) for p in PACKAGES for s in IDS} == live

    @invariant()
    def listing_matches_reads(self) -> None:
        for package in PACKAGES:
            listed = run(self.table.list(package))
            expected = [
                r for s in IDS if (r := self.record(package, s)) is not None and r.requests
            ]
            assert sorted(listed, key=lambda r: r.key.session_id) == expected
            for record in listed:
                assert record.node_id in NODES
                assert 0 <= record.node_requests <= record.requests
                assert self.clock() < record.expires(IDLE)


TestSessionMachine = SessionMachine.TestCase
# Whole machines are slow: cap the thorough profile so a run stays within the test timeout.
TestSessionMachine.settings = settings(
    settings.default, max_examples=min(settings.default.max_examples, 1000)
)
