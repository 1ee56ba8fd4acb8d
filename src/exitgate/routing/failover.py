"""The per-request routing loop: failure policies applied to real nodes. Pure.

Theory of operation
-------------------
Two layers, both synchronous; the edge only awaits the dials. `Attempts`
(routing/attempts.py) is the policy alone, a state machine over node ids (which node to try
next after a failure, and when to give up with which code).

`Router.begin(...)` composes `Attempts` with the node index, node health, the session table
and lookalike ranking into an `Attempt`, whose `next()` yields a concrete `Dial(node)` or a
`Fail`. It resolves `TrySame` on a node that is gone, offline, no longer matching, or cooling
down into an immediate failure (no dial; a DRAINING node keeps its sessions: draining stops
new assignments only); resolves `TryNew` through selection (health-blocked nodes excluded,
load-weighted, lookalike tiers first) and points the session at the result, following a
racing request's node when that one moved the session first; takes a health `Lease` the
moment it picks a node and records the verdicts. The edge reports each `Dial` with exactly
one of `failed(detail)` (NodeFailure), `succeeded()` (returns the lease to hold for the life
of the tunnel, and the `SessionOutcome`), or `target_failed()` (the node worked, the target
did not: the session counts the request, the node gets no verdict), and calls `close()` in
a `finally`: it gives back a lease still held (a cancelled dial) and drops a provisional
session this request claimed but never used. `begin`, `next`, `succeeded` and
`target_failed` are coroutines because the session store's operations are; `failed` and
`close` are synchronous, so `except` and `finally` blocks never await.

Per-domain choice (issue 13, routing/domains.py): `begin` may name the request's target
domain. Exits banned for (package, domain) are then excluded wherever a node is chosen
(selection, rotation, replacement) and refused for `TrySame` ("Node is banned for ..."); a
session whose node is banned moves at once, like a due rotation (a `bind-node` session has
nowhere to go: BOUND_NODE_FAILED). Without a session, selection spreads the domain over the
matching exits, least recently used for it first (`Router.select`, `spread`), and every
success is remembered for the domain. A session within its bindttl (`Plan.held`) is bound
like `bind-node` with at least one retry.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Collection
from dataclasses import replace
from typing import Final

from exitgate.errors import Code, GatewayError
from exitgate.model import Node, NodeState
from exitgate.routing.attempts import MAX_REPLACEMENTS, Attempts, Fail, TryNew, TrySame
from exitgate.routing.domains import BanTable, DomainMemory, select_spread
from exitgate.routing.health import Lease, NodeHealth
from exitgate.routing.index import NodeIndex
from exitgate.routing.lookalike import lookalike_filters
from exitgate.routing.select import Filters, matches
from exitgate.routing.sessions import Plan, SessionOutcome, SessionTable
from exitgate.rules import Rules
from exitgate.store.bans import NO_BANS
from exitgate.store.sessions import NO_TIMINGS, SessionKey, SessionTimings
from exitgate.values import Value


class Dial(Value):
    """Dial this node. Written out, not a frozen dataclass: one per request (a dataclass's
    generated `__init__` stays interpreted in the compiled build)."""

    __slots__ = ("node",)
    node: Final[Node]

    def __init__(self, node: Node) -> None:
        self.node = node

    def value(self) -> tuple[tuple[str, object], ...]:
        return (("node", self.node),)


class Success:
    """The attempt's node worked. Written out, not a frozen dataclass: one per request."""

    __slots__ = ("lease", "node", "session")
    node: Final[Node]
    lease: Final[Lease]  # hold while the tunnel or request lasts: `health.release(lease)` after
    session: Final[SessionOutcome | None]  # None: the request has no session

    def __init__(self, node: Node, lease: Lease, session: SessionOutcome | None) -> None:
        self.node = node
        self.lease = lease
        self.session = session


class Router:
    """Index + health + sessions: hands out one `Attempt` per request."""

    def __init__(
        self,
        index: NodeIndex,
        health: NodeHealth,
        sessions: SessionTable,
        *,
        max_replacements: int = MAX_REPLACEMENTS,
        rng: random.Random | None = None,
        bans: BanTable | None = None,
        memory: DomainMemory | None = None,
    ) -> None:
        self.index = index
        self.health = health
        self.sessions = sessions
        self.max_replacements = max_replacements
        self.rng = rng
        self.bans = bans
        self.memory = memory

    async def begin(
        self,
        package_id: str,
        rules: Rules,
        filters: Filters,
        domain: str | None = None,
        timings: SessionTimings = NO_TIMINGS,
    ) -> Attempt:
        """Plan the request: gate 6 (raises GatewayError SESSION_PARAMS_MISMATCH, writing
        nothing), then a due rotation or a ban of the session's node, which moves it."""
        banned = NO_BANS
        if domain is not None and self.bans is not None:
            banned = await self.bans.banned(package_id, domain)
        plan = None
        if rules.session is not None:  # most requests: no session, nothing to ask
            # a new session's candidate: selection only; the lease is taken at the dial
            def pick() -> str | None:
                node = self.select(filters, banned, None)
                return node.id if node is not None else None

            plan = await self.sessions.plan(package_id, rules, timings, pick)
        if plan is not None and plan.degraded:
            chosen = self.rendezvous(plan.key, filters)
            plan = replace(plan, node_id=chosen.id if chosen is not None else None)
        attempt = Attempt(
            self, rules, filters, plan, package_id=package_id, domain=domain, banned=banned
        )
        if plan is not None and plan.node_id is not None:
            # a banned node moves the session like a due rotation (bind-node cannot move)
            moved = plan.node_id in banned and not (rules.bind_node and not plan.new)
            # a claimed candidate that began cooling down during the store's round trip
            # moves like a banned node: it was never dialed, so it is no failure
            cooling = plan.new and plan.counted is not None
            if cooling and not self.health.available(plan.node_id):
                moved = True
            if moved or plan.rotate:
                await attempt.rotate(rules, plan, plan.node_id)
        return attempt

    def rendezvous(self, key: SessionKey, filters: Filters) -> Node | None:
        """The session's node while the shared session store is down: the matching online
        node with the highest hash of (package, session, node). Every instance computes the
        same answer from the same pool, with no state; a node leaving moves only its own
        sessions. O(pool): a degraded mode, not the fast path."""
        best: Node | None = None
        best_score = -1
        prefix = f"{key.package_id}\x00{key.session_id}\x00".encode()
        for node in self.index:
            if node.state is not NodeState.ONLINE or not self.index.matches(node, filters):
                continue
            digest = hashlib.blake2b(prefix + node.id.encode(), digest_size=8).digest()
            score = int.from_bytes(digest, "big")
            if score > best_score:
                best, best_score = node, score
        return best

    def select(
        self,
        filters: Filters,
        exclude: Collection[str],
        like: str | None,
        spread: Collection[str] = (),
    ) -> Node | None:
        """A node for `filters` outside `exclude` and the cooling nodes; lookalike tiers first.

        `spread`: exits that served the request's domain, least recent first. An exit outside
        it wins; failing that, the least recent selectable one of it.
        """
        blocked = self.health.blocked()
        skip: Collection[str]
        if not exclude:
            skip = blocked
        elif not blocked:
            skip = exclude
        else:
            skip = frozenset(exclude) | blocked
        tiers = [filters]
        reference = self.index.get(like) if like is not None else None
        if reference is not None:
            tiers = lookalike_filters(filters, reference.attrs)
        for tier in tiers:
            node = select_spread(
                self.index, tier, skip, spread, load=self.health.load, rng=self.rng
            )
            if node is not None:
                return node
        return None


class Attempt:
    """One request's way to a working node; see the module docstring for the protocol.

    A lease is taken the moment a node is chosen (`_hold`), before any await: a half-open
    node then becomes this request's probe and no racing request picks it meanwhile.
    """

    def __init__(
        self,
        router: Router,
        rules: Rules,
        filters: Filters,
        plan: Plan | None,
        *,
        package_id: str = "",
        domain: str | None = None,
        banned: frozenset[str] = NO_BANS,
    ) -> None:
        self._router = router
        self._filters = filters
        self._plan = plan
        self._package_id = package_id
        self._domain = domain
        self._banned = banned
        # spreading over the domain's exits: sessionless requests only
        memory = router.memory
        self._spread: Collection[str] = (
            memory.recent(package_id, domain)
            if plan is None and memory is not None and domain is not None
            else ()
        )
        # the node the session points at, as far as this request knows
        self._at: str | None = plan.node_id if plan is not None else None
        # the epoch `_at` was read at; None once this request moved or claimed the session
        self._epoch: int | None = plan.epoch if plan is not None else None
        self._owned: str | None = None  # a node we pointed a (maybe provisional) record at
        self._rotated = False
        self._held: tuple[Node, Lease] | None = None  # chosen, not yet handed out
        self._dialing: tuple[Node, Lease] | None = None  # handed out in a Dial
        self._done = False
        self._left: str | None = None  # the node a rotation moved away from
        self.attempts = self._policy(rules, self._at)

    async def rotate(self, rules: Rules, plan: Plan, current: str) -> None:
        """Begin on another node than `current` if one is available (called by `begin`)."""
        like = current if rules.prefer_lookalike else None
        candidate = self._router.select(self._filters, self._banned | {current}, like)
        if candidate is None:
            return  # the only node: keep it, the rotation stays due
        self._hold(candidate)
        epoch, self._epoch = self._epoch, None
        node_id = self._at = await self._router.sessions.move(plan, current, candidate.id, epoch)
        if node_id == candidate.id:
            self._owned = node_id
        self._rotated = node_id != current
        if self._rotated:
            self._left = current
        self.attempts = self._policy(rules, node_id)

    async def next(self) -> Dial | Fail:
        """The next node to dial, or the error to answer with."""
        if self._dialing is not None:
            raise RuntimeError("report the last Dial before asking for the next")
        attempts = self.attempts
        while True:
            action = attempts.next()
            match action:
                case Fail():
                    self._drop_held()
                    if action.code is Code.NODE_NOT_FOUND and self._banned:
                        return Fail(action.code, f"{action.detail} not banned for {self._domain}")
                    return action
                case TrySame(node_id=node_id):
                    node = self._router.index.get(node_id)
                    problem = self._unusable(node_id, node)
                    if problem is not None or node is None:
                        attempts.failed(node_id, problem or "Node left the pool")
                        continue
                    return self._dial(node)
                case TryNew(exclude=exclude, like=like):
                    candidate = None
                    if self._left is not None:
                        # a rotation moves to a different node whenever one is online: its
                        # replacement avoids the node it left, unless nothing else is there
                        candidate = self._router.select(
                            self._filters, exclude | self._banned | {self._left}, like
                        )
                    if candidate is None:
                        candidate = self._router.select(
                            self._filters, exclude | self._banned, like, self._spread
                        )
                    if candidate is None:
                        attempts.no_candidate(cooling=self._cooling(exclude))
                        continue
                    self._hold(candidate)
                    try:
                        node = (
                            candidate
                            if self._plan is None
                            else await self._point(candidate, exclude)
                        )
                    except GatewayError as exc:  # a racing first request locked other rules
                        self._drop_held()
                        return Fail(exc.code, exc.detail)
                    problem = self._unusable(node.id, node)
                    if problem is not None:
                        attempts.failed(node.id, problem)
                        continue
                    return self._dial(node)

    def failed(self, detail: str) -> None:
        """The dialed node failed (NodeFailure)."""
        node, lease = self._take()
        health = self._router.health
        health.record_failure(node.id)
        health.release(lease)
        self.attempts.failed(node.id, detail)

    async def succeeded(self) -> Success:
        """The dial worked: the node is healthy and the session counts the request."""
        node, lease = self._take()
        self._router.health.record_success(node.id)
        self._done = True
        self._served(node.id)
        plan = self._plan
        if plan is None:
            return Success(node, lease, None)
        if plan.new:
            outcome = SessionOutcome.NEW
        elif self.attempts.replaced:
            outcome = SessionOutcome.REPLACED
        elif self._rotated:
            outcome = SessionOutcome.ROTATED
        else:
            outcome = SessionOutcome.KEPT
        try:
            await self._router.sessions.commit(plan, node.id)
        except BaseException:
            self._router.health.release(lease)  # cancelled: the caller never got the lease
            raise
        return Success(node, lease, outcome)

    async def target_failed(self) -> None:
        """The node worked, the target did not: no node verdict; the session counts it."""
        node, lease = self._take()
        self._router.health.release(lease)
        self._done = True
        self._served(node.id)
        if self._plan is not None:
            await self._router.sessions.commit(self._plan, node.id)

    def close(self) -> None:
        """In `finally`: give back leases not handed over, drop a claim never used."""
        health = self._router.health
        if self._dialing is not None:
            health.release(self._dialing[1])
            self._dialing = None
        self._drop_held()
        plan = self._plan
        # a claim never used, a count taken on arrival: the request reached no node
        if (
            not self._done
            and plan is not None
            and (self._owned is not None or plan.counted is not None)
        ):
            self._router.sessions.abandon(plan, self._owned)
        self._done = True

    # -- internals ----------------------------------------------------------------------------

    def _policy(self, rules: Rules, start: str | None) -> Attempts:
        plan = self._plan
        return Attempts(
            rules,
            start,
            bound=plan is not None and not plan.new,
            filters=self._filters,
            max_replacements=self._router.max_replacements,
            # bindttl holds the node it was planned with, not a rotation's new one
            held=plan is not None and plan.held and start == plan.node_id,
        )

    def _served(self, node_id: str) -> None:
        memory = self._router.memory
        if memory is not None and self._domain is not None:
            memory.served(self._package_id, self._domain, node_id)

    async def _point(self, candidate: Node, tried: frozenset[str]) -> Node:
        """Point the session at `candidate`; the node to dial (a racing request's, maybe)."""
        plan = self._plan
        if plan is None:
            return candidate
        sessions = self._router.sessions
        epoch, self._epoch = self._epoch, None
        if self._at is None:
            self._owned = candidate.id  # before the await: a cancelled claim is cleaned up too
            node_id = await sessions.claim(plan, candidate.id)
        else:
            node_id = await sessions.move(plan, self._at, candidate.id, epoch)
        self._at = node_id
        if node_id == candidate.id:
            self._owned = node_id
            return candidate
        followed = self._router.index.get(node_id)
        if followed is None or node_id in tried:
            return candidate  # the winner's node is gone or failed us: serve this one alone
        return followed

    def _cooling(self, exclude: frozenset[str]) -> bool:
        """Would selection find a node if the cooling ones were not skipped?"""
        if not self._router.health.blocked():
            return False
        index = self._router.index
        skip = exclude | self._banned
        return index.select(self._filters, exclude=skip, rng=self._router.rng) is not None

    def _unusable(self, node_id: str, node: Node | None) -> str | None:
        """Why a node cannot take this request now, without dialing it."""
        if node is None:
            return "Node left the pool"
        if node.state is NodeState.OFFLINE:
            return "Node is offline"
        if not matches(node.attrs, self._filters):
            return "Node no longer matches the session's rules"
        if node_id in self._banned:
            return f"Node is banned for {self._domain}"
        held = self._held is not None and self._held[0].id == node_id
        # A node we hold a lease on may be blocked by that very lease (we are its probe).
        if not held and not self._router.health.available(node_id):
            return "Node is cooling down after repeated failures"
        return None

    def _hold(self, node: Node) -> None:
        self._drop_held()
        self._held = (node, self._router.health.acquire(node.id))

    def _drop_held(self) -> None:
        if self._held is not None:
            self._router.health.release(self._held[1])
            self._held = None

    def _dial(self, node: Node) -> Dial:
        held = self._held
        if held is not None and held[0].id == node.id:
            self._dialing, self._held = (node, held[1]), None
        else:
            self._drop_held()
            self._dialing = (node, self._router.health.acquire(node.id))
        return Dial(node)

    def _take(self) -> tuple[Node, Lease]:
        if self._dialing is None:
            raise RuntimeError("no dial in progress")
        dialing, self._dialing = self._dialing, None
        return dialing
