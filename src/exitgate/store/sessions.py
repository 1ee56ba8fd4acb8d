"""Sticky-session state: a narrow protocol of atomic operations, and the in-process store.

A session binds (package id, session id) to one node. The routing policy (when to rotate,
what a mismatch is, what the client is told) lives in `routing/sessions.py`; this module only
keeps records, and every method is ONE atomic step, so that any interleaving of concurrent
requests leaves a consistent record. The operations are shaped for a shared store: each is a
compare-and-set over a single key, one Lua script in Redis (sketch below), never "read, then
write" across two calls.

Records
-------
`SessionRecord` is immutable; a write stores a new one. Times are seconds from the caller's
clock, passed in as `now` (the memory store never reads a clock, so tests are exact; the Redis
store reads Redis's `TIME` inside each script when built with `server_time`). With a store
shared between gateway processes that clock must be shared too: use wall time (`time.time`),
not `time.monotonic`, which is per process. Times are then epoch seconds, ready for the
admin API.

- `requests == 0` marks a *provisional* record: a first request claimed the id and is still
  dialing. Racing first requests find it and follow its node, so they end on one node without
  waiting for each other (SPEC 5). It becomes a session when a request reaches a node
  (`record`), and is dropped (`release`) when the first request fails altogether. A first
  request that names its candidate to `touch` (the router does, issue 9) makes no
  provisional record: it claims a real one, counted on arrival, and a racing request finds
  a session like any other; `claim` remains for a first request that had no candidate
  then, and for a session that vanished while a request moved it.
- A record is live while `now < last_used + idle_timeout`; from that instant on it is gone for
  every operation, exactly as a Redis key with `PEXPIREAT last_used + idle_timeout` vanishes.
  `expire(now)` only reclaims memory; no reader ever sees an expired record.
- `assigned` is when `node_id` took over (rotate-timed counts from it), `node_requests` how
  many requests were counted on it since (rotate-requests), `epoch` how many times the node
  changed (every `rebind` adds one): a compare-and-set names (node, epoch), so a request that
  read the session before it moved away and back cannot move it again.
- `timings` (issue 13, SOAX legacy usernames) are per-session overrides fixed when the record
  is created: `idle` replaces the store's idle timeout, `lifetime` ends the record at
  `created + lifetime` whatever the traffic, `hold` (bindttl) is routing policy the store only
  carries. A record's expiry is therefore `min(last_used + idle, created + lifetime)`; it only
  ever moves later, which `expire` relies on.

Operations (each atomic; "live" = present and not expired; all but `release` are coroutines)
----------
    get(key, now)                          the live record or None
    touch(key, rules, now, node, timings)  a request arrives (issue 9: ONE step per request):
                                           the live record with `rules` that is not
                                           provisional counts it (requests += 1,
                                           node_requests += 1, last_used = now); any other
                                           record is returned untouched. No live record and a
                                           candidate `node`: the request claims the session
                                           for it, a real record counted on arrival
                                           (requests 1, node_requests 1, epoch 0, `timings`);
                                           no record and no `node`: nothing written. A
                                           `Touch`: the record after the step, the store's
                                           `now` (Redis: its own clock), whether it counted
                                           and whether it claimed
    claim(key, rules, node, now, timings)  create-if-absent: a provisional record for `node`;
                                           returns the live record, ours or a winner's
                                           (compare its rules: a loser may be a mismatch)
    rebind(key, rules, expected, node, now, epoch, count)
                                           compare-and-set the node: only if the live record
                                           has `rules`, still points at `expected` and (unless
                                           `epoch` is None) is at `epoch`; epoch += 1,
                                           node_requests = 1 if `count` (the moving request was
                                           counted on arrival) else 0; returns the live record
                                           after the step (None: gone)
    record(key, rules, node, now, timings) one request reached `node`: requests += 1,
                                           last_used = now, node_requests += 1 if `node` is
                                           the record's node; creates the session if absent
                                           (with `timings`);
                                           None (and no write) if the live record has other
                                           rules
    release(key, node)                     drop the record if it is still provisional and
                                           still points at `node` (a failed first request)
    refund(key, rules, node, now, epoch, used, previous)
                                           a request counted by `touch` reached no node: give
                                           its count back (requests -= 1; node_requests -= 1
                                           while the record is still on (node, epoch)) and, if
                                           no request touched it since (last_used == used),
                                           last_used = previous: the idle expiry counts from the
                                           last request that reached a node again. previous 0:
                                           the request claimed the session in `touch`; it is
                                           dropped if no other request counted or touched it
                                           since, else their count and last_used stand
    delete(key)                            end a session (admin)
    list(package_id, now)                  live, non-provisional records of a package
    expire(now)                            reclaim expired records (Redis: TTL does it)

A Redis implementation: one hash per session under `eg:s:{package}:{session}` written with
`PEXPIREAT` (at the record's `expires`) in the same script as the write, plus a sorted set
`eg:sp:{package}` of session ids scored by expiry for `list` (pruned with
`ZREMRANGEBYSCORE` inside `list`). Scripts: `claim` "HGETALL; if live return it; else
HSET + PEXPIREAT + ZADD"; `rebind` "if rules and node match then HSET node, assigned,
node_requests=0"; `record` "HINCRBY requests ..., PEXPIREAT, ZADD". Each is one script,
so two gateways racing on a session id see one winner.
Timestamps cross into Lua as strings with fixed decimals (doubles hold epoch microseconds).
"""

from __future__ import annotations

import heapq
import itertools
import threading
from dataclasses import dataclass, replace
from typing import Final, NamedTuple, Protocol


@dataclass(frozen=True, slots=True)
class SessionTimings:
    """Per-session overrides in seconds; None: the defaults (see the module docstring)."""

    lifetime: int | None = None  # the session ends this long after it began
    idle: int | None = None  # idle expiry instead of the store's idle_timeout
    hold: int | None = None  # node failures within this long of `assigned` keep the node


NO_TIMINGS: Final = SessionTimings()


class SessionStoreDown(Exception):
    """A shared session store cannot be reached; the table degrades (routing/sessions.py)."""


class SessionKey(NamedTuple):
    """A named tuple, not a dataclass: it keys the records' dicts on every session request,
    and a tuple's hash and equality are C code (a dataclass's generated `__hash__` builds a
    tuple of its fields each time it is asked)."""

    package_id: str
    session_id: str


@dataclass(frozen=True, slots=True)
class SessionRecord:
    key: SessionKey
    rules: str  # the canonical rules, locked when the id was claimed
    node_id: str
    created: float
    assigned: float  # when node_id took over
    last_used: float  # the last request that reached a node (claim time while provisional)
    requests: int  # requests that reached a node; 0: provisional
    node_requests: int  # of those, on node_id since `assigned`
    timings: SessionTimings = NO_TIMINGS
    epoch: int = 0  # node changes so far: `rebind` compares (node_id, epoch)

    @property
    def provisional(self) -> bool:
        return self.requests == 0

    def expires(self, idle_timeout: float) -> float:
        """The first instant at which the record is gone."""
        timings = self.timings
        idle = timings.idle if timings.idle is not None else idle_timeout
        if timings.lifetime is None:
            return self.last_used + idle
        return min(self.last_used + idle, self.created + timings.lifetime)

    def held(self, now: float) -> bool:
        """Within its bindttl: a failing node is kept (retried), not replaced."""
        hold = self.timings.hold
        return hold is not None and not self.provisional and now < self.assigned + hold

    # Copies for the steps every session request takes, constructed directly:
    # `dataclasses.replace` looks the fields up each call, about five times the cost.
    def used(self, now: float, node_requests: int) -> SessionRecord:
        """Another request reached a node at `now`; `node_requests`: the new count on it."""
        return SessionRecord(
            self.key, self.rules, self.node_id, self.created, self.assigned, now,
            self.requests + 1, node_requests, self.timings, self.epoch,
        )  # fmt: skip

    def on_node(self, node_requests: int) -> SessionRecord:
        """The same record with another count of requests on its node."""
        return SessionRecord(
            self.key, self.rules, self.node_id, self.created, self.assigned, self.last_used,
            self.requests, node_requests, self.timings, self.epoch,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Touch:
    """What `touch` did: the live record after it (None: none, nothing written), the store's
    time of the step, and whether this request was counted (then `previous` is the
    `last_used` it replaced, for `refund`) or `claimed` the session (counted too; `previous`
    is 0: a refund then finds the record expired and drops it, since it lived on this
    request alone)."""

    record: SessionRecord | None
    now: float
    counted: bool = False
    previous: float = 0.0
    claimed: bool = False


class SessionStore(Protocol):
    """Session records; every method is one atomic step (see the module docstring).

    Coroutines, so that a networked store never blocks the event loop; `release` and `refund`
    are synchronous and never block or raise, because they run in `finally` under
    cancellation (a networked store sends them in the background, like `Counters.release`).
    """

    @property
    def idle_timeout(self) -> float: ...
    # True: every step is a network round trip (Redis), so the router selects a first
    # request's candidate before `touch` and a new session is claimed in that one step
    @property
    def remote(self) -> bool: ...
    async def get(self, key: SessionKey, now: float) -> SessionRecord | None: ...
    async def touch(
        self,
        key: SessionKey,
        rules: str,
        now: float,
        node_id: str | None = None,
        timings: SessionTimings = NO_TIMINGS,
    ) -> Touch: ...
    async def claim(
        self,
        key: SessionKey,
        rules: str,
        node_id: str,
        now: float,
        timings: SessionTimings = NO_TIMINGS,
    ) -> SessionRecord: ...
    async def rebind(
        self,
        key: SessionKey,
        rules: str,
        expected: str,
        node_id: str,
        now: float,
        *,
        epoch: int | None = None,
        count: bool = False,
    ) -> SessionRecord | None: ...
    async def record(
        self,
        key: SessionKey,
        rules: str,
        node_id: str,
        now: float,
        timings: SessionTimings = NO_TIMINGS,
    ) -> SessionRecord | None: ...
    def release(self, key: SessionKey, node_id: str) -> None: ...
    def refund(
        self,
        key: SessionKey,
        rules: str,
        node_id: str,
        now: float,
        *,
        epoch: int,
        used: float,
        previous: float,
    ) -> None: ...
    async def delete(self, key: SessionKey) -> bool: ...
    async def list(self, package_id: str, now: float) -> list[SessionRecord]: ...
    async def expire(self, now: float) -> int: ...


class MemorySessionStore:
    """The embedded default: dicts behind one lock (the admin API may call from a thread).
    Its coroutines never suspend, so each is atomic on the event loop as well.

    Expiry is a heap of (deadline, key) entries, lazily kept: a record gets one entry when
    it is created; its real expiry only moves later (`last_used` grows, timings are fixed),
    so `expire` pops due entries and either drops the record or re-files it at its current
    expiry. `_due` names each record's one current entry; others are stale and skipped.
    """

    def __init__(self, idle_timeout: float) -> None:
        if idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        self._idle = idle_timeout
        self._records: dict[SessionKey, SessionRecord] = {}
        self._heap: list[tuple[float, int, SessionKey]] = []
        self._due: dict[SessionKey, int] = {}
        self._seq = itertools.count()
        self._by_package: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    @property
    def idle_timeout(self) -> float:
        return self._idle

    @property
    def remote(self) -> bool:
        return False  # in process: a step costs no round trip

    def __len__(self) -> int:
        """Stored records, expired ones not yet reclaimed included."""
        return len(self._records)

    async def get(self, key: SessionKey, now: float) -> SessionRecord | None:
        with self._lock:
            return self._live(key, now)

    async def touch(
        self,
        key: SessionKey,
        rules: str,
        now: float,
        node_id: str | None = None,
        timings: SessionTimings = NO_TIMINGS,
    ) -> Touch:
        with self._lock:
            current = self._live(key, now)
            if current is None and node_id is not None:
                claimed = SessionRecord(key, rules, node_id, now, now, now, 1, 1, timings)
                self._put(claimed)
                return Touch(claimed, now, counted=True, claimed=True)
            if current is None or current.rules != rules or current.provisional:
                return Touch(current, now)
            record = current.used(now, current.node_requests + 1)
            self._put(record)
            return Touch(record, now, counted=True, previous=current.last_used)

    async def claim(
        self,
        key: SessionKey,
        rules: str,
        node_id: str,
        now: float,
        timings: SessionTimings = NO_TIMINGS,
    ) -> SessionRecord:
        with self._lock:
            current = self._live(key, now)
            if current is not None:
                return current
            record = SessionRecord(key, rules, node_id, now, now, now, 0, 0, timings)
            self._put(record)
            return record

    async def rebind(
        self,
        key: SessionKey,
        rules: str,
        expected: str,
        node_id: str,
        now: float,
        *,
        epoch: int | None = None,
        count: bool = False,
    ) -> SessionRecord | None:
        with self._lock:
            current = self._live(key, now)
            if (
                current is None
                or current.rules != rules
                or current.node_id != expected
                or (epoch is not None and current.epoch != epoch)
                or expected == node_id
            ):
                return current
            record = replace(
                current,
                node_id=node_id,
                assigned=now,
                node_requests=int(count),
                epoch=current.epoch + 1,
            )
            self._put(record)
            return record

    async def record(
        self,
        key: SessionKey,
        rules: str,
        node_id: str,
        now: float,
        timings: SessionTimings = NO_TIMINGS,
    ) -> SessionRecord | None:
        with self._lock:
            current = self._live(key, now)
            if current is None:
                record = SessionRecord(key, rules, node_id, now, now, now, 1, 1, timings)
            elif current.rules != rules:
                return None
            else:
                same = current.node_id == node_id
                record = current.used(now, current.node_requests + same)
            self._put(record)
            return record

    def release(self, key: SessionKey, node_id: str) -> None:
        with self._lock:
            current = self._records.get(key)
            if current is not None and current.provisional and current.node_id == node_id:
                self._drop(key)

    def refund(
        self,
        key: SessionKey,
        rules: str,
        node_id: str,
        now: float,
        *,
        epoch: int,
        used: float,
        previous: float,
    ) -> None:
        with self._lock:
            current = self._records.get(key)
            if current is None or current.rules != rules or current.provisional:
                return
            same = current.node_id == node_id and current.epoch == epoch
            untouched = current.last_used == used  # no request touched it since
            last_used = previous if untouched else current.last_used
            if previous == 0.0:  # the request claimed the session (`touch` with a node)
                if current.requests <= 1 and untouched:
                    self._drop(key)  # it lived on this request alone
                    return
                last_used = current.last_used  # others came meanwhile: theirs stands
            requests = max(1, current.requests - 1)
            record = replace(
                current,
                requests=requests,
                # a count it moved to a new node (replaced a claim) leaves with it
                node_requests=min(requests, max(0, current.node_requests - same)),
                last_used=last_used,
            )
            if now >= record.expires(self._idle):
                self._drop(key)  # it lived on this request alone
                return
            # last_used may move back: re-file the expiry (the heap assumes it only grows)
            self._records[key] = record
            self._file(key, record.expires(self._idle))

    async def delete(self, key: SessionKey) -> bool:
        with self._lock:
            if key not in self._records:
                return False
            self._drop(key)
            return True

    async def list(self, package_id: str, now: float) -> list[SessionRecord]:
        with self._lock:
            records = (
                self._live(SessionKey(package_id, sid), now)
                for sid in list(self._by_package.get(package_id, ()))
            )
            found = [r for r in records if r is not None and not r.provisional]
        found.sort(key=lambda r: (r.created, r.key.session_id))
        return found

    async def expire(self, now: float) -> int:
        with self._lock:
            dropped = 0
            heap = self._heap
            while heap and heap[0][0] <= now:
                _, seq, key = heapq.heappop(heap)
                if self._due.get(key) != seq:
                    continue  # stale: the record was dropped (and maybe made again)
                record = self._records[key]
                deadline = record.expires(self._idle)
                if deadline <= now:
                    self._drop(key)
                    dropped += 1
                else:
                    self._file(key, deadline)
            return dropped

    # -- under the lock -----------------------------------------------------------------------

    def _live(self, key: SessionKey, now: float) -> SessionRecord | None:
        record = self._records.get(key)
        if record is None:
            return None
        if now >= record.expires(self._idle):
            self._drop(key)  # what a Redis TTL would have done already
            return None
        return record

    def _put(self, record: SessionRecord) -> None:
        key = record.key
        self._records[key] = record
        if key not in self._due:
            self._file(key, record.expires(self._idle))
        self._by_package.setdefault(key.package_id, set()).add(key.session_id)

    def _file(self, key: SessionKey, deadline: float) -> None:
        seq = next(self._seq)
        self._due[key] = seq
        heapq.heappush(self._heap, (deadline, seq, key))

    def _drop(self, key: SessionKey) -> None:
        del self._records[key]
        del self._due[key]
        ids = self._by_package.get(key.package_id)
        if ids is not None:
            ids.discard(key.session_id)
            if not ids:
                del self._by_package[key.package_id]
