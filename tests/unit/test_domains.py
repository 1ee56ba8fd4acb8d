"""Per-domain memory, bans, and per-session timings (issue 13): the pure cores."""

from __future__ import annotations

import random

import pytest

from exitgate.errors import Code, GatewayError
from exitgate.routing.attempts import Fail
from exitgate.routing.domains import (
    MAX_BAN_TTL,
    BanRequest,
    BanTable,
    DomainMemory,
    domain_of,
    parse_ban,
)
from exitgate.routing.failover import Router, Success
from exitgate.routing.health import HealthPolicy, NodeHealth
from exitgate.routing.index import NodeIndex
from exitgate.routing.select import Filters
from exitgate.routing.sessions import SessionOutcome, SessionTable
from exitgate.rules import Rules
from exitgate.store.bans import Ban, MemoryBanStore
from exitgate.store.sessions import NO_TIMINGS, MemorySessionStore, SessionKey, SessionTimings
from tests.unit.test_failover import Clock, us
from tests.unit.test_sessions import T0, run

# -- domains and the memory ----------------------------------------------------------------------


def test_the_domain_is_the_host_lowercased_without_its_trailing_dot() -> None:
    assert domain_of("WWW.Example.COM.") == "www.example.com"
    assert domain_of("10.0.0.1") == "10.0.0.1"


def test_domain_memory_is_least_recent_first_and_bounded() -> None:
    memory = DomainMemory(cap=2, per_domain=3)
    for node in ("a", "b", "c", "a", "d"):
        memory.served("p", "x.com", node)
    assert tuple(memory.recent("p", "x.com")) == ("c", "a", "d")  # b fell off (3 per domain)
    assert memory.last("p", "x.com") == "d"
    memory.served("p", "y.com", "a")
    memory.served("q", "x.com", "a")  # a third pair: the least recently used pair goes
    assert len(memory) == 2 and tuple(memory.recent("p", "x.com")) == ()
    assert memory.last("p", "nothing") is None
    with pytest.raises(ValueError):
        DomainMemory(cap=0)


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("node_1", BanRequest("node_1", 600)),
        (" last ;ttl=5 ", BanRequest("last", 5)),
        ("n; TTL = 604800", BanRequest("n", MAX_BAN_TTL)),
    ],
)
def test_parse_ban(value: str, parsed: BanRequest) -> None:
    assert parse_ban(value) == parsed


@pytest.mark.parametrize("value", ["", "a b", "n; ttl=0", "n; ttl=604801", "n; ttl=1e3",
                                   "n; x=1", "n;", "n; ttl=01"])
def test_parse_ban_refuses(value: str) -> None:
    with pytest.raises(GatewayError) as caught:
        parse_ban(value)
    assert caught.value.code is Code.ERR_INVALID_VALUE and "X-Exitgate-Ban" in caught.value.detail


# -- the ban store -------------------------------------------------------------------------------


def ban(node: str, until: float, domain: str = "x.com", package: str = "p") -> Ban:
    return Ban(package, domain, node, T0, until, "header")


def test_ban_store_add_banned_list_lift_expire() -> None:
    store = MemoryBanStore(max_bans=3)
    run(store.add(ban("a", T0 + 10)))
    run(store.add(ban("b", T0 + 20)))
    run(store.add(ban("a", T0 + 5, domain="y.com")))
    assert run(store.banned("p", "x.com", T0)) == {"a", "b"}
    assert run(store.banned("p", "x.com", T0 + 10)) == {"b"}  # a expired at its instant
    assert run(store.banned("q", "x.com", T0)) == frozenset()
    assert [(b.domain, b.node_id) for b in run(store.list("p", T0))] == [
        ("x.com", "b"), ("y.com", "a")
    ]
    run(store.add(ban("c", T0 + 30)))
    run(store.add(ban("d", T0 + 30)))  # past the cap of 3: the oldest written (b) goes
    assert len(store) == 3 and run(store.banned("p", "x.com", T0)) == {"c", "d"}
    assert run(store.expire(T0 + 6)) == 1  # y.com's a
    assert run(store.lift("p", "x.com", "c")) == 1
    assert run(store.lift("p")) == 1 and len(store) == 0


def test_ban_table_resolves_last_and_refuses_unknown_exits() -> None:
    clock = Clock()
    memory = DomainMemory()
    table = BanTable(MemoryBanStore(), memory, clock)
    assert run(table.request("p", "X.com", "last", lambda n: True)) is None  # nothing served
    memory.served("p", "x.com", "n1")
    made = run(table.request("p", "X.com.", "last; ttl=9", lambda n: True))
    assert made is not None and (made.domain, made.node_id, made.until - made.created) == (
        "x.com", "n1", 9
    )
    with pytest.raises(GatewayError, match="unknown exit n9"):
        run(table.request("p", "x.com", "n9", lambda n: n != "n9"))
    assert run(table.lift("p", "X.COM")) == 1


# -- routing with bans and spreading ---------------------------------------------------------------


class Lab:
    def __init__(self, n: int = 3) -> None:
        self.clock = Clock()
        self.index = NodeIndex(random.Random(5))
        for i in range(n):
            self.index.upsert(us(i))
        self.health = NodeHealth(self.clock, HealthPolicy(threshold=3))
        self.store = MemorySessionStore(60.0)
        self.memory = DomainMemory()
        self.bans = BanTable(MemoryBanStore(), self.memory, self.clock)
        self.router = Router(
            self.index, self.health, SessionTable(self.store, self.clock),
            rng=random.Random(9), bans=self.bans, memory=self.memory,
        )
        self.failing: set[str] = set()

    def request(
        self, rules: Rules, domain: str = "x.com", timings: SessionTimings = NO_TIMINGS
    ) -> Success | Fail:
        attempt = run(self.router.begin("p", rules, Filters(country="us"), domain, timings))
        try:
            while True:
                step = run(attempt.next())
                if isinstance(step, Fail):
                    return step
                if step.node.id in self.failing:
                    attempt.failed(f"{step.node.id} refused")
                    continue
                ok = run(attempt.succeeded())
                self.health.release(ok.lease)
                return ok
        finally:
            attempt.close()

    def node(self, rules: Rules, domain: str = "x.com") -> str:
        result = self.request(rules, domain)
        assert isinstance(result, Success), result
        return result.node.id


def test_sessionless_requests_cycle_through_the_domains_exits() -> None:
    lab = Lab(4)
    seen = [lab.node(Rules(country="us")) for _ in range(12)]
    assert len(set(seen[:4])) == 4 and seen[4:8] == seen[:4] and seen[8:] == seen[:4]
    assert len(set(lab.node(Rules(country="us"), "y.com") for _ in range(4))) == 4


def test_banned_exits_are_never_selected_and_all_banned_is_node_not_found() -> None:
    lab = Lab(3)
    run(lab.bans.ban("p", "x.com", "n0", 60, "test"))
    assert {lab.node(Rules(country="us")) for _ in range(6)} == {"n1", "n2"}
    assert "n0" in {lab.node(Rules(country="us"), "y.com") for _ in range(3)}
    run(lab.bans.ban("p", "x.com", "n1", 60, "test"))
    run(lab.bans.ban("p", "x.com", "n2", 60, "test"))
    failed = lab.request(Rules(country="us"))
    assert isinstance(failed, Fail) and failed.code is Code.NODE_NOT_FOUND
    assert failed.detail == "No nodes matching country=us not banned for x.com"
    lab.clock.advance(61)
    assert lab.node(Rules(country="us")) in {"n0", "n1", "n2"}


def test_a_session_on_a_banned_exit_rotates_and_a_bound_one_fails() -> None:
    lab = Lab(3)
    rules = Rules(country="us", session="s")
    first = lab.node(rules)
    run(lab.bans.ban("p", "x.com", first, 60, "test"))
    assert lab.node(rules, "y.com") == first  # another domain: the session stays
    moved = lab.request(rules)
    assert isinstance(moved, Success) and moved.node.id != first
    assert moved.session is SessionOutcome.ROTATED
    bound = Rules(country="us", session="b", bind_node=True)
    node = lab.node(bound)
    run(lab.bans.ban("p", "x.com", node, 60, "test"))
    failed = lab.request(bound)
    assert isinstance(failed, Fail) and failed.code is Code.BOUND_NODE_FAILED
    assert failed.detail == "Bound node failed: Node is banned for x.com"


def test_bindttl_keeps_a_failing_node_within_its_window_then_replaces_it() -> None:
    lab = Lab(3)
    rules = Rules(country="us", session="h")
    held = SessionTimings(lifetime=600, hold=30)
    first = lab.request(rules, timings=held)
    assert isinstance(first, Success)
    node = first.node.id
    lab.failing.add(node)
    within = lab.request(rules, timings=held)
    assert isinstance(within, Fail) and within.code is Code.BOUND_NODE_FAILED
    assert "after 1 retry" in within.detail
    assert lab.store._records[SessionKey("p", "h")].node_id == node  # kept
    lab.clock.advance(31)
    after = lab.request(rules, timings=held)
    assert isinstance(after, Success) and after.node.id != node
    assert after.session is SessionOutcome.REPLACED


# -- per-session timings in the store --------------------------------------------------------------


def test_idle_and_lifetime_override_the_store_defaults() -> None:
    store = MemorySessionStore(60.0)
    short = SessionKey("p", "short")
    life = SessionKey("p", "life")
    run(store.record(short, "r", "n1", T0, SessionTimings(idle=5)))
    run(store.record(life, "r", "n1", T0, SessionTimings(lifetime=20)))
    assert run(store.get(short, T0 + 4.9)) is not None
    assert run(store.get(short, T0 + 5)) is None  # its own idle, not the store's 60 s
    for t in range(0, 20, 5):
        assert run(store.record(life, "r", "n1", T0 + t)) is not None  # busy all along
    record = run(store.get(life, T0 + 19.9))
    assert record is not None and record.expires(60.0) == T0 + 20
    assert run(store.get(life, T0 + 20)) is None  # its lifetime, whatever the traffic


def test_expire_reclaims_records_with_mixed_timings() -> None:
    store = MemorySessionStore(60.0)
    run(store.record(SessionKey("p", "long"), "r", "n", T0, SessionTimings(idle=1000)))
    run(store.record(SessionKey("p", "default"), "r", "n", T0))
    run(store.record(SessionKey("p", "short"), "r", "n", T0 + 1, SessionTimings(idle=2)))
    run(store.record(SessionKey("p", "touched"), "r", "n", T0))
    run(store.record(SessionKey("p", "touched"), "r", "n", T0 + 50))  # lives to T0 + 110
    assert run(store.expire(T0 + 3)) == 1  # short, behind a longer-lived record
    assert run(store.expire(T0 + 60)) == 1  # default
    assert run(store.expire(T0 + 109)) == 0  # touched re-filed at its later expiry
    assert run(store.expire(T0 + 110)) == 1
    assert len(store) == 1 and run(store.delete(SessionKey("p", "long")))
    assert run(store.expire(T0 + 5000)) == 0 and len(store) == 0
