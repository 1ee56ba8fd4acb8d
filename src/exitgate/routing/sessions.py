"""Sticky sessions (SPEC 5): which node a session's next request uses. Pure: time is injected.

Theory of operation
-------------------
A session is (package id, session id) → one node, kept in a `SessionStore` (store/sessions.py)
whose every operation is atomic. This table is the policy over those records; it never holds
state of its own, so several gateways sharing one store agree. Its methods are coroutines
because the store's are (a networked store must not block the loop); `abandon` is
synchronous, for `finally` blocks.

Per request with a `session` rule:

1. `plan(package_id, rules)` is ONE atomic store step (`touch`; one Lua script on Redis, issue
   9). Other canonical rules → GatewayError SESSION_PARAMS_MISMATCH (409), nothing written.
   No record → a `Plan` with `node_id=None` (the caller selects a node). A live session with
   these rules counts the request on arrival (requests += 1, node_requests += 1, last_used =
   now: its idle expiry restarts) and the plan names its node, its epoch, and whether a
   rotation is due, judged on the session as this request found it: `rotate-timed_N` when
   `now >= assigned + N`, `rotate-requests_N` when `node_requests >= N` (N requests were
   counted on that node before this one). A due rotation stays due until it happens: when no
   other node is available the session keeps its node and the next request tries again.
   `now` is the store's (Redis's clock on Redis).
   Given `pick` (the router's selection), a request finding no session claims it for the
   picked candidate in that same step (on Redis the candidate is picked before the
   script; in process only after a step that found nothing): a real record counted on
   arrival (requests 1, node_requests 1, epoch 0), and the plan names its node (`new`). A
   racing request finds that session and follows its node, counted like any other. So a
   new session is ONE script on Redis; its commit sends nothing, a replacement is the
   compare-and-set `move`, and a request that reached no node refunds it, which drops a
   session that lived on that request alone.
2. The caller points the session at the node it will dial. For a new id, `claim(plan, node)`
   writes a provisional record (create-if-absent) and returns the node to dial, which is the
   node of whichever request claimed first: racing first requests end on one node with no
   waiting and no lock, in one process or many. For a rotation or a replacement,
   `move(plan, old, new, epoch)` compare-and-sets (node, epoch); a request that loses the
   race follows the winner's node, so concurrent requests never scatter a session. A request
   counted on arrival starts the new node's count at 1 (it is that node's first request).
3. `commit(plan, node)` when the request reached the node (the dial succeeded, or it failed
   on the target, not the node). A request counted on arrival: nothing to do (no round
   trip). Otherwise (a first request, or one joining a provisional record) requests += 1,
   last_used = now; the first commit turns a provisional record into the session, with its
   canonical rules locked.
4. `abandon(plan, node)` when the request ends without reaching any node: a provisional record
   it created is dropped, so a failed first request leaves no session behind, and a count
   taken on arrival is given back (`refund`, in the background): requests -= 1, and
   last_used returns to its value before this request unless another request touched the
   session since.

Idle expiry counts from `last_used`, the last request that reached a node (or is on its way
to one): a session is live while `now < last_used + idle_timeout`. Open tunnels are never
touched: the table decides the node of new requests only.

Per-session timings (SOAX legacy usernames, issue 13) ride on the plan and are written with
the record when a request creates it (`claim`, or `commit` of a record that vanished):
`idle` and `lifetime` are expiry (the store applies them), `hold` is policy: while the record
is `held` (within `hold` seconds of its node taking over) a failing node is retried and
kept, never replaced (`Plan.held`, applied by routing/failover.py). Later requests with other
timings do not change a live session's timings (they are not part of its locked rules).

Decisions: a racing first request with other rules gets 409 against the provisional claim
(one of them must lose; if the first then fails, the id is free again). `rotate-requests_N`
counts requests on arrival and gives back those that reached no node, so it counts requests
that reached the node; a request that moved the session and then failed everywhere leaves
its count on the new node (the move stands). Requests already under way when the Nth
arrives still use the old node, so concurrent traffic may overshoot N by the requests in
flight. A session that vanishes while a counted request moves it is claimed afresh and
stays provisional until its next request commits it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from exitgate.errors import Code, GatewayError
from exitgate.rules import RotateKind, Rules
from exitgate.store.sessions import (
    NO_TIMINGS,
    SessionKey,
    SessionRecord,
    SessionStore,
    SessionStoreDown,
    SessionTimings,
)

Clock = Callable[[], float]
Pick = Callable[[], str | None]  # a candidate node for a new session; None: none matches


class SessionOutcome(enum.StrEnum):
    """What a request did to its session; the edge reports it (`X-Exitgate-Session`)."""

    NEW = "new"  # no session existed: this request (or one racing it) created it
    KEPT = "kept"  # the session's node served the request
    ROTATED = "rotated"  # a due rotation moved the session to another node
    REPLACED = "replaced"  # the node failed and the session moved to a replacement


@dataclass(frozen=True, slots=True)
class Plan:
    key: SessionKey
    rules: str  # canonical
    node_id: str | None  # the session's node; None: no live record, select one
    new: bool  # no session yet: absent, or provisional (a first request is dialing)
    rotate: bool  # a rotation is due: prefer another node
    timings: SessionTimings = NO_TIMINGS  # for a record this request creates
    held: bool = False  # within the session's bindttl: keep its node through failures
    # the shared store is down: the router picks the node by rendezvous hashing over the
    # matching pool (the same answer on every instance) and nothing is written
    degraded: bool = False
    epoch: int = 0  # the session's epoch as planned: `move` compares (node, epoch)
    # counted on arrival: (last_used written, last_used before), for `abandon`'s refund
    counted: tuple[float, float] | None = None


def rotation_due(record: SessionRecord, rules: Rules, now: float) -> bool:
    """Is `rules.rotate` due for the session in `record`? Never for a provisional record."""
    rotate = rules.rotate
    if rotate is None or record.provisional:
        return False
    if rotate.kind is RotateKind.TIMED:
        return now >= record.assigned + rotate.n
    return record.node_requests >= rotate.n


class SessionTable:
    def __init__(self, store: SessionStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    # -- the request path ---------------------------------------------------------------------

    async def check(self, package_id: str, rules: Rules) -> None:
        """Admission gate 6 alone: raise SESSION_PARAMS_MISMATCH if the id is locked to other
        rules. A read: it counts nothing (`plan` is the request's step)."""
        if rules.session is not None:
            record = await self.store.get(SessionKey(package_id, rules.session), self.clock())
            if record is not None:
                _check_rules(record, rules.canonical())

    async def plan(
        self,
        package_id: str,
        rules: Rules,
        timings: SessionTimings = NO_TIMINGS,
        pick: Pick | None = None,
    ) -> Plan | None:
        """Where this request goes; None without a session rule. Counts the request on a kept
        session (one store step); writes nothing on a mismatch or without a session.

        `pick` selects a candidate node for a new session (None: none matches). Given it, a
        new session is claimed for the candidate, counted on arrival, and the plan names it
        (`new`, `counted`): on a remote store the candidate is picked before the one step,
        which claims it when it finds no session (issue 9); in process it is picked only
        when the step found none and claimed in a second local step, so a kept request
        costs no selection. Without `pick` (or no candidate) a new session plans with
        `node_id=None` and the caller claims it (`claim`).
        """
        if rules.session is None:
            return None
        key = SessionKey(package_id, rules.session)
        canonical = rules.canonical()
        remote = self.store.remote
        candidate = pick() if pick is not None and remote else None
        try:
            touch = await self.store.touch(key, canonical, self.clock(), candidate, timings)
            if touch.record is None and pick is not None and not remote:
                candidate = pick()
                if candidate is not None:
                    touch = await self.store.touch(
                        key, canonical, self.clock(), candidate, timings
                    )
        except SessionStoreDown:
            return Plan(key, canonical, None, new=False, rotate=False, degraded=True)
        record = touch.record
        if record is None:
            return Plan(key, canonical, None, new=True, rotate=False, timings=timings)
        now = touch.now
        if touch.claimed:
            return Plan(
                key,
                canonical,
                record.node_id,
                new=True,
                rotate=False,
                timings=timings,
                counted=(record.last_used, touch.previous),
            )
        _check_rules(record, canonical)
        found = record  # the session as this request found it, for a due rotation
        counted = None
        if touch.counted:
            if rules.rotate is not None:  # only a rotation reads the count
                found = record.on_node(record.node_requests - 1)
            counted = (record.last_used, touch.previous)
        return Plan(
            key,
            canonical,
            record.node_id,
            new=record.provisional,
            rotate=rotation_due(found, rules, now),
            timings=timings,
            held=record.held(now),
            epoch=record.epoch,
            counted=counted,
        )

    async def claim(self, plan: Plan, node_id: str) -> str:
        """Point a new session at `node_id`; the node to dial (a racing winner's, maybe).

        Raises SESSION_PARAMS_MISMATCH when a racing request claimed the id with other rules.
        """
        if plan.degraded:
            return node_id
        try:
            record = await self.store.claim(
                plan.key, plan.rules, node_id, self.clock(), plan.timings
            )
        except SessionStoreDown:
            return node_id
        _check_rules(record, plan.rules)
        return record.node_id

    async def move(self, plan: Plan, old: str, new: str, epoch: int | None = None) -> str:
        """Rotate or replace: the session leaves `old` (at `epoch`, if given) for `new`; the
        node to dial.

        If another request moved the session first, its node wins and is returned. If the
        session vanished (ended, expired) it is claimed afresh for `new`. If the id now
        belongs to other rules, `new` is returned and nothing is written.
        """
        if plan.degraded:
            return new
        now = self.clock()
        count = plan.counted is not None
        try:
            record = await self.store.rebind(
                plan.key, plan.rules, old, new, now, epoch=epoch, count=count
            )
            if record is None:
                record = await self.store.claim(plan.key, plan.rules, new, now, plan.timings)
        except SessionStoreDown:
            return new
        return record.node_id if record.rules == plan.rules else new

    async def commit(self, plan: Plan, node_id: str) -> SessionRecord | None:
        """The request reached `node_id`: count it, restart the idle clock. Nothing to do
        (no store step) for a request `plan` already counted."""
        if plan.degraded or plan.counted is not None:
            return None
        try:
            return await self.store.record(
                plan.key, plan.rules, node_id, self.clock(), plan.timings
            )
        except SessionStoreDown:
            return None  # the request went through; only its count is lost

    def abandon(self, plan: Plan, node_id: str | None) -> None:
        """The request reached no node: drop the provisional record it may have left on
        `node_id` (None: it pointed the session nowhere), give back a count taken on
        arrival."""
        if plan.degraded:
            return
        if node_id is not None:
            self.store.release(plan.key, node_id)
        if plan.counted is not None and plan.node_id is not None:
            used, previous = plan.counted
            self.store.refund(
                plan.key,
                plan.rules,
                plan.node_id,
                self.clock(),
                epoch=plan.epoch,
                used=used,
                previous=previous,
            )

    # -- admin --------------------------------------------------------------------------------

    async def get(self, package_id: str, session_id: str) -> SessionRecord | None:
        record = await self.store.get(SessionKey(package_id, session_id), self.clock())
        return None if record is None or record.provisional else record

    async def list(self, package_id: str) -> list[SessionRecord]:
        """Live sessions of a package, oldest first."""
        return await self.store.list(package_id, self.clock())

    async def end(self, package_id: str, session_id: str) -> bool:
        """Forget a session now; its open tunnels go on, its next request starts afresh."""
        return await self.store.delete(SessionKey(package_id, session_id))

    async def expire(self) -> int:
        """Reclaim expired records (call every few seconds); the number dropped."""
        return await self.store.expire(self.clock())

    @property
    def idle_timeout(self) -> float:
        return self.store.idle_timeout


def _check_rules(record: SessionRecord, canonical: str) -> None:
    if record.rules != canonical:
        raise GatewayError(
            Code.SESSION_PARAMS_MISMATCH,
            f"Session {record.key.session_id} is locked to rules {record.rules}",
        )
