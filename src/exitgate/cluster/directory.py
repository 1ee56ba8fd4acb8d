"""`AgentDirectory`: which gateway instance holds each agent's connection, kept in Redis.

Agents dial whichever hub a load balancer gives them; a request admitted anywhere must reach
the instance holding its agent (cluster/interlink.py carries it there). The directory is the
map: one hash per agent, and one heartbeat key per instance that vouches for all of them:

    {prefix}agent:{id}   = {inst: instance id, addr: its interlink host:port, epoch: n, ip, attrs}
    {prefix}inst:{inst}  = addr, expiring after `ttl` unless refreshed

- `claim` when an agent registers here: the record names this instance and a new *epoch*
  (nanoseconds at registration). Claims (and releases) arriving together go to Redis in one
  pipeline (`flush`), and each pipeline also sets the heartbeat, so a record never names an
  instance without one.
- `heartbeat` every `ttl/3`: one `SET ... PX ttl` of this instance's key, whatever the number
  of agents (it used to be one command per agent: 10,000 agents, 5,000 commands a second).
  When the key had vanished (Redis restarted, or this instance was stalled past `ttl` and
  the others dropped its records), every record held here is written again (never over a
  newer claim by another instance).
- `release` when the connection ends: one script deletes the record only while it still names
  this instance *and* this epoch, so a late release never erases the agent's newer connection
  to another instance.
- A record counts only while its instance's heartbeat key exists (`lookup`, `unheld` check
  both in one script, and delete the records of dead instances as they find them). A dead
  instance stops its heartbeat: its agents leave the directory within `ttl`. Records also
  carry a long TTL (`RECORD_TTL`, renewed at half-life), so nothing outlives a cluster that
  stopped for good.

Nothing here ever marks a node offline: the hub of the instance that held the connection does,
and only when the directory does not show the agent held elsewhere (`held_elsewhere`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from redis.asyncio import Redis

log = logging.getLogger("exitgate.cluster")

RECORD_TTL: Final = 86_400.0  # seconds: the backstop for records nobody looks up again
BATCH: Final = 1000  # commands per pipeline when many records are written at once

_RELEASE = """
local f = redis.call('HMGET', KEYS[1], 'inst', 'epoch')
if f[1] == ARGV[1] and f[2] == ARGV[2] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: records; ARGV[1]: key prefix. For each record: {inst, addr, epoch} while its instance's
# heartbeat exists; false when there is no record or it names a dead instance (then deleted).
_LOOKUP = """
local out = {}
for i, key in ipairs(KEYS) do
  local f = redis.call('HMGET', key, 'inst', 'addr', 'epoch')
  if f[1] and redis.call('EXISTS', ARGV[1] .. 'inst:' .. f[1]) == 1 then
    out[i] = f
  else
    if f[1] then redis.call('DEL', key) end
    out[i] = false
  end
end
return out
"""

# KEYS[1]: the heartbeat key; ARGV: addr, ttl ms. 1 if the key was there before, else 0.
_HEARTBEAT = """
local had = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return had
"""

# KEYS[1]: a record; ARGV: inst, epoch, record ttl ms, then field/value pairs. Writes the
# record unless another instance's claim is there (its epoch is newer: the agent moved).
_RECLAIM = """
local inst = redis.call('HGET', KEYS[1], 'inst')
if inst and inst ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


@dataclass(frozen=True, slots=True)
class Holder:
    instance: str
    addr: str  # the holder's interlink host:port
    epoch: int


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class AgentDirectory:
    def __init__(
        self, redis: Redis, instance: str, addr: str, *, prefix: str = "eg:", ttl: float = 6.0
    ) -> None:
        self.redis = redis
        self.instance = instance
        self.addr = addr
        self.prefix = prefix
        self.ttl_ms = int(ttl * 1000)
        self.record_ttl_ms = int(max(RECORD_TTL, ttl * 10) * 1000)
        self.epochs: dict[str, int] = {}  # agents held here → their epoch
        self._records: dict[str, dict[Any, Any]] = {}  # Any: redis-py's invariant Mapping
        self._written: dict[str, float] = {}  # agent → when its record's TTL was last set
        self._ops: list[tuple[str, str, int]] = []  # ("claim" | "release", agent, epoch)
        self._release = redis.register_script(_RELEASE)
        self._lookup = redis.register_script(_LOOKUP)
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self._reclaim = redis.register_script(_RECLAIM)

    def key(self, agent_id: str) -> str:
        return f"{self.prefix}agent:{agent_id}"

    @property
    def heartbeat_key(self) -> str:
        return f"{self.prefix}inst:{self.instance}"

    # -- claims and releases, batched -------------------------------------------------------------
    def claim_later(self, agent_id: str, ip: str, attrs: dict[str, Any]) -> int:
        """Record the claim here now (it counts for `epochs` at once) and queue its write
        for the next `flush`; the epoch."""
        epoch = time.time_ns()
        self.epochs[agent_id] = epoch
        self._records[agent_id] = {
            "inst": self.instance, "addr": self.addr, "epoch": str(epoch), "ip": ip,
            "attrs": json.dumps(attrs, separators=(",", ":")),
        }
        self._ops.append(("claim", agent_id, epoch))
        return epoch

    def release_later(self, agent_id: str, epoch: int) -> None:
        if self.epochs.get(agent_id) == epoch:
            del self.epochs[agent_id]
            self._records.pop(agent_id, None)
            self._written.pop(agent_id, None)
        self._ops.append(("release", agent_id, epoch))

    @property
    def pending(self) -> int:
        return len(self._ops)

    async def flush(self) -> int:
        """Send the queued claims and releases, in order, in pipelines of `BATCH`; how many.
        A claim superseded by a later release of the same epoch is skipped."""
        ops, self._ops = self._ops, []
        released = {(a, e) for kind, a, e in ops if kind == "release"}
        done = 0
        for start in range(0, len(ops), BATCH):
            try:
                await self._send(ops[start : start + BATCH], released)
            except BaseException:
                self._ops[:0] = ops[start:]  # kept, in order, for the next flush
                raise
            done += len(ops[start : start + BATCH])
        return done

    async def _send(self, ops: list[tuple[str, str, int]], released: set[tuple[str, int]]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.heartbeat_key, self.addr, px=self.ttl_ms)
            now = time.monotonic()
            for kind, agent_id, epoch in ops:
                key = self.key(agent_id)
                if kind == "release":
                    await self._release(keys=[key], args=[self.instance, str(epoch)], client=pipe)
                elif (agent_id, epoch) not in released and agent_id in self._records:
                    pipe.hset(key, mapping=self._records[agent_id])
                    pipe.pexpire(key, self.record_ttl_ms)
                    self._written[agent_id] = now
            await pipe.execute()

    async def claim(self, agent_id: str, ip: str, attrs: dict[str, Any]) -> int:
        epoch = self.claim_later(agent_id, ip, attrs)
        await self.flush()
        return epoch

    async def release(self, agent_id: str, epoch: int) -> bool:
        if self.epochs.get(agent_id) == epoch:
            del self.epochs[agent_id]
            self._records.pop(agent_id, None)
            self._written.pop(agent_id, None)
        deleted: Any = await self._release(
            keys=[self.key(agent_id)], args=[self.instance, str(epoch)]
        )
        return int(deleted) == 1

    # -- liveness --------------------------------------------------------------------------------
    async def heartbeat(self) -> int:
        """Vouch for every agent held here with one command; re-write the records when the
        heartbeat had lapsed, and renew the records' backstop TTL at half-life. How many
        records were written."""
        had: Any = await self._heartbeat(
            keys=[self.heartbeat_key], args=[self.addr, str(self.ttl_ms)]
        )
        now = time.monotonic()
        if int(had) == 0 and self._records:
            log.warning(
                "agent directory: this instance's heartbeat had lapsed; re-writing %d record(s)",
                len(self._records),
            )
            due = list(self._records)
        else:
            half = self.record_ttl_ms / 2000
            due = [a for a, t in self._written.items() if now - t > half]
        for start in range(0, len(due), BATCH):
            async with self.redis.pipeline(transaction=False) as pipe:
                for agent_id in due[start : start + BATCH]:
                    record = self._records.get(agent_id)
                    if record is None:
                        continue
                    fields = [x for kv in record.items() for x in kv]
                    args = [self.instance, record["epoch"], str(self.record_ttl_ms), *fields]
                    await self._reclaim(keys=[self.key(agent_id)], args=args, client=pipe)
                    self._written[agent_id] = now
                await pipe.execute()
        return len(due)

    # -- reads -----------------------------------------------------------------------------------
    async def holders(self, agent_ids: Sequence[str]) -> list[Holder | None]:
        """The live holder of each agent (None: held by no live instance), one round trip per
        `BATCH` ids."""
        out: list[Holder | None] = []
        for start in range(0, len(agent_ids), BATCH):
            chunk = agent_ids[start : start + BATCH]
            found: Any = await self._lookup(
                keys=[self.key(a) for a in chunk], args=[self.prefix]
            )
            for row in found:
                if not row:
                    out.append(None)
                else:
                    inst, addr, epoch = (_text(v) for v in row)
                    out.append(Holder(inst, addr, int(epoch)))
        return out

    async def lookup(self, agent_id: str) -> Holder | None:
        return (await self.holders([agent_id]))[0]

    async def unheld(self, agent_ids: list[str]) -> list[str]:
        """Those of `agent_ids` that no live instance holds now."""
        found = await self.holders(agent_ids)
        return [a for a, h in zip(agent_ids, found, strict=True) if h is None]

    async def held_elsewhere(self, agent_ids: list[str]) -> set[str]:
        """Those of `agent_ids` another live instance holds (none when unsure: Redis down)."""
        try:
            found = await self.holders(agent_ids)
        except Exception as exc:
            log.warning("agent directory unreachable: %s", exc)
            return set()
        return {
            a for a, h in zip(agent_ids, found, strict=True)
            if h is not None and h.instance != self.instance
        }


__all__ = ["AgentDirectory", "Holder"]
