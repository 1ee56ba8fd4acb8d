"""`AgentBook`: keeps the agent nodes in the store (and so the registry) in step with the hub.

An agent's node is written through `AccountService`, like any admin change, so it is durable,
listed by `GET /v1/nodes`, and reaches the routing index by the registry's listeners.

Writes for one agent are serialised and *level-triggered*: `sync(agent_id)` does not say what
to write, it asks for the store to be brought to the current truth (`desired(agent_id)`:
the attributes of a live, non-draining connection, or None). A sync requested while one runs
for the same id re-runs it once after; so a flapping agent (disconnect, reconnect, disconnect)
can never leave a stale "online" behind an "offline" that was written out of order, and a
burst of changes costs at most two writes.

State rules:
- live → `online` with the registered attributes and address; gone or draining → `offline`;
- an admin's `draining` is kept across reconnects (only an admin lifts it), so an operator can
  take an agent out of rotation without stopping it;
- an id that names a direct or upstream node is never touched (the hub refuses it earlier).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from exitgate.model import NodeAttrs, NodeKind, NodeState
from exitgate.registry import Registry
from exitgate.services import AccountService
from exitgate.store.base import NewNode, NodeUpdate
from exitgate.tasks import spawn

log = logging.getLogger("exitgate.hub")


@dataclass(frozen=True, slots=True)
class Wanted:
    attrs: NodeAttrs
    ip: str


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
        self._running: dict[str, asyncio.Task[None]] = {}
        # cluster: does another instance hold the agent now? then its "offline" is not ours
        self.held_elsewhere: Callable[[str], Awaitable[bool]] | None = None
        self._dirty: set[str] = set()

    def sync(self, agent_id: str) -> None:
        """Bring agent `agent_id`'s node to the current truth, in the background."""
        if agent_id in self._running:
            self._dirty.add(agent_id)
            return
        task = spawn(self._run(agent_id), f"hub-sync-{agent_id}")
        self._running[agent_id] = task

    def sweep(self) -> None:
        """Agent nodes the registry believes online but that have no connection here."""
        for node in list(self.registry.nodes.values()):
            online = node.kind is NodeKind.AGENT and node.state is NodeState.ONLINE
            if online and self.desired(node.id) is None:
                self.sync(node.id)

    async def settle(self, grace: float = 10.0) -> None:
        """Wait for the writes in flight (shutdown, tests)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                while self._running:
                    await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def _run(self, agent_id: str) -> None:
        try:
            while True:
                self._dirty.discard(agent_id)
                try:
                    await self._write(agent_id)
                except Exception:
                    log.exception("could not record the state of agent %s", agent_id)
                if agent_id not in self._dirty:
                    return
        finally:
            self._running.pop(agent_id, None)

    async def _write(self, agent_id: str) -> None:
        want = self.desired(agent_id)
        node = self.registry.node(agent_id)
        if node is not None and node.kind is not NodeKind.AGENT:
            return
        if want is None:
            if node is not None and node.state is NodeState.ONLINE:
                if self.held_elsewhere is not None and await self.held_elsewhere(agent_id):
                    return  # the agent moved to another instance, which keeps it online
                await self.service.update_node(agent_id, NodeUpdate(state=NodeState.OFFLINE))
            return
        if node is None:
            new = NewNode(
                kind=NodeKind.AGENT, attrs=want.attrs, state=NodeState.ONLINE, ip=want.ip,
                id=agent_id,
            )
            try:
                await self.service.create_node(new)
                return
            except Exception:
                # Known to the store but not to this registry (another instance wrote it):
                # fall through to an update.
                log.debug("agent %s: create failed, updating instead", agent_id, exc_info=True)
        state = node.state if node is not None and node.state is NodeState.DRAINING else (
            NodeState.ONLINE
        )
        if node is not None and (node.attrs, node.ip, node.state) == (want.attrs, want.ip, state):
            return
        a = want.attrs
        await self.service.update_node(
            agent_id,
            NodeUpdate(
                state=state, country=a.country, region=a.region, city=a.city, isp=a.isp,
                asn=a.asn, network=a.network, ip=want.ip,
            ),
        )
