"""Node health: a circuit breaker per node, and the load score selection spreads by. Pure.

Theory of operation
-------------------
Every dial through a node ends in a verdict the edge reports: `record_success` (the node
worked) or `record_failure` (a node failure, SPEC 5; target errors are no verdict at all).

Breaker, per node, with an injected monotonic clock:

    CLOSED ──(threshold consecutive failures)──▶ OPEN(cool-down)
    OPEN ──(cool-down over)──▶ HALF_OPEN ──(acquire: the probe)──▶ PROBING
    PROBING ──success──▶ CLOSED          PROBING ──failure──▶ OPEN(longer cool-down)
    PROBING ──probe released without a verdict, or probe_timeout──▶ HALF_OPEN
    any ──success──▶ CLOSED (a late success still proves the node works)

The cool-down is `base_cooldown * 2**level`, capped at `max_cooldown`; `level` counts the
failed probes since the node last worked, so a dead exit is tried ever more rarely and a
recovered one is back after one successful probe. A failure reported while OPEN (a request
that started before the breaker opened) changes nothing; one reported while HALF_OPEN
re-opens like a failed probe.

`blocked()` is the set of node ids selection must skip now (OPEN, PROBING): a live `set`,
refreshed from a heap of cool-down deadlines in O(log n) per transition, so it can go
straight into `NodeIndex.select(exclude=...)` without a copy. A HALF_OPEN node is not
blocked: the first request to select it and `acquire` it becomes the probe, and from then on
it is blocked until the verdict. Select and acquire must run without an await between them
(they are both synchronous, so in asyncio nobody can interleave).

Load: `load(node_id) = in_flight + failure_penalty * recent_failures`, where in-flight counts
leases (taken by `acquire`, given back by `release` when the tunnel or request ends) and
recent failures decay with a half-life. `NodeIndex.select` compares the load of two random
candidates and takes the lower, so traffic drifts away from busy and flaky nodes.

`acquire` returns a `Lease` rather than taking a node id on release: the lease says whether
it holds the half-open probe, so a probe cancelled before its verdict frees the probe slot
and the node does not stay blocked.
"""

from __future__ import annotations

import enum
import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

Clock = Callable[[], float]

_PRUNE_BELOW: Final = 0.01  # a failure score this small is forgotten with an idle node
_MAX_LEVEL: Final = 32  # 2**32 * base is past any sane max_cooldown: cap the exponent


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    PROBING = "probing"


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    threshold: int = 3  # consecutive failures that open the breaker
    base_cooldown: float = 1.0  # seconds, first cool-down
    max_cooldown: float = 60.0
    probe_timeout: float = 30.0  # a probe without verdict for this long frees the slot
    failure_penalty: float = 4.0  # load per recent failure (one in-flight lease is 1.0)
    half_life: float = 30.0  # seconds for a failure's weight to halve

    def cooldown(self, level: int) -> float:
        return min(self.max_cooldown, self.base_cooldown * 2.0 ** min(level, _MAX_LEVEL))


class Lease:
    """One in-flight use of a node; give it back with `NodeHealth.release` exactly once.

    Written out, not a frozen dataclass: one per request (docs/decisions.md)."""

    __slots__ = ("node_id", "probe")
    node_id: Final[str]
    probe: Final[int]  # the probe generation this lease holds; 0: not a probe

    def __init__(self, node_id: str, probe: int = 0) -> None:
        self.node_id = node_id
        self.probe = probe


class _Node:
    __slots__ = ("failures", "inflight", "level", "probe", "score", "scored_at", "state", "until")

    def __init__(self) -> None:
        self.state = BreakerState.CLOSED
        self.failures = 0  # consecutive, while CLOSED
        self.level = 0  # failed probes since the node last worked
        self.until = 0.0  # OPEN: end of cool-down; PROBING: probe deadline
        self.probe = 0  # generation of the current probe
        self.inflight = 0
        self.score = 0.0  # decayed failure count, as of scored_at
        self.scored_at = 0.0


class NodeHealth:
    def __init__(self, clock: Clock, policy: HealthPolicy | None = None) -> None:
        self.clock = clock
        self.policy = policy or HealthPolicy()
        self._nodes: dict[str, _Node] = {}
        self._blocked: set[str] = set()
        self._deadlines: list[tuple[float, str]] = []  # (until, node id), may hold stale ones
        self._probes = 0
        self._decay = math.log(2.0) / self.policy.half_life

    # -- verdicts -----------------------------------------------------------------------------

    def record_success(self, node_id: str) -> None:
        node = self._nodes.get(node_id)
        if node is None:
            return
        node.failures = 0
        node.level = 0
        node.score = 0.0  # a success is the freshest news: no penalty left to pay
        if node.state is not BreakerState.CLOSED:
            node.state = BreakerState.CLOSED
            self._blocked.discard(node_id)

    def record_failure(self, node_id: str) -> None:
        now = self.clock()
        node = self._node(node_id)
        node.score = self._score(node, now) + 1.0
        node.scored_at = now
        self._tick(now)
        match node.state:
            case BreakerState.CLOSED:
                node.failures += 1
                if node.failures >= self.policy.threshold:
                    self._open(node_id, node, now)
            case BreakerState.HALF_OPEN | BreakerState.PROBING:
                node.level += 1
                self._open(node_id, node, now)
            case BreakerState.OPEN:
                pass  # a straggler from before the breaker opened: already counted

    # -- admission to a node ------------------------------------------------------------------

    def available(self, node_id: str) -> bool:
        """May a new request use this node now? (CLOSED, or HALF_OPEN awaiting its probe.)"""
        self._tick(self.clock())
        return node_id not in self._blocked

    def blocked(self) -> set[str]:
        """Node ids to exclude from selection now. A live set: do not mutate, do not keep."""
        self._tick(self.clock())
        return self._blocked

    def summary(self) -> dict[str, dict[str, object]]:
        """This process's view of the nodes it has news of (a breaker not closed, failures
        counted, or a penalty left), for operators; healthy nodes are left out."""
        now = self.clock()
        self._tick(now)
        out: dict[str, dict[str, object]] = {}
        for node_id, node in self._nodes.items():
            penalty = self._score(node, now)
            if node.state is BreakerState.CLOSED and not node.failures and penalty < 0.01:
                continue
            out[node_id] = {
                "state": node.state.value,
                "failures": node.failures,
                "penalty": round(penalty, 3),
                "inflight": node.inflight,
            }
        return out

    def state(self, node_id: str) -> BreakerState:
        self._tick(self.clock())
        node = self._nodes.get(node_id)
        return BreakerState.CLOSED if node is None else node.state

    def acquire(self, node_id: str) -> Lease:
        """Count one in-flight use; the first use of a HALF_OPEN node becomes its probe."""
        now = self.clock()
        self._tick(now)
        node = self._node(node_id)
        node.inflight += 1
        if node.state is not BreakerState.HALF_OPEN:
            return Lease(node_id)
        self._probes += 1
        node.probe = self._probes
        node.state = BreakerState.PROBING
        node.until = now + self.policy.probe_timeout
        self._block(node_id, node.until)
        return Lease(node_id, node.probe)

    def release(self, lease: Lease) -> None:
        node = self._nodes.get(lease.node_id)
        if node is None:
            return
        node.inflight = max(0, node.inflight - 1)
        if lease.probe and node.state is BreakerState.PROBING and node.probe == lease.probe:
            # The probe ended without a verdict (cancelled, target error): let another try.
            node.state = BreakerState.HALF_OPEN
            self._blocked.discard(lease.node_id)
        elif (
            node.inflight == 0
            and node.state is BreakerState.CLOSED
            and node.failures == 0
            and self._score(node, self.clock()) < _PRUNE_BELOW
        ):
            del self._nodes[lease.node_id]  # nothing left to remember

    # -- load ---------------------------------------------------------------------------------

    def load(self, node_id: str) -> float:
        """Higher = busier or recently failing; the `Load` that `NodeIndex.select` takes."""
        node = self._nodes.get(node_id)
        if node is None:
            return 0.0
        now = self.clock()
        if now - node.scored_at >= self.policy.cooldown(node.level):
            # The penalty lasts one cool-down after the last failure. Two-choices always
            # prefers the lower load, so a penalty that only decays would keep a recovered
            # node out for good under light traffic: never picked, never probed.
            return float(node.inflight)
        return node.inflight + self.policy.failure_penalty * self._score(node, now)

    def inflight(self, node_id: str) -> int:
        node = self._nodes.get(node_id)
        return 0 if node is None else node.inflight

    def failure_score(self, node_id: str) -> float:
        """Recent failures, decayed by `half_life` (what the dashboard shows)."""
        node = self._nodes.get(node_id)
        return 0.0 if node is None else self._score(node, self.clock())

    def forget(self, node_id: str) -> None:
        """The node left the pool: drop its state (stale deadlines are skipped later)."""
        self._nodes.pop(node_id, None)
        self._blocked.discard(node_id)

    # -- internals ----------------------------------------------------------------------------

    def _node(self, node_id: str) -> _Node:
        node = self._nodes.get(node_id)
        if node is None:
            node = self._nodes[node_id] = _Node()
        return node

    def _score(self, node: _Node, now: float) -> float:
        if node.score == 0.0:
            return 0.0
        return node.score * math.exp(-self._decay * max(0.0, now - node.scored_at))

    def _open(self, node_id: str, node: _Node, now: float) -> None:
        node.state = BreakerState.OPEN
        node.failures = 0
        node.until = now + self.policy.cooldown(node.level)
        self._block(node_id, node.until)

    def _block(self, node_id: str, until: float) -> None:
        self._blocked.add(node_id)
        heapq.heappush(self._deadlines, (until, node_id))

    def _tick(self, now: float) -> None:
        """Cool-downs and probe deadlines that passed turn HALF_OPEN."""
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            until, node_id = heapq.heappop(deadlines)
            node = self._nodes.get(node_id)
            if (
                node is not None
                and node.until == until
                and node.state in (BreakerState.OPEN, BreakerState.PROBING)
            ):
                node.state = BreakerState.HALF_OPEN
                self._blocked.discard(node_id)
