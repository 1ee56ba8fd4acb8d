"""Node health: breaker transitions, half-open probing, load (routing/health.py)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from exitgate.model import Network, Node, NodeAttrs, NodeKind
from exitgate.routing import Filters, NodeIndex
from exitgate.routing.health import BreakerState, HealthPolicy, Lease, NodeHealth

CLOSED, OPEN = BreakerState.CLOSED, BreakerState.OPEN
HALF_OPEN, PROBING = BreakerState.HALF_OPEN, BreakerState.PROBING
POLICY = HealthPolicy(
    threshold=3, base_cooldown=1.0, max_cooldown=8.0, probe_timeout=30.0,
    failure_penalty=4.0, half_life=10.0,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def health(clock: Clock) -> NodeHealth:
    return NodeHealth(clock, POLICY)


def fail(health: NodeHealth, node: str = "n1", times: int = 1) -> None:
    for _ in range(times):
        health.record_failure(node)


def open_breaker(health: NodeHealth, node: str = "n1") -> None:
    fail(health, node, POLICY.threshold)
    assert health.state(node) is OPEN


def test_an_unknown_node_is_healthy_and_idle(health: NodeHealth) -> None:
    assert health.state("n1") is CLOSED
    assert health.available("n1")
    assert health.load("n1") == 0.0
    assert health.blocked() == set()


def test_consecutive_failures_open_the_breaker(health: NodeHealth) -> None:
    fail(health, times=POLICY.threshold - 1)
    assert health.state("n1") is CLOSED and health.available("n1")
    fail(health)
    assert health.state("n1") is OPEN
    assert not health.available("n1")
    assert health.blocked() == {"n1"}


def test_a_success_resets_the_consecutive_count(health: NodeHealth) -> None:
    fail(health, times=POLICY.threshold - 1)
    health.record_success("n1")
    fail(health, times=POLICY.threshold - 1)
    assert health.state("n1") is CLOSED


def test_cooldown_boundary_then_half_open(health: NodeHealth, clock: Clock) -> None:
    open_breaker(health)
    clock.advance(POLICY.base_cooldown - 0.001)
    assert health.state("n1") is OPEN and "n1" in health.blocked()
    clock.advance(0.001)
    assert health.state("n1") is HALF_OPEN
    assert health.available("n1") and health.blocked() == set()


def test_half_open_admits_one_probe(health: NodeHealth, clock: Clock) -> None:
    open_breaker(health)
    clock.advance(POLICY.base_cooldown)
    probe = health.acquire("n1")
    assert probe.probe > 0
    assert health.state("n1") is PROBING
    assert not health.available("n1") and health.blocked() == {"n1"}
    other = health.acquire("n1")  # a caller that ignored `available`: counted, no probe
    assert other.probe == 0
    assert health.inflight("n1") == 2


def test_probe_success_closes(health: NodeHealth, clock: Clock) -> None:
    open_breaker(health)
    clock.advance(POLICY.base_cooldown)
    lease = health.acquire("n1")
    health.record_success("n1")
    health.release(lease)
    assert health.state("n1") is CLOSED and health.available("n1")
    open_breaker(health)  # the level was reset: the base cool-down again
    clock.advance(POLICY.base_cooldown)
    assert health.state("n1") is HALF_OPEN


def test_probe_failure_reopens_longer_and_bounded(health: NodeHealth, clock: Clock) -> None:
    open_breaker(health)
    cooldowns = []
    for _ in range(6):
        waited = 0.0
        while health.state("n1") is OPEN:
            clock.advance(0.25)
            waited += 0.25
        cooldowns.append(waited)
        lease = health.acquire("n1")
        assert lease.probe
        health.record_failure("n1")
        health.release(lease)
        assert health.state("n1") is OPEN
    assert cooldowns == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_a_probe_released_without_verdict_frees_the_slot(
    health: NodeHealth, clock: Clock
) -> None:
    open_breaker(health)
    clock.advance(POLICY.base_cooldown)
    first = health.acquire("n1")
    health.release(first)  # cancelled, or the target failed: no verdict
    assert health.state("n1") is HALF_OPEN and health.available("n1")
    second = health.acquire("n1")
    assert second.probe and second.probe != first.probe
    health.release(first)  # a stale lease (double release) must not free the new probe
    assert health.state("n1") is PROBING


def test_a_stale_probe_lease_does_not_free_a_newer_probe(
    health: NodeHealth, clock: Clock
) -> None:
    open_breaker(health)
    clock.advance(POLICY.base_cooldown)
    old = health.acquire("n1")
    clock.advance(POLICY.probe_timeout)  # the probe hangs: its slot times out
    assert health.state("n1") is HALF_OPEN
    new = health.acquire("n1")
    health.release(old)
    assert health.state("n1") is PROBING
    health.release(new)
    assert health.state("n1") is HALF_OPEN


def test_failures_while_open_do_not_extend(health: NodeHealth, clock: Clock) -> None:
    open_breaker(health)
    clock.advance(0.5)
    fail(health, times=5)  # stragglers from before the breaker opened
    clock.advance(0.5)
    assert health.state("n1") is HALF_OPEN


def test_a_failure_while_half_open_reopens_longer(health: NodeHealth, clock: Clock) -> None:
    open_breaker(health)
    clock.advance(POLICY.base_cooldown)
    fail(health)
    assert health.state("n1") is OPEN
    clock.advance(2 * POLICY.base_cooldown - 0.001)
    assert health.state("n1") is OPEN
    clock.advance(0.001)
    assert health.state("n1") is HALF_OPEN


def test_a_late_success_closes_an_open_breaker(health: NodeHealth) -> None:
    open_breaker(health)
    health.record_success("n1")
    assert health.state("n1") is CLOSED and health.blocked() == set()


def test_load_counts_leases(health: NodeHealth) -> None:
    leases = [health.acquire("n1") for _ in range(3)]
    assert health.load("n1") == 3.0
    for lease in leases:
        health.release(lease)
    assert health.load("n1") == 0.0
    health.release(Lease("n1"))  # an extra release never goes negative
    assert health.inflight("n1") == 0


def test_failure_penalty_decays_and_ends_with_the_cool_down(
    health: NodeHealth, clock: Clock
) -> None:
    fail(health)
    assert health.load("n1") == pytest.approx(POLICY.failure_penalty)
    clock.advance(POLICY.cooldown(0) / 2)
    half_way = health.load("n1")
    assert 0 < half_way < POLICY.failure_penalty  # decaying within the cool-down
    fail(health)
    assert health.load("n1") == pytest.approx(half_way + POLICY.failure_penalty)
    clock.advance(POLICY.cooldown(0))
    assert health.load("n1") == 0.0  # a recovered node competes again


def test_a_success_clears_the_failure_penalty(health: NodeHealth) -> None:
    fail(health)
    assert health.load("n1") > 0
    health.record_success("n1")
    assert health.load("n1") == 0.0


def test_load_orders_idle_busy_failing(health: NodeHealth) -> None:
    health.acquire("busy")
    fail(health, "flaky")
    assert health.load("idle") < health.load("busy") < health.load("flaky")


def test_selection_avoids_blocked_and_loaded_nodes(health: NodeHealth) -> None:
    index = NodeIndex(random.Random(7))
    for i in range(4):
        index.upsert(Node(f"n{i}", NodeKind.DIRECT, NodeAttrs("us", network=Network.RES)))
    open_breaker(health, "n0")
    for _ in range(5):
        health.acquire("n1")
    picks = {
        node.id
        for _ in range(200)
        if (node := index.select(Filters(country="us"), exclude=health.blocked(),
                                 load=health.load)) is not None
    }
    assert "n0" not in picks
    assert picks == {"n2", "n3"}  # n1 loses every comparison against an idle node


def test_forget(health: NodeHealth) -> None:
    open_breaker(health)
    health.forget("n1")
    assert health.state("n1") is CLOSED and health.blocked() == set()


def test_cooldown_is_capped() -> None:
    policy = HealthPolicy(base_cooldown=0.5, max_cooldown=30.0)
    assert [policy.cooldown(level) for level in (0, 1, 2, 6, 1000)] == [0.5, 1.0, 2.0, 30.0, 30.0]


# -- invariants under random sequences -------------------------------------------------------

NODES = ("a", "b", "c")


class HealthMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.health = NodeHealth(self.clock, POLICY)
        self.leases: list[Lease] = []
        self.acquired = dict.fromkeys(NODES, 0)

    @rule(node=st.sampled_from(NODES))
    def acquire(self, node: str) -> None:
        was = self.health.state(node)
        lease = self.health.acquire(node)
        assert bool(lease.probe) == (was is HALF_OPEN)
        self.leases.append(lease)
        self.acquired[node] += 1

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        lease = self.leases.pop(data.draw(st.integers(0, len(self.leases) - 1)))
        self.health.release(lease)
        self.acquired[lease.node_id] -= 1

    @rule(node=st.sampled_from(NODES))
    def success(self, node: str) -> None:
        self.health.record_success(node)
        assert self.health.state(node) is CLOSED

    @rule(node=st.sampled_from(NODES))
    def failure(self, node: str) -> None:
        was = self.health.state(node)
        self.health.record_failure(node)
        now = self.health.state(node)
        if was in (OPEN, HALF_OPEN, PROBING):
            assert now is OPEN
        else:
            assert now in (CLOSED, OPEN)

    @rule(seconds=st.sampled_from([0.1, 0.5, 1.0, 4.0, 31.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def consistent(self) -> None:
        blocked = set(self.health.blocked())
        for node in NODES:
            state = self.health.state(node)
            assert (node in blocked) == (state in (OPEN, PROBING))
            assert self.health.available(node) == (node not in blocked)
            assert self.health.inflight(node) == self.acquired[node]
            load = self.health.load(node)
            assert load >= self.acquired[node] and math.isfinite(load)


TestHealthMachine = HealthMachine.TestCase
# Whole machines are slow: cap the thorough profile so a run stays within the test timeout.
TestHealthMachine.settings = settings(
    settings.default, max_examples=min(settings.default.max_examples, 1000)
)
