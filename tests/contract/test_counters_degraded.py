"""Limits when Redis is down (issue 9): each instance falls back to its share of each limit,
logs the change once, and goes back to the shared counters when Redis answers again."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from exitgate.store.degraded import FailoverCounters
from exitgate.store.redis_counters import RedisCounters
from tests.support.services import REDIS_URL, require_redis

S = 1_000_000
NOW = 1_700_000_000 * S


def _dead_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


async def test_redis_down_falls_back_to_a_local_share(caplog: pytest.LogCaptureFixture) -> None:
    counters = FailoverCounters(RedisCounters(f"redis://127.0.0.1:{_dead_port()}/0"))
    counters.instances = 2  # last seen: two instances share the package's limits
    try:
        with caplog.at_level(logging.WARNING, logger="exitgate.counters"):
            taken = [await counters.take("rps:p", 10, 10, NOW) for _ in range(8)]
        assert counters.degraded and counters.transitions == 1
        assert taken.count(0) == 5  # half of a burst of 10
        assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1  # logged once
        slots = [await counters.acquire("conc:p", f"h{i}", 4, 60 * S, NOW) for i in range(4)]
        assert slots == [True, True, False, False]  # half of 4
        counters.release("conc:p", "h0")
        assert await counters.acquire("conc:p", "h9", 4, 60 * S, NOW)
    finally:
        await counters.close()


async def test_recovery_when_redis_answers_again() -> None:
    await require_redis()
    counters = FailoverCounters(RedisCounters(REDIS_URL, prefix="egtest:deg:"),
                                probe=0.05)
    counters.degraded = True  # as if Redis had been away
    counters.start()
    try:
        for _ in range(100):
            if not counters.degraded:
                break
            await asyncio.sleep(0.02)
        assert not counters.degraded and counters.instances >= 1
        assert await counters.take("rps:x", 5, 5, NOW) == 0  # back on Redis
    finally:
        await counters.redis.redis.delete("egtest:deg:rps:x", "egtest:deg:instances")
        await counters.close()
