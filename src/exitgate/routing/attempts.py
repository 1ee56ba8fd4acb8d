"""The failure policy of one request (SPEC 5): a state machine over node ids. Pure.

`Attempts` starts with `TrySame(node)` (the session's node) or `TryNew` (select one), and
after every `failed(node_id, detail)` or `no_candidate()` its `next()` says what to do:

    policy                  after a node failure                       gives up with
    onerror-replace (dflt)  TryNew, at most `max_replacements` times   NODE_UNAVAILABLE
    onerror-fail            give up                                    NODE_UNAVAILABLE
    onerror-retry_N         TrySame N times, then TryNew once          RETRIES_EXHAUSTED
    bind-node (bound)       TrySame N times (retry_N, else 0)          BOUND_NODE_FAILED

`TryNew` finding nothing (`no_candidate`) gives up at once: if no node was tried,
NODE_NOT_FOUND ("No nodes matching country=us"), or NODE_UNAVAILABLE when matching nodes
exist but all of them are cooling down; else the policy's code. Only node failures are
reported here; a target failure ends the request with its own error and no policy runs. The
details carry the last node failure, e.g. "Node failed after 2 retries and its replacement
failed too: Upstream proxy unreachable: connection refused".

Decisions: `bind-node` binds once the session exists; the first request of a new bind-node
session has nothing to bind yet and follows its onerror mode, so a dead first pick does not
poison a fresh session id. With `bind-node` and `onerror-fail` the bound session answers
BOUND_NODE_FAILED (the more specific code). Replacements resemble the first node of the
request (the session's node) when `prefer-lookalike` is set.

`routing.failover` composes this policy with the node index, health, sessions and
selection into the per-request routing loop.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from exitgate.errors import Code, GatewayError
from exitgate.routing.select import Filters
from exitgate.rules import OnErrorMode, Rules

MAX_REPLACEMENTS = 3


@dataclass(frozen=True, slots=True)
class TrySame:
    node_id: str


@dataclass(frozen=True, slots=True)
class TryNew:
    exclude: frozenset[str]  # nodes this request already saw fail
    like: str | None  # prefer-lookalike: the node to resemble


@dataclass(frozen=True, slots=True)
class Fail:
    code: Code
    detail: str

    def error(self) -> GatewayError:
        return GatewayError(self.code, self.detail)


Action = TrySame | TryNew | Fail


class Policy(enum.Enum):
    REPLACE = "replace"
    FAIL = "fail"
    RETRY = "retry"
    BIND = "bind"


_POLICY = {mode: Policy(mode.value) for mode in OnErrorMode}
# Every sessionless request starts here: one shared value rather than one made per request.
_FIRST_NEW: Final = TryNew(frozenset(), None)


class Attempts:
    """The failure policy of one request, over node ids (see the module docstring)."""

    def __init__(
        self,
        rules: Rules,
        start: str | None,
        *,
        bound: bool = False,
        filters: Filters | None = None,
        max_replacements: int = MAX_REPLACEMENTS,
        held: bool = False,
    ) -> None:
        mode = rules.onerror.mode
        if bound and (rules.bind_node or held) and start is not None:
            self.policy = Policy.BIND
        else:
            self.policy = _POLICY[mode]
        self.retries = rules.onerror.retries if mode is OnErrorMode.RETRY else 0
        if held and not rules.bind_node:
            self.retries = max(self.retries, 1)  # bindttl: "errors keep the node / retry"
        self._lookalike = rules.prefer_lookalike
        self._filters = filters or Filters()  # described only in a failure's detail
        self._max_replacements = max_replacements
        self._node = start  # the node the last action was about
        self._first = start  # what replacements resemble
        self._tried: list[str] = []
        self._here = 0  # consecutive failures on _node
        self._replacements = 0  # TryNew actions issued after a failure
        self._last = ""  # the last failure detail
        self._action: Action = TrySame(start) if start is not None else _FIRST_NEW

    def next(self) -> Action:
        return self._action

    @property
    def replaced(self) -> bool:
        """The current node is a replacement for one that failed in this request."""
        return self._replacements > 0

    @property
    def tried(self) -> frozenset[str]:
        return frozenset(self._tried)

    def failed(self, node_id: str, detail: str) -> None:
        """The node of the last action failed; `node_id` is the node actually dialed."""
        action = self._action
        if isinstance(action, Fail):
            raise RuntimeError("no attempt in progress")
        if isinstance(action, TryNew) or node_id != self._node:
            self._node, self._here = node_id, 0
            if self._first is None:
                self._first = node_id
        self._here += 1
        if node_id not in self._tried:
            self._tried.append(node_id)
        self._last = detail
        self._action = self._after_failure(node_id, detail)

    def no_candidate(self, *, cooling: bool = False) -> None:
        """The last TryNew found no node to try; `cooling`: matching nodes exist, but every
        one of them is cooling down after failures (NODE_UNAVAILABLE, not NODE_NOT_FOUND)."""
        if not isinstance(self._action, TryNew):
            raise RuntimeError("no_candidate answers a TryNew only")
        if not self._tried and cooling:
            self._action = Fail(
                Code.NODE_UNAVAILABLE,
                f"Every node matching {self._filters.describe()} is cooling down after failures",
            )
        elif not self._tried:
            self._action = Fail(
                Code.NODE_NOT_FOUND, f"No nodes matching {self._filters.describe()}"
            )
        elif self.policy is Policy.RETRY:
            self._action = Fail(
                Code.RETRIES_EXHAUSTED,
                f"Node failed after {_times(self.retries)} and no replacement node is "
                f"available: {self._last}",
            )
        else:
            self._action = Fail(
                Code.NODE_UNAVAILABLE, f"{self._last}; no other matching node available"
            )

    def _after_failure(self, node_id: str, detail: str) -> Action:
        match self.policy:
            case Policy.BIND:
                if self._here <= self.retries:
                    return TrySame(node_id)
                if self.retries == 0:
                    return Fail(Code.BOUND_NODE_FAILED, f"Bound node failed: {detail}")
                return Fail(
                    Code.BOUND_NODE_FAILED,
                    f"Bound node failed after {_times(self.retries)}: {detail}",
                )
            case Policy.FAIL:
                return Fail(Code.NODE_UNAVAILABLE, detail)
            case Policy.RETRY:
                if self._replacements == 0 and self._here <= self.retries:
                    return TrySame(node_id)
                if self._replacements == 0:
                    return self._replace()
                return Fail(
                    Code.RETRIES_EXHAUSTED,
                    f"Node failed after {_times(self.retries)} and its replacement failed "
                    f"too: {detail}",
                )
            case Policy.REPLACE:
                if self._replacements < self._max_replacements:
                    return self._replace()
                return Fail(Code.NODE_UNAVAILABLE, detail)

    def _replace(self) -> TryNew:
        self._replacements += 1
        return TryNew(frozenset(self._tried), self._first if self._lookalike else None)


def _times(retries: int) -> str:
    return "1 retry" if retries == 1 else f"{retries} retries"
