"""`AgentDirectory`: which gateway instance holds each agent's connection, kept in Redis.

Agents dial whichever hub a load balancer gives them; a request admitted anywhere must reach
the instance holding its agent (cluster/interlink.py carries it there). The directory is the
map, one hash per agent:

    {prefix}agent:{id} = {inst: instance id, addr: its interlink host:port, epoch: n, ip, attrs}

- `claim` when an agent registers here: the record names this instance and a new *epoch*
  (nanoseconds at registration), expiring after `ttl` unless refreshed.
- `refresh` every `ttl/3` for every agent still connected here: one pipeline of `PEXPIRE`s
  (and a re-write of records that vanished, e.g. while Redis was away).
- `release` when the connection ends: one script deletes the record only while it still names
  this instance *and* this epoch, so a late release never erases the agent's newer connection
  to another instance.
- A dead instance stops refreshing: its agents leave the directory within `ttl`.

Nothing here ever marks a node offline: the hub of the instance that held the connection does,
and only when the directory does not show the agent held elsewhere (`held_elsewhere`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

log = logging.getLogger("exitgate.cluster")

_RELEASE = """
local f = redis.call('HMGET', KEYS[1], 'inst', 'epoch')
if f[1] == ARGV[1] and f[2] == ARGV[2] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Holder:
    instance: str
    addr: str  # the holder's interlink host:port
    epoch: int


class AgentDirectory:
    def __init__(
        self, redis: Redis, instance: str, addr: str, *, prefix: str = "eg:", ttl: float = 6.0
    ) -> None:
        self.redis = redis
        self.instance = instance
        self.addr = addr
        self.prefix = prefix
        self.ttl_ms = int(ttl * 1000)
        self.epochs: dict[str, int] = {}  # agents held here → their epoch
        self._records: dict[str, dict[Any, Any]] = {}  # Any: redis-py's invariant Mapping
        self._release = redis.register_script(_RELEASE)

    def key(self, agent_id: str) -> str:
        return f"{self.prefix}agent:{agent_id}"

    async def claim(self, agent_id: str, ip: str, attrs: dict[str, Any]) -> int:
        epoch = time.time_ns()
        record: dict[Any, Any] = {
            "inst": self.instance, "addr": self.addr, "epoch": str(epoch), "ip": ip,
            "attrs": json.dumps(attrs, separators=(",", ":")),
        }
        self.epochs[agent_id] = epoch
        self._records[agent_id] = record
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.key(agent_id), mapping=record)
            pipe.pexpire(self.key(agent_id), self.ttl_ms)
            await pipe.execute()
        return epoch

    async def release(self, agent_id: str, epoch: int) -> bool:
        if self.epochs.get(agent_id) == epoch:
            del self.epochs[agent_id]
            self._records.pop(agent_id, None)
        deleted: Any = await self._release(
            keys=[self.key(agent_id)], args=[self.instance, str(epoch)]
        )
        return int(deleted) == 1

    async def refresh(self, agent_ids: Iterable[str]) -> int:
        """Extend the records of agents held here; re-write any that vanished."""
        ids = [a for a in agent_ids if a in self._records]
        if not ids:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for agent_id in ids:
                pipe.pexpire(self.key(agent_id), self.ttl_ms)
            alive = await pipe.execute()
        missing = [a for a, ok in zip(ids, alive, strict=True) if not ok]
        if missing:
            async with self.redis.pipeline(transaction=False) as pipe:
                for agent_id in missing:
                    pipe.hset(self.key(agent_id), mapping=self._records[agent_id])
                    pipe.pexpire(self.key(agent_id), self.ttl_ms)
                await pipe.execute()
        return len(ids)

    async def lookup(self, agent_id: str) -> Holder | None:
        found = await self.redis.hmget(self.key(agent_id), ["inst", "addr", "epoch"])
        if not found or found[0] is None:
            return None
        inst, addr, epoch = (v.decode() if isinstance(v, bytes) else str(v) for v in found)
        return Holder(inst, addr, int(epoch))

    async def unheld(self, agent_ids: list[str]) -> list[str]:
        """Those of `agent_ids` that no instance holds now."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for agent_id in agent_ids:
                pipe.exists(self.key(agent_id))
            found = await pipe.execute()
        return [a for a, n in zip(agent_ids, found, strict=True) if not n]

    async def held_elsewhere(self, agent_id: str) -> bool:
        """Does another live instance hold this agent? (False when unsure: Redis down.)"""
        try:
            holder = await self.lookup(agent_id)
        except Exception as exc:
            log.warning("agent directory unreachable: %s", exc)
            return False
        return holder is not None and holder.instance != self.instance


__all__ = ["AgentDirectory", "Holder"]
