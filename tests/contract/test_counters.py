"""One suite over every `Counters` backend: in-process, and Redis (127.0.0.1:6379, override with
EXITGATE_TEST_REDIS_URL; skipped when unreachable). Keys carry a random prefix per test and
are deleted afterwards. The `Limiter` runs over each backend too, cancelled mid-flight."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator

import pytest

from exitgate.errors import GatewayError
from exitgate.model import Limits, Package
from exitgate.policy.ratelimit import Limiter, slot_key
from exitgate.store.counters import TOKEN, Counters, MemoryCounters, open_counters

REDIS_URL = os.environ.get("EXITGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
S = 1_000_000
NOW = 1_700_000_000 * S


@pytest.fixture(params=["memory", "redis"])
async def counters(request: pytest.FixtureRequest) -> AsyncIterator[Counters]:
    if request.param == "memory":
        yield MemoryCounters()
        return
    redis = pytest.importorskip("redis.asyncio")
    probe = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        await probe.ping()
    except Exception:
        pytest.skip("Redis not reachable")
    finally:
        await probe.aclose()
    backend = open_counters(REDIS_URL)
    try:
        yield backend
    finally:
        await backend.drain()
        client = backend.redis.redis  # type: ignore[attr-defined]  # FailoverCounters → Redis
        keys = [k async for k in client.scan_iter(match="eg:t_*")]
        if keys:
            await client.delete(*keys)
        await backend.close()


def key() -> str:
    return "t_" + secrets.token_hex(8)


async def test_bucket_starts_full_and_refills_exactly(counters: Counters) -> None:
    k = key()
    assert [await counters.take(k, 4, 4, NOW) for _ in range(4)] == [0, 0, 0, 0]
    assert await counters.take(k, 4, 4, NOW) == 250_000
    assert await counters.take(k, 4, 4, NOW + 249_999) == 1
    assert await counters.take(k, 4, 4, NOW + 250_000) == 0
    assert await counters.take(k, 4, 4, NOW + 250_000) == 250_000
    # idle for an hour: full again, never above the burst
    later = NOW + 3600 * S
    assert [await counters.take(k, 4, 4, later) for _ in range(5)] == [0, 0, 0, 0, 250_000]
    # a clock stepping back refills nothing
    assert await counters.take(k, 4, 4, later - 10 * S) == 250_000


async def test_bucket_exact_at_high_rates_and_large_timestamps(counters: Counters) -> None:
    k = key()
    rate = 1_000_000  # one token per microsecond
    assert await counters.take(k, rate, 1, NOW) == 0
    assert await counters.take(k, rate, 1, NOW) == 1
    assert await counters.take(k, rate, 1, NOW + 1) == 0
    k2 = key()
    assert [await counters.take(k2, 3, 3, NOW) for _ in range(3)] == [0, 0, 0]
    assert await counters.take(k2, 3, 3, NOW) == -(-TOKEN // 3)
    assert await counters.take(k2, 3, 3, NOW + S) == 0  # exactly 3 tokens after one second
    assert await counters.take(k2, 3, 3, NOW + S) == 0
    assert await counters.take(k2, 3, 3, NOW + S) == 0
    assert await counters.take(k2, 3, 3, NOW + S) > 0


async def test_semaphore_limit_expiry_and_idempotence(counters: Counters) -> None:
    k = key()
    ttl = 10 * S
    assert await counters.acquire(k, "a", 2, ttl, NOW)
    assert await counters.acquire(k, "b", 2, ttl, NOW)
    assert not await counters.acquire(k, "c", 2, ttl, NOW)
    assert await counters.acquire(k, "a", 2, ttl, NOW + S)  # held already: renewed, not doubled
    assert await counters.count(k, NOW + S) == 2
    # b expires at NOW+10s, a at NOW+11s
    assert await counters.count(k, NOW + ttl) == 1
    assert await counters.acquire(k, "c", 2, ttl, NOW + ttl)
    assert not await counters.acquire(k, "d", 2, ttl, NOW + ttl)
    counters.release(k, "a")
    counters.release(k, "a")
    counters.release(k, "never-held")
    await counters.drain()
    assert await counters.count(k, NOW + ttl) == 1
    assert await counters.acquire(k, "d", 2, ttl, NOW + ttl)


async def test_renew_extends_and_readds(counters: Counters) -> None:
    k1, k2 = key(), key()
    ttl = 10 * S
    assert await counters.acquire(k1, "a", 1, ttl, NOW)
    assert await counters.acquire(k2, "b", 5, ttl, NOW)
    await counters.renew([(k1, "a"), (k2, "b"), (k2, "c")], ttl, NOW + 9 * S)
    assert await counters.count(k1, NOW + 15 * S) == 1
    assert await counters.count(k2, NOW + 15 * S) == 2  # "c" was not held: renew adds it
    assert not await counters.acquire(k1, "x", 1, ttl, NOW + 15 * S)
    assert await counters.count(k1, NOW + 19 * S) == 0  # past the renewed expiry
    assert await counters.acquire(k1, "x", 1, ttl, NOW + 19 * S)


def pkg(conc: int | None = None, rps: int | None = None) -> Package:
    return Package("t_" + secrets.token_hex(6), "org", "p", "h", limits=Limits(rps, conc))


async def test_limiter_over_the_backend(counters: Counters) -> None:
    limiter = Limiter(counters, instance="t")
    p = pkg(conc=2, rps=3)
    one = await limiter.admit(p)
    two = await limiter.admit(p)
    with pytest.raises(GatewayError, match=r"Concurrent connection limit reached \(2\)"):
        await limiter.admit(p)
    one.release()
    two.release()
    await counters.drain()
    assert await limiter.in_use(p.id) == 0
    with pytest.raises(GatewayError, match=r"Requests per second limit reached \(3/s\)"):
        await limiter.admit(p)  # three tokens spent above, within the same second


async def test_limiter_cancelled_at_random_points_leaks_nothing(counters: Counters) -> None:
    limiter = Limiter(counters, instance="t")
    p = pkg(conc=1000)
    loop = asyncio.get_running_loop()

    async def user() -> None:
        async with await limiter.admit(p):
            await asyncio.sleep(0.001)

    for delay in (0.0, 0.0001, 0.0005, 0.001, 0.002):
        tasks = [loop.create_task(user()) for _ in range(30)]
        await asyncio.sleep(delay)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await counters.drain()
        assert await counters.count(slot_key(p.id), limiter.clock()) == 0, delay
        assert limiter.held == 0
