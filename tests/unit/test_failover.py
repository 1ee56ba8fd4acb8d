"""Failure policies (SPEC 5) and the composed routing loop (routing/failover.py)."""

from __future__ import annotations

import ast
import random
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Literal, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from exitgate.errors import CATALOGUE, Code, GatewayError
from exitgate.model import Network, Node, NodeAttrs, NodeKind, NodeState
from exitgate.routing import Filters, NodeIndex
from exitgate.routing.attempts import Attempts, Fail, Policy, TryNew, TrySame
from exitgate.routing.failover import Attempt, Dial, Router, Success
from exitgate.routing.health import BreakerState, HealthPolicy, NodeHealth
from exitgate.routing.sessions import SessionOutcome, SessionTable
from exitgate.rules import OnError, OnErrorMode, Rotate, RotateKind, Rules
from exitgate.store.sessions import MemorySessionStore, SessionKey, SessionRecord

T = TypeVar("T")

REPLACE = OnError()
FAIL = OnError(OnErrorMode.FAIL)


def retry(n: int) -> OnError:
    return OnError(OnErrorMode.RETRY, n)


# -- Attempts: the policy alone ----------------------------------------------------------------


def test_no_session_replaces_up_to_the_bound() -> None:
    a = Attempts(Rules(country="us"), None, max_replacements=2)
    assert a.next() == TryNew(frozenset(), None)
    a.failed("n1", "refused 1")
    assert a.next() == TryNew(frozenset({"n1"}), None)
    a.failed("n2", "refused 2")
    assert a.next() == TryNew(frozenset({"n1", "n2"}), None)
    a.failed("n3", "refused 3")
    assert a.next() == Fail(Code.NODE_UNAVAILABLE, "refused 3")


def test_nothing_to_select_is_node_not_found() -> None:
    a = Attempts(Rules(country="us"), None, filters=Filters(country="us", city="la"))
    a.no_candidate()
    assert a.next() == Fail(Code.NODE_NOT_FOUND, "No nodes matching country=us, city=la")


def test_only_cooling_nodes_is_node_unavailable() -> None:
    a = Attempts(Rules(country="us"), None, filters=Filters(country="us"))
    a.no_candidate(cooling=True)
    assert a.next() == Fail(
        Code.NODE_UNAVAILABLE, "Every node matching country=us is cooling down after failures"
    )


def test_replace_with_no_other_node_left() -> None:
    a = Attempts(Rules(country="us", session="s"), "n1", bound=True)
    assert a.next() == TrySame("n1")
    a.failed("n1", "refused")
    assert a.next() == TryNew(frozenset({"n1"}), None)
    a.no_candidate()
    assert a.next() == Fail(
        Code.NODE_UNAVAILABLE, "refused; no other matching node available"
    )


def test_replace_success_is_a_replacement() -> None:
    a = Attempts(Rules(country="us", session="s"), "n1", bound=True)
    assert not a.replaced
    a.failed("n1", "refused")
    assert isinstance(a.next(), TryNew)
    assert a.replaced


def test_lookalike_replacements_resemble_the_first_node() -> None:
    r = Rules(country="us", session="s", prefer_lookalike=True)
    a = Attempts(r, "n1", bound=True)
    a.failed("n1", "x")
    assert a.next() == TryNew(frozenset({"n1"}), "n1")
    a.failed("n2", "y")
    assert a.next() == TryNew(frozenset({"n1", "n2"}), "n1")
    fresh = Attempts(Rules(country="us", session="s", prefer_lookalike=True), None)
    fresh.failed("n7", "x")  # a new session: its first pick is the reference
    assert fresh.next() == TryNew(frozenset({"n7"}), "n7")


def test_onerror_fail() -> None:
    a = Attempts(Rules(country="us", session="s", onerror=FAIL), "n1", bound=True)
    a.failed("n1", "Upstream proxy unreachable: connection refused")
    assert a.next() == Fail(
        Code.NODE_UNAVAILABLE, "Upstream proxy unreachable: connection refused"
    )


def test_onerror_fail_without_session() -> None:
    a = Attempts(Rules(country="us", onerror=FAIL), None)
    a.failed("n1", "refused")
    assert a.next() == Fail(Code.NODE_UNAVAILABLE, "refused")


def test_retry_n_then_one_replacement_then_exhausted() -> None:
    a = Attempts(Rules(country="us", session="s", onerror=retry(2)), "n1", bound=True)
    assert a.next() == TrySame("n1")
    a.failed("n1", "r1")
    assert a.next() == TrySame("n1")
    a.failed("n1", "r2")
    assert a.next() == TrySame("n1")
    a.failed("n1", "r3")
    assert a.next() == TryNew(frozenset({"n1"}), None)
    a.failed("n2", "refused")
    assert a.next() == Fail(
        Code.RETRIES_EXHAUSTED,
        "Node failed after 2 retries and its replacement failed too: refused",
    )


def test_retry_success_on_the_same_node_is_no_replacement() -> None:
    a = Attempts(Rules(country="us", session="s", onerror=retry(1)), "n1", bound=True)
    a.failed("n1", "r1")
    assert a.next() == TrySame("n1")
    assert not a.replaced


def test_retry_without_a_replacement_available() -> None:
    a = Attempts(Rules(country="us", session="s", onerror=retry(1)), "n1", bound=True)
    a.failed("n1", "r1")
    a.failed("n1", "r2")
    assert a.next() == TryNew(frozenset({"n1"}), None)
    a.no_candidate()
    assert a.next() == Fail(
        Code.RETRIES_EXHAUSTED,
        "Node failed after 1 retry and no replacement node is available: r2",
    )


def test_retry_without_session_retries_the_first_pick() -> None:
    a = Attempts(Rules(country="us", onerror=retry(1)), None)
    assert a.next() == TryNew(frozenset(), None)
    a.failed("n4", "r1")
    assert a.next() == TrySame("n4")
    a.failed("n4", "r2")
    assert a.next() == TryNew(frozenset({"n4"}), None)


def test_bind_node_fails_without_retries() -> None:
    r = Rules(country="us", session="s", bind_node=True)
    a = Attempts(r, "n1", bound=True)
    assert a.policy is Policy.BIND
    a.failed("n1", "Agent is offline")
    fail = a.next()
    assert fail == Fail(Code.BOUND_NODE_FAILED, "Bound node failed: Agent is offline")
    assert isinstance(fail, Fail) and CATALOGUE[fail.code].status == 503
    assert fail.error().status == 503


def test_bind_node_with_retries() -> None:
    r = Rules(country="us", session="s", bind_node=True, onerror=retry(3))
    a = Attempts(r, "n1", bound=True)
    for _ in range(3):
        a.failed("n1", "refused")
        assert a.next() == TrySame("n1")
    a.failed("n1", "refused")
    assert a.next() == Fail(Code.BOUND_NODE_FAILED, "Bound node failed after 3 retries: refused")


def test_bind_node_with_onerror_fail_is_bound_node_failed() -> None:
    r = Rules(country="us", session="s", bind_node=True, onerror=FAIL)
    a = Attempts(r, "n1", bound=True)
    a.failed("n1", "refused")
    assert a.next() == Fail(Code.BOUND_NODE_FAILED, "Bound node failed: refused")


def test_bind_node_before_the_session_exists_follows_onerror() -> None:
    r = Rules(country="us", session="s", bind_node=True)
    a = Attempts(r, None, bound=False)
    assert a.policy is Policy.REPLACE
    a.failed("n1", "refused")
    assert a.next() == TryNew(frozenset({"n1"}), None)


def test_misuse_is_refused() -> None:
    a = Attempts(Rules(country="us", onerror=FAIL), "n1")
    with pytest.raises(RuntimeError):
        a.no_candidate()  # the action is TrySame
    a.failed("n1", "x")
    with pytest.raises(RuntimeError):
        a.failed("n1", "x")  # already given up


ONERRORS = st.one_of(
    st.just(REPLACE), st.just(FAIL), st.integers(1, 10).map(retry)
)


@given(
    onerror=ONERRORS,
    bind=st.booleans(),
    start=st.sampled_from([None, "s"]),
    bound=st.booleans(),
    max_replacements=st.integers(0, 5),
    outcomes=st.lists(st.sampled_from(["fail", "none"]), min_size=40, max_size=40),
)
def test_every_policy_terminates_within_its_bound(
    onerror: OnError,
    bind: bool,
    start: str | None,
    bound: bool,
    max_replacements: int,
    outcomes: list[str],
) -> None:
    r = Rules(country="us", session="x", onerror=onerror, bind_node=bind)
    a = Attempts(r, start, bound=bound, max_replacements=max_replacements)
    retries = onerror.retries
    same: dict[str, int] = {}
    news = 0
    fresh = iter(f"r{i}" for i in range(100))
    current = start
    for outcome in outcomes:
        action = a.next()
        if isinstance(action, Fail):
            break
        if isinstance(action, TrySame):
            assert action.node_id == current
            same[action.node_id] = same.get(action.node_id, 0) + 1
            assert same[action.node_id] <= retries + 1  # first try plus N retries
            a.failed(action.node_id, "boom")
            continue
        assert not (action.exclude & {current} - a.tried)
        news += 1
        if outcome == "none":
            a.no_candidate()
            continue
        current = next(fresh)
        a.failed(current, "boom")
    else:
        raise AssertionError("no decision within 40 steps")
    policy = a.policy
    if policy is Policy.BIND:
        assert bind and bound and start is not None
        assert action.code is Code.BOUND_NODE_FAILED and news == 0
    elif not a.tried:
        assert action.code is Code.NODE_NOT_FOUND
    elif policy is Policy.RETRY:
        assert action.code is Code.RETRIES_EXHAUSTED
        assert news <= (2 if start is None else 1)
    else:
        assert action.code is Code.NODE_UNAVAILABLE
        replacements = news - (1 if start is None else 0)
        assert replacements <= (max_replacements if policy is Policy.REPLACE else 0)


# -- the composed loop: real index, health, session table -----------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


Verdict = Literal["ok", "node", "target"]


class RemoteMemorySessionStore(MemorySessionStore):
    """The memory store taking a remote store's path (the candidate is selected before the
    one `touch`, as on Redis), so the routing loop is tested on both paths."""

    @property
    def remote(self) -> bool:
        return True


class World:
    """A pool, a router over it, and a fake dialer with per-node verdicts."""

    def __init__(self, *nodes: Node, remote: bool = False) -> None:
        self.clock = Clock()
        self.index = NodeIndex(random.Random(5))
        for n in nodes:
            self.index.upsert(n)
        self.health = NodeHealth(self.clock, HealthPolicy(threshold=3))
        self.store = RemoteMemorySessionStore(60.0) if remote else MemorySessionStore(60.0)
        self.sessions = SessionTable(self.store, self.clock)
        self.router = Router(self.index, self.health, self.sessions, rng=random.Random(9))
        self.verdicts: dict[str, Verdict] = {}
        self.dialed: list[str] = []

    async def request(self, r: Rules, package: str = "p1") -> Success | Fail | None:
        """One request end to end; the Success lease is released at once (a short tunnel)."""
        attempt = await self.router.begin(package, r, Filters(country=r.country))
        result = await self.drive(attempt)
        if isinstance(result, Success):
            self.health.release(result.lease)
        return result

    async def drive(
        self, attempt: Attempt, verdict: Callable[[str], Verdict] | None = None
    ) -> Success | Fail | None:
        verdict = verdict or (lambda node_id: self.verdicts.get(node_id, "ok"))
        try:
            while True:
                step = await attempt.next()
                if isinstance(step, Fail):
                    return step
                self.dialed.append(step.node.id)
                match verdict(step.node.id):
                    case "node":
                        attempt.failed(f"{step.node.id} refused")
                    case "target":
                        await attempt.target_failed()
                        return None
                    case "ok":
                        return await attempt.succeeded()
        finally:
            attempt.close()

    def session_node(self, package: str = "p1", sid: str = "s") -> str | None:
        record = self.store._records.get(SessionKey(package, sid))
        return None if record is None else record.node_id


def us(i: int, *, asn: int = 100, city: str = "la", region: str = "ca") -> Node:
    return Node(f"n{i}", NodeKind.DIRECT, NodeAttrs("us", region, city, "isp", asn, Network.RES))


def sess(**kw: object) -> Rules:
    return Rules(country="us", session="s", **kw)  # type: ignore[arg-type]


def ok(result: Success | Fail | None) -> Success:
    assert isinstance(result, Success), result
    return result


async def test_no_session_picks_a_node_and_replaces_a_failing_one() -> None:
    w = World(us(1), us(2))
    w.verdicts["n1"] = "node"
    w.verdicts["n2"] = "node"
    result = await w.request(Rules(country="us"))
    assert result == Fail(Code.NODE_UNAVAILABLE, f"{w.dialed[-1]} refused; no other matching "
                          "node available")
    assert sorted(w.dialed) == ["n1", "n2"]
    w.verdicts["n2"] = "ok"
    success = ok(await w.request(Rules(country="us")))
    assert success.node.id == "n2" and success.session is None


async def test_node_not_found_names_the_filters() -> None:
    w = World(us(1))
    result = await w.request(Rules(country="de"))
    assert result == Fail(Code.NODE_NOT_FOUND, "No nodes matching country=de")


async def test_a_session_is_new_then_kept() -> None:
    w = World(us(1), us(2), us(3))
    first = ok(await w.request(sess()))
    assert first.session is SessionOutcome.NEW
    for _ in range(5):
        again = ok(await w.request(sess()))
        assert again.session is SessionOutcome.KEPT and again.node.id == first.node.id
    record = await w.sessions.get("p1", "s")
    assert record is not None and record.requests == 6  # each request counted once


async def test_replacement_moves_the_session() -> None:
    w = World(us(1), us(2), us(3))
    first = ok(await w.request(sess()))
    w.verdicts[first.node.id] = "node"
    replaced = ok(await w.request(sess()))
    assert replaced.session is SessionOutcome.REPLACED
    assert replaced.node.id != first.node.id
    assert w.session_node() == replaced.node.id
    kept = ok(await w.request(sess()))
    assert kept.session is SessionOutcome.KEPT and kept.node.id == replaced.node.id


async def test_onerror_fail_leaves_the_session_on_its_node() -> None:
    w = World(us(1), us(2))
    first = ok(await w.request(sess(onerror=FAIL)))
    w.verdicts[first.node.id] = "node"
    result = await w.request(sess(onerror=FAIL))
    assert result == Fail(Code.NODE_UNAVAILABLE, f"{first.node.id} refused")
    assert w.session_node() == first.node.id


async def test_retry_then_replacement_then_exhausted() -> None:
    w = World(us(1), us(2))
    first = ok(await w.request(sess(onerror=retry(1))))
    other = "n2" if first.node.id == "n1" else "n1"
    w.verdicts = {"n1": "node", "n2": "node"}
    w.dialed.clear()
    result = await w.request(sess(onerror=retry(1)))
    assert w.dialed == [first.node.id, first.node.id, other]
    assert result == Fail(
        Code.RETRIES_EXHAUSTED,
        f"Node failed after 1 retry and its replacement failed too: {other} refused",
    )


async def test_bind_node_never_replaces() -> None:
    w = World(us(1), us(2))
    r = sess(bind_node=True, onerror=retry(2))
    first = ok(await w.request(r))
    w.verdicts[first.node.id] = "node"
    w.dialed.clear()
    result = await w.request(r)
    assert w.dialed == [first.node.id] * 3
    assert result == Fail(
        Code.BOUND_NODE_FAILED, f"Bound node failed after 2 retries: {first.node.id} refused"
    )
    assert isinstance(result, Fail) and CATALOGUE[result.code].status == 503
    assert w.session_node() == first.node.id


async def test_an_offline_bound_node_fails_without_a_dial() -> None:
    w = World(us(1), us(2))
    first = ok(await w.request(sess(bind_node=True)))
    w.index.upsert(Node(first.node.id, NodeKind.DIRECT, first.node.attrs,
                        state=NodeState.OFFLINE))
    w.dialed.clear()
    result = await w.request(sess(bind_node=True))
    assert result == Fail(Code.BOUND_NODE_FAILED, "Bound node failed: Node is offline")
    assert w.dialed == []


async def test_an_offline_session_node_is_replaced_without_a_dial() -> None:
    w = World(us(1), us(2))
    first = ok(await w.request(sess()))
    w.index.remove(first.node.id)
    w.dialed.clear()
    result = ok(await w.request(sess()))
    assert result.session is SessionOutcome.REPLACED
    assert w.dialed == [result.node.id] and result.node.id != first.node.id


async def test_a_draining_session_node_keeps_its_session() -> None:
    w = World(us(1), us(2))
    first = ok(await w.request(sess()))
    w.index.upsert(Node(first.node.id, NodeKind.DIRECT, first.node.attrs,
                        state=NodeState.DRAINING))
    again = ok(await w.request(sess()))
    assert again.session is SessionOutcome.KEPT and again.node.id == first.node.id
    fresh = ok(await w.request(Rules(country="us", session="t")))
    assert fresh.node.id != first.node.id  # but takes no new session


async def test_a_session_node_that_no_longer_matches_is_replaced() -> None:
    w = World(us(1), us(2))
    first = ok(await w.request(sess()))
    moved = NodeAttrs("de", "be", "berlin", "isp", 100, Network.RES)
    w.index.upsert(Node(first.node.id, NodeKind.DIRECT, moved))
    result = ok(await w.request(sess()))
    assert result.session is SessionOutcome.REPLACED and result.node.id != first.node.id


async def test_rotate_timed_moves_to_another_node() -> None:
    w = World(us(1), us(2), us(3))
    r = sess(rotate=Rotate(RotateKind.TIMED, 30))
    first = ok(await w.request(r))
    w.clock.advance(29.9)
    assert ok(await w.request(r)).session is SessionOutcome.KEPT
    w.clock.advance(0.1)
    rotated = ok(await w.request(r))
    assert rotated.session is SessionOutcome.ROTATED and rotated.node.id != first.node.id
    assert w.session_node() == rotated.node.id
    assert ok(await w.request(r)).session is SessionOutcome.KEPT


async def test_rotate_requests_counts_each_request() -> None:
    w = World(us(1), us(2))
    r = sess(rotate=Rotate(RotateKind.REQUESTS, 2))
    outcomes = []
    nodes = []
    for _ in range(6):
        s = ok(await w.request(r))
        outcomes.append(s.session)
        nodes.append(s.node.id)
    N, K, R = SessionOutcome.NEW, SessionOutcome.KEPT, SessionOutcome.ROTATED
    assert outcomes == [N, K, R, K, R, K]
    assert nodes[0] == nodes[1] != nodes[2] == nodes[3] != nodes[4] == nodes[5]


async def test_rotation_with_one_node_keeps_it_and_stays_due() -> None:
    w = World(us(1))
    r = sess(rotate=Rotate(RotateKind.TIMED, 5))
    ok(await w.request(r))
    w.clock.advance(10)
    kept = ok(await w.request(r))
    assert kept.session is SessionOutcome.KEPT and kept.node.id == "n1"
    w.index.upsert(us(2))  # another node comes online: the overdue rotation happens now
    rotated = ok(await w.request(r))
    assert rotated.session is SessionOutcome.ROTATED and rotated.node.id == "n2"


async def test_rotation_target_failing_is_a_replacement() -> None:
    w = World(us(1), us(2), us(3))
    r = sess(rotate=Rotate(RotateKind.REQUESTS, 1))
    first = ok(await w.request(r))
    for n in ("n1", "n2", "n3"):
        if n != first.node.id:
            w.verdicts[n] = "node"
            break
    result = ok(await w.request(r))
    assert result.session in (SessionOutcome.ROTATED, SessionOutcome.REPLACED)
    assert w.session_node() == result.node.id


async def test_mismatch_is_409_before_any_dial() -> None:
    w = World(us(1))
    ok(await w.request(sess()))
    before = await w.sessions.get("p1", "s")
    w.dialed.clear()
    with pytest.raises(GatewayError) as caught:
        await w.router.begin("p1", Rules(country="us", session="s", onerror=FAIL),
                             Filters(country="us"))
    assert caught.value.code is Code.SESSION_PARAMS_MISMATCH
    assert w.dialed == [] and await w.sessions.get("p1", "s") == before


@pytest.mark.parametrize("remote", [False, True])
async def test_racing_first_requests_share_one_node(remote: bool) -> None:
    w = World(*(us(i) for i in range(20)), remote=remote)
    filters = Filters(country="us")
    attempts = [await w.router.begin("p1", sess(), filters) for _ in range(5)]
    steps = [await a.next() for a in attempts]  # all pick before any dial completes
    assert all(isinstance(s, Dial) for s in steps)
    assert len({s.node.id for s in steps if isinstance(s, Dial)}) == 1
    outcomes = [ok(await a.succeeded()) for a in attempts]
    for a, s in zip(attempts, outcomes, strict=True):
        a.close()
        w.health.release(s.lease)
    # the first claims the session (counted on arrival); the others find it and follow
    assert [s.session for s in outcomes] == [SessionOutcome.NEW] + [SessionOutcome.KEPT] * 4
    record = await w.sessions.get("p1", "s")
    assert record is not None and (record.requests, record.node_requests) == (5, 5)


class Steps:
    """Counts the session store's steps and the router's selections of one World."""

    def __init__(self, w: World) -> None:
        self.store: list[str] = []
        self.selections = 0
        for name in ("touch", "claim", "rebind", "record", "refund", "release"):
            setattr(w.store, name, self._counting(name, getattr(w.store, name)))
        select = w.router.select

        def counting_select(*args: Any, **kwargs: Any) -> Node | None:
            self.selections += 1
            return select(*args, **kwargs)

        w.router.select = counting_select  # type: ignore[method-assign]

    def _counting(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.store.append(name)
            return method(*args, **kwargs)

        return call


@pytest.mark.parametrize("remote", [False, True])
async def test_a_new_session_is_claimed_counted_on_arrival(remote: bool) -> None:
    """Issue 9: the first request's step claims a real record for the candidate (remote:
    selected before the one step; in process: after a step that found nothing); commit
    writes nothing. The same outcome, counts and record on both paths."""
    w = World(us(1), us(2), remote=remote)
    steps = Steps(w)
    first = ok(await w.request(sess()))
    assert first.session is SessionOutcome.NEW
    assert steps.store == (["touch"] if remote else ["touch", "touch"])
    assert steps.selections == 1
    record = await w.sessions.get("p1", "s")
    assert record is not None and record.node_id == first.node.id
    assert (record.requests, record.node_requests, record.epoch) == (1, 1, 0)
    steps.store.clear()
    steps.selections = 0
    kept = ok(await w.request(sess()))
    assert (kept.session, kept.node) == (SessionOutcome.KEPT, first.node)
    assert steps.store == ["touch"]
    # a kept request selects only on the remote path (its candidate goes unused)
    assert steps.selections == (1 if remote else 0)


@pytest.mark.parametrize("remote", [False, True])
async def test_a_failed_first_dial_is_replaced_by_compare_and_set(remote: bool) -> None:
    w = World(us(1), us(2), remote=remote)
    attempt = await w.router.begin("p1", sess(), Filters(country="us"))
    steps = Steps(w)
    # the claimed candidate (whichever it is) fails; its replacement works
    success = ok(await w.drive(attempt, lambda node_id: "node" if len(w.dialed) == 1 else "ok"))
    assert success.session is SessionOutcome.NEW  # still the session's first request
    assert steps.store == ["rebind"]  # the replacement: compare-and-set on (node, epoch 0)
    record = await w.sessions.get("p1", "s")
    assert record is not None and record.node_id == success.node.id != w.dialed[0]
    assert (record.requests, record.node_requests, record.epoch) == (1, 1, 1)
    w.health.release(success.lease)


async def test_a_candidate_cooling_down_during_the_claim_is_moved_not_failed() -> None:
    """Remote: the candidate is selected before the store's round trip; if other requests'
    verdicts cool it down meanwhile, the claim moves away before any dial (onerror-fail
    does not turn that into a 502)."""
    w = World(us(1), us(2), remote=True)
    touch = w.store.touch

    async def slow_touch(*args: Any, **kwargs: Any) -> Any:
        done = await touch(*args, **kwargs)
        if done.claimed:
            for _ in range(3):  # meanwhile, three failures on the candidate open its breaker
                w.health.record_failure(done.record.node_id)
        return done

    w.store.touch = slow_touch  # type: ignore[method-assign]
    served = ok(await w.request(sess(onerror=FAIL)))
    assert served.session is SessionOutcome.NEW and len(w.dialed) == 1
    record = await w.sessions.get("p1", "s")
    assert record is not None and record.node_id == served.node.id
    assert (record.requests, record.node_requests, record.epoch) == (1, 1, 1)
    other = "n2" if served.node.id == "n1" else "n1"
    assert w.health.state(other) is BreakerState.OPEN  # the candidate, never dialed


@pytest.mark.parametrize("remote", [False, True])
async def test_a_first_request_reaching_no_node_leaves_no_session(remote: bool) -> None:
    w = World(us(1), us(2), remote=remote)
    w.verdicts = {"n1": "node", "n2": "node"}
    result = await w.request(sess())
    assert isinstance(result, Fail) and result.code is Code.NODE_UNAVAILABLE
    assert w.dialed == ["n1", "n2"] or w.dialed == ["n2", "n1"]  # claimed, then replaced
    assert w.session_node() is None  # refunded: it lived on that request alone


@pytest.mark.parametrize("remote", [False, True])
async def test_a_second_request_joining_a_dialing_claim_keeps_it_on_refund(
    remote: bool,
) -> None:
    """A racing request counted on the claimed session keeps it alive when the claimer
    reaches no node: the refund gives back the claimer's count only."""
    w = World(us(1), remote=remote)
    a = await w.router.begin("p1", sess(onerror=FAIL), Filters(country="us"))
    b = await w.router.begin("p1", sess(onerror=FAIL), Filters(country="us"))
    sa, sb = await a.next(), await b.next()
    assert isinstance(sa, Dial) and isinstance(sb, Dial) and sa.node == sb.node
    a.failed("refused")
    assert isinstance(await a.next(), Fail)
    a.close()
    served = ok(await b.succeeded())
    b.close()
    w.health.release(served.lease)
    assert served.session is SessionOutcome.KEPT
    record = await w.sessions.get("p1", "s")
    assert record is not None and (record.requests, record.node_requests) == (1, 1)


@pytest.mark.parametrize("remote", [False, True])
async def test_a_new_session_with_locked_rules_is_409_and_writes_nothing(
    remote: bool,
) -> None:
    w = World(us(1), us(2), remote=remote)
    ok(await w.request(sess()))
    before = await w.sessions.get("p1", "s")
    with pytest.raises(GatewayError) as caught:
        await w.router.begin("p1", Rules(country="us", session="s", onerror=FAIL),
                             Filters(country="us"))
    assert caught.value.code is Code.SESSION_PARAMS_MISMATCH
    assert await w.sessions.get("p1", "s") == before


async def test_racing_first_requests_converge_after_a_failure() -> None:
    w = World(*(us(i) for i in range(20)))
    filters = Filters(country="us")
    a, b = [await w.router.begin("p1", sess(), filters) for _ in range(2)]
    sa, sb = await a.next(), await b.next()
    assert isinstance(sa, Dial) and isinstance(sb, Dial) and sa.node == sb.node
    a.failed("refused")
    b.failed("refused")
    na, nb = await a.next(), await b.next()
    assert isinstance(na, Dial) and isinstance(nb, Dial)
    assert na.node == nb.node != sa.node  # b followed a's replacement
    ok(await a.succeeded())
    ok(await b.succeeded())
    a.close()
    b.close()
    assert w.session_node() == na.node.id


async def test_cancelled_first_request_leaves_nothing_behind() -> None:
    w = World(us(1))
    attempt = await w.router.begin("p1", sess(), Filters(country="us"))
    step = await attempt.next()
    assert isinstance(step, Dial)
    assert w.health.inflight("n1") == 1 and w.session_node() == "n1"
    attempt.close()  # the dial was cancelled: no verdict
    assert w.health.inflight("n1") == 0
    assert w.session_node() is None
    attempt.close()  # idempotent


async def test_a_failed_first_request_leaves_no_session() -> None:
    w = World(us(1))
    w.verdicts["n1"] = "node"
    result = await w.request(sess())
    assert isinstance(result, Fail) and result.code is Code.NODE_UNAVAILABLE
    assert w.session_node() is None


async def test_target_failure_counts_for_the_session_not_against_the_node() -> None:
    w = World(us(1))
    w.verdicts["n1"] = "target"
    for _ in range(5):
        assert await w.request(sess()) is None
    assert w.health.state("n1") is BreakerState.CLOSED and w.health.load("n1") == 0
    record = await w.sessions.get("p1", "s")
    assert record is not None and record.requests == 5


async def test_a_failing_node_loses_traffic_at_once() -> None:
    w = World(us(1), us(2))
    w.verdicts["n1"] = "node"
    for _ in range(20):
        assert ok(await w.request(Rules(country="us"))).node.id == "n2"
    assert w.dialed.count("n1") == 1  # its failure penalty loses every two-way comparison


async def test_repeated_node_failures_cool_the_node_down_then_probe() -> None:
    w = World(us(1))
    w.verdicts["n1"] = "node"
    for _ in range(3):
        result = await w.request(Rules(country="us"))
        assert isinstance(result, Fail) and result.code is Code.NODE_UNAVAILABLE
    assert w.health.state("n1") is BreakerState.OPEN
    w.dialed.clear()
    assert await w.request(Rules(country="us")) == Fail(
        Code.NODE_UNAVAILABLE, "Every node matching country=us is cooling down after failures"
    )
    assert w.dialed == []
    w.clock.advance(1.0)  # the base cool-down
    w.verdicts["n1"] = "ok"
    probe = ok(await w.request(Rules(country="us")))
    assert probe.node.id == "n1" and w.health.state("n1") is BreakerState.CLOSED


async def test_a_cooling_session_node_is_not_dialed() -> None:
    w = World(us(1), us(2))
    first = ok(await w.request(sess()))
    for _ in range(3):
        w.health.record_failure(first.node.id)
    w.dialed.clear()
    result = ok(await w.request(sess()))
    assert first.node.id not in w.dialed and result.session is SessionOutcome.REPLACED


async def test_a_half_open_node_gets_one_probe() -> None:
    w = World(us(1))
    for _ in range(3):
        w.health.record_failure("n1")
    w.clock.advance(1.0)
    filters = Filters(country="us")
    probe = await w.router.begin("p1", Rules(country="us"), filters)
    second = await w.router.begin("p1", Rules(country="us"), filters)
    step = await probe.next()
    assert isinstance(step, Dial) and w.health.state("n1") is BreakerState.PROBING
    assert await second.next() == Fail(
        Code.NODE_UNAVAILABLE, "Every node matching country=us is cooling down after failures"
    )
    probe.close()
    second.close()
    assert w.health.state("n1") is BreakerState.HALF_OPEN  # no verdict: slot free again


async def test_the_success_lease_counts_while_the_tunnel_is_open() -> None:
    w = World(us(1))
    attempt = await w.router.begin("p1", Rules(country="us"), Filters(country="us"))
    await attempt.next()
    success = await attempt.succeeded()
    attempt.close()
    assert w.health.inflight("n1") == 1
    w.health.release(success.lease)
    assert w.health.inflight("n1") == 0


async def test_lookalike_replacements_go_most_similar_first() -> None:
    home = us(0, asn=7, city="la")
    pool = [home, us(1, asn=9, city="sf"), us(2, asn=9, city="la"), us(3, asn=7, city="sf"),
            us(4, asn=7, city="la"), us(5, asn=8, city="ny", region="ny")]
    w = World(*pool)
    w.router.max_replacements = 10
    r = sess(prefer_lookalike=True)
    await w.store.record(SessionKey("p1", "s"), r.canonical(), "n0", w.clock())
    w.verdicts = dict.fromkeys(["n0", "n1", "n2", "n3", "n4"], "node")
    result = ok(await w.request(r))
    # like n0 (asn 7, la, ca): asn+city, asn+region, city, region, then anything
    assert w.dialed == ["n0", "n4", "n3", "n2", "n1", "n5"]
    assert result.session is SessionOutcome.REPLACED and w.session_node() == "n5"


async def test_lookalike_rotation() -> None:
    pool = [us(0, asn=7, city="la"), us(1, asn=9, city="la"), us(2, asn=7, city="la"),
            us(3, asn=8, city="ny", region="ny")]
    w = World(*pool)
    r = sess(prefer_lookalike=True, rotate=Rotate(RotateKind.REQUESTS, 1))
    await w.store.record(SessionKey("p1", "s"), r.canonical(), "n0", w.clock())
    rotated = ok(await w.request(r))
    assert rotated.session is SessionOutcome.ROTATED and rotated.node.id == "n2"


async def test_protocol_misuse_is_refused() -> None:
    w = World(us(1))
    attempt = await w.router.begin("p1", Rules(country="us"), Filters(country="us"))
    with pytest.raises(RuntimeError):
        attempt.failed("x")
    await attempt.next()
    with pytest.raises(RuntimeError):
        await attempt.next()
    attempt.close()


def test_routing_cores_import_no_edge_or_clock() -> None:
    folder = Path(__file__).parents[2] / "src" / "exitgate" / "routing"
    for name in ("sessions.py", "health.py", "lookalike.py", "failover.py"):
        imported: set[str] = set()
        for stmt in ast.walk(ast.parse((folder / name).read_text())):
            if isinstance(stmt, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in stmt.names)
            elif isinstance(stmt, ast.ImportFrom) and stmt.module:
                imported.add(stmt.module.split(".")[0])
        assert not imported & {"asyncio", "socket", "ssl", "selectors", "time", "threading"}


# -- the composed loop under random interleavings -----------------------------------------------


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Drive a coroutine that must not suspend (the memory store never does)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise AssertionError("suspended")


RULE_CHOICES = (
    sess(),
    sess(onerror=FAIL),
    sess(onerror=retry(1)),
    sess(bind_node=True),
    sess(rotate=Rotate(RotateKind.REQUESTS, 1)),
    Rules(country="us"),
)


class RouterMachine(RuleBasedStateMachine):
    """Concurrent requests, each step interleaved at random with the others."""

    def __init__(self) -> None:
        super().__init__()
        self.w = World(*(us(i) for i in range(4)))
        # (attempt, rules, its dial, the record as it began)
        self.open: list[tuple[Attempt, Rules, Dial | None, SessionRecord | None]] = []
        self.crowded: set[int] = set()  # attempts (by id) that ever had company

    def record(self) -> SessionRecord | None:
        return run(self.w.store.get(SessionKey("p1", "s"), self.w.clock()))

    @rule(choice=st.integers(0, len(RULE_CHOICES) - 1))
    def begin(self, choice: int) -> None:
        r = RULE_CHOICES[choice]
        before = self.record()
        try:
            attempt = run(self.w.router.begin("p1", r, Filters(country="us")))
        except GatewayError as exc:
            assert exc.code is Code.SESSION_PARAMS_MISMATCH
            assert before is not None and before.rules != r.canonical()
            assert self.record() == before
            return
        self.open.append((attempt, r, None, before))
        if len(self.open) > 1:
            self.crowded.update(id(a) for a, _, _, _ in self.open)

    @precondition(lambda self: self.open)
    @rule(data=st.data(), verdict=st.sampled_from(["ok", "node", "target"]))
    def step(self, data: st.DataObject, verdict: str) -> None:
        i = data.draw(st.integers(0, len(self.open) - 1))
        attempt, r, dial, began = self.open[i]
        if dial is None:
            step = run(attempt.next())
            if isinstance(step, Fail):
                assert step.code in {
                    Code.NODE_UNAVAILABLE, Code.NODE_NOT_FOUND, Code.RETRIES_EXHAUSTED,
                    Code.BOUND_NODE_FAILED, Code.SESSION_PARAMS_MISMATCH,
                }
                attempt.close()
                del self.open[i]
                self.reached_no_node(attempt, r, began)
            else:
                self.open[i] = (attempt, r, step, began)
            return
        if verdict == "node":
            attempt.failed("refused")
            self.open[i] = (attempt, r, None, began)
            return
        before = self.record()
        if verdict == "target":
            run(attempt.target_failed())
        else:
            success = run(attempt.succeeded())
            assert success.node == dial.node
            assert (success.session is None) == (r.session is None)
            self.w.health.release(success.lease)
        attempt.close()
        del self.open[i]
        after = self.record()
        if r.session is None or (before is not None and before.rules != r.canonical()):
            assert after == before  # no session, or the id went to other rules: untouched
            return
        assert after is not None and after.rules == r.canonical() and after.requests >= 1
        if id(attempt) not in self.crowded:
            assert after.node_id == dial.node.id  # alone: the session is where it served
            # one request, one count (on arrival for a kept session, else at commit)
            if began is not None and began.created == after.created:
                assert after.requests == began.requests + 1
            else:
                assert after.requests == 1

    def reached_no_node(self, attempt: Attempt, r: Rules, began: SessionRecord | None) -> None:
        """Alone, a request that reached no node leaves the session's count as it found it."""
        after = self.record()
        if id(attempt) in self.crowded or r.session is None or after is None:
            return
        if began is not None and began.created == after.created and not began.provisional:
            assert after.requests == began.requests

    @precondition(lambda self: self.open)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        attempt, r, _, began = self.open.pop(data.draw(st.integers(0, len(self.open) - 1)))
        attempt.close()
        self.reached_no_node(attempt, r, began)

    @rule(node=st.integers(0, 3), online=st.booleans())
    def churn(self, node: int, online: bool) -> None:
        state = NodeState.ONLINE if online else NodeState.OFFLINE
        self.w.index.upsert(Node(f"n{node}", NodeKind.DIRECT, us(node).attrs, state=state))

    @rule()
    def advance(self) -> None:
        self.w.clock.advance(0.5)

    @invariant()
    def consistent(self) -> None:
        record = self.record()
        if record is not None:
            assert record.node_id in {"n0", "n1", "n2", "n3"}
            assert 0 <= record.node_requests <= record.requests
        if not self.open:
            assert all(self.w.health.inflight(f"n{i}") == 0 for i in range(4))  # no lease leaks


class RemoteRouterMachine(RouterMachine):
    """The same, on the remote path: a new session is claimed by the one `touch`."""

    def __init__(self) -> None:
        super().__init__()
        self.w = World(*(us(i) for i in range(4)), remote=True)


TestRouterMachine = RouterMachine.TestCase
TestRemoteRouterMachine = RemoteRouterMachine.TestCase
# Whole machines are slow: cap the thorough profile so a run stays within the test timeout.
TestRouterMachine.settings = settings(
    settings.default, max_examples=min(settings.default.max_examples, 1000)
)
TestRemoteRouterMachine.settings = TestRouterMachine.settings
