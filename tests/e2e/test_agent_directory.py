"""The agent directory against a real Redis (issue 9): claims and releases batched, one
heartbeat key per instance vouching for all of its agents, records of a dead instance gone
within its TTL, the epoch-guarded release. Each test uses its own key prefix."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest
import redis
from redis.asyncio import Redis

from exitgate.cluster.directory import AgentDirectory

REDIS_URL = "redis://127.0.0.1:6379/0"


PREFIX = f"egtest:{secrets.token_hex(4)}:"


@pytest.fixture
async def client() -> AsyncIterator[Redis]:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis not reachable: {exc}")
    r = Redis.from_url(REDIS_URL)
    prefix = PREFIX
    yield r
    keys = [k async for k in r.scan_iter(match=f"{prefix}*", count=1000)]
    if keys:
        await r.delete(*keys)
    await r.aclose()


def pair(r: Redis, ttl: float = 6.0) -> tuple[AgentDirectory, AgentDirectory]:
    a = AgentDirectory(r, "inst-a", "127.0.0.1:1001", prefix=PREFIX, ttl=ttl)
    b = AgentDirectory(r, "inst-b", "127.0.0.1:1002", prefix=PREFIX, ttl=ttl)
    return a, b


async def test_a_burst_of_claims_is_one_flush_and_every_instance_sees_them(client: Redis) -> None:
    a, b = pair(client)
    ids = [f"burst-{i}" for i in range(2500)]
    for agent_id in ids:
        a.claim_later(agent_id, "10.0.0.1", {"country": "us"})
    assert a.pending == 2500
    assert await a.flush() == 2500 and a.pending == 0
    holders = await b.holders(ids)
    assert {h.instance for h in holders if h is not None} == {"inst-a"}
    assert all(h is not None for h in holders)
    assert await b.held_elsewhere(ids[:10]) == set(ids[:10])
    assert await a.held_elsewhere(ids[:10]) == set()  # held here, not elsewhere
    assert await b.unheld([*ids[:3], "nobody"]) == ["nobody"]


async def test_a_claim_released_in_the_same_burst_leaves_no_record(client: Redis) -> None:
    a, b = pair(client)
    epoch = a.claim_later("blink", "", {})
    a.release_later("blink", epoch)
    await a.flush()
    assert await b.lookup("blink") is None
    assert not await client.exists(a.key("blink"))


async def test_a_dead_instances_agents_leave_within_its_ttl(client: Redis) -> None:
    a, b = pair(client, ttl=1.0)
    await a.claim("gone-1", "", {})
    await a.heartbeat()
    assert (await b.lookup("gone-1")) is not None
    await asyncio.sleep(1.2)  # a stopped heartbeating (died)
    assert await b.lookup("gone-1") is None
    assert not await client.exists(a.key("gone-1"))  # the lookup deleted the dead record


async def test_a_live_heartbeat_keeps_every_record_with_one_command(client: Redis) -> None:
    a, b = pair(client, ttl=1.0)
    for i in range(50):
        a.claim_later(f"kept-{i}", "", {})
    await a.flush()
    for _ in range(4):
        await asyncio.sleep(0.4)
        assert await a.heartbeat() == 0  # nothing to re-write: only the heartbeat key
    assert all(h is not None for h in await b.holders([f"kept-{i}" for i in range(50)]))


async def test_a_lapsed_heartbeat_rewrites_the_records(client: Redis) -> None:
    a, b = pair(client)
    await a.claim("back-1", "", {})
    await a.claim("moved-1", "", {})
    await client.delete(a.heartbeat_key)  # a was stalled past its TTL...
    assert await b.lookup("back-1") is None  # ...and b dropped its record meanwhile
    await b.claim("moved-1", "", {})  # and the agent moved to b
    assert await a.heartbeat() == 2
    holder = await b.lookup("back-1")
    assert holder is not None and holder.instance == "inst-a"
    moved = await a.lookup("moved-1")
    assert moved is not None and moved.instance == "inst-b"  # never taken back


async def test_a_late_release_never_erases_a_newer_claim(client: Redis) -> None:
    a, b = pair(client)
    old = await a.claim("hop-1", "", {})
    await b.claim("hop-1", "", {})
    assert not await a.release("hop-1", old)
    a.release_later("hop-1", old)
    await a.flush()
    holder = await a.lookup("hop-1")
    assert holder is not None and holder.instance == "inst-b"
    assert await a.held_elsewhere(["hop-1"]) == {"hop-1"}
