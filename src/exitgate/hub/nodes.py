"""`AgentBook`: keeps the agent nodes in the store (and so the registry) in step with the hub.

An agent's node is written through `AccountService`, like any admin change, so it is durable,
listed by `GET /v1/nodes`, and reaches the routing index by the registry's listeners.

Writes are *level-triggered* and *batched*: `sync(agent_id)` does not say what to write, it
marks the id dirty; one writer task takes every dirty id (after `COALESCE` seconds, so a burst
of registrations lands in one batch), compares each agent's current truth (`desired`: the
attributes of a live, non-draining connection, or None) with its node (`decide`), and writes
all the changes in one store transaction (`AccountService.sync_agent_nodes`), then puts the
stored nodes in the registry. Ids marked while a batch is written go in the next one. So:
- a node becomes routable only once its write is stored;
- a flapping agent (connect, disconnect, connect) costs at most two writes and can never
  leave a stale "online" behind an "offline" written out of order: the last batch writes
  whatever is true when it is taken;
- registration is no longer one store round trip per agent under one lock: 10,000 agents
  after a restart take a few batches (bench/CLUSTER.md).
A failed batch is retried (its ids stay dirty) with a growing delay, up to `RETRY_MAX`.

State rules (`decide`):
- live → `online` with the registered attributes and address; gone or draining → `offline`;
- an admin's `draining` is kept across reconnects (only an admin lifts it), so an operator can
  take an agent out of rotation without stopping it;
- an id that names a direct or upstream node is never touched (the hub refuses it earlier).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from exitgate.model import Node, NodeAttrs, NodeKind, NodeState
from exitgate.registry import Registry
from exitgate.services import AccountService
from exitgate.store.base import NewNode
from exitgate.tasks import spawn

log = logging.getLogger("exitgate.hub")


@dataclass(frozen=True, slots=True)
class Wanted:
    attrs: NodeAttrs
    ip: str


COALESCE: Final = 0.005  # seconds a batch waits for more ids after the first
MAX_BATCH: Final = 2000  # ids per store transaction
RETRY_MIN: Final = 0.5
RETRY_MAX: Final = 30.0


class Change(enum.Enum):
    NONE = "none"
    ONLINE = "online"  # upsert with the wanted attributes (an admin's draining kept)
    OFFLINE = "offline"  # offline, unless another instance holds the agent now
    NEW_OFFLINE = "new offline"  # gone before its first write: recorded, offline


def decide(want: Wanted | None, node: Node | None, first: Wanted | None = None) -> Change:
    """What agent `node` (None: not in the registry) needs for the hub's truth `want`;
    `first`: what it registered with, when it registered here since its last write."""
    if node is not None and node.kind is not NodeKind.AGENT:
        return Change.NONE
    if want is None:
        if node is None:
            return Change.NONE if first is None else Change.NEW_OFFLINE
        return Change.OFFLINE if node.state is NodeState.ONLINE else Change.NONE
    if node is None:
        return Change.ONLINE
    state = NodeState.DRAINING if node.state is NodeState.DRAINING else NodeState.ONLINE
    if (node.attrs, node.ip, node.state) == (want.attrs, want.ip, state):
        return Change.NONE
    return Change.ONLINE


class AgentBook:
    def __init__(
        self,
        service: AccountService,
        registry: Registry,
        desired: Callable[[str], Wanted | None],
    ) -> None:
        self.service = service
        self.registry = registry
        self.desired = desired
        # cluster: which of these agents does another instance hold now? their "offline" is
        # not ours to write
        self.held_elsewhere: Callable[[list[str]], Awaitable[set[str]]] | None = None
        self._dirty: dict[str, None] = {}  # ids to bring up to date, in arrival order
        self._first: dict[str, Wanted] = {}  # registered here since their last write
        self._task: asyncio.Task[None] | None = None
        self.batches = 0  # store transactions written (bench, tests)

    def sync(self, agent_id: str, registered: Wanted | None = None) -> None:
        """Bring agent `agent_id`'s node to the current truth, in the background.
        `registered`: it has just registered with these (an agent gone before its first
        write is still recorded, offline)."""
        if registered is not None:
            self._first[agent_id] = registered
        self._dirty[agent_id] = None
        if self._task is None:
            self._task = spawn(self._run(), "hub-agent-writes")

    def sweep(self) -> None:
        """Agent nodes the registry believes online but that have no connection here."""
        for node in list(self.registry.nodes.values()):
            online = node.kind is NodeKind.AGENT and node.state is NodeState.ONLINE
            if online and self.desired(node.id) is None:
                self.sync(node.id)

    async def settle(self, grace: float = 10.0) -> None:
        """Wait for the dirty ids to be written (shutdown, tests); then stop retrying."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                while self._task is not None:
                    await asyncio.shield(self._task)
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        delay = RETRY_MIN
        try:
            while self._dirty:
                await asyncio.sleep(COALESCE)
                batch = list(itertools.islice(self._dirty, MAX_BATCH))
                for agent_id in batch:
                    del self._dirty[agent_id]
                try:
                    await self._write(batch)
                except Exception as exc:
                    log.warning(
                        "could not record the state of %d agent(s), retrying in %.1f s: %s",
                        len(batch), delay, exc,
                    )
                    for agent_id in batch:
                        self._dirty.setdefault(agent_id)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)
                else:
                    delay = RETRY_MIN
        finally:
            self._task = None

    async def _write(self, batch: list[str]) -> None:
        upsert: list[NewNode] = []
        offline: list[str] = []
        new_offline: list[NewNode] = []
        for agent_id in batch:
            want = self.desired(agent_id)
            first = self._first.get(agent_id)
            change = decide(want, self.registry.node(agent_id), first)
            if change is Change.ONLINE and want is not None:
                upsert.append(_node(agent_id, want, NodeState.ONLINE))
            elif change is Change.OFFLINE:
                offline.append(agent_id)
            elif change is Change.NEW_OFFLINE and first is not None:
                new_offline.append(_node(agent_id, first, NodeState.OFFLINE))
        if (offline or new_offline) and self.held_elsewhere is not None:
            # moved to another instance meanwhile: that instance keeps it online
            elsewhere = await self.held_elsewhere([*offline, *(n.id for n in new_offline)])
            offline = [a for a in offline if a not in elsewhere]
            new_offline = [n for n in new_offline if n.id not in elsewhere]
        upsert += new_offline
        if upsert or offline:
            await self.service.sync_agent_nodes(upsert, offline)
            self.batches += 1
        for agent_id in batch:
            self._first.pop(agent_id, None)


def _node(agent_id: str, want: Wanted, state: NodeState) -> NewNode:
    return NewNode(kind=NodeKind.AGENT, attrs=want.attrs, state=state, ip=want.ip, id=agent_id)
