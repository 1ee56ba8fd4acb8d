"""The machine's Redis for contract tests: its URL, and a skip when it is not reachable."""

from __future__ import annotations

import os

import pytest

REDIS_URL = os.environ.get("EXITGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


async def require_redis(url: str = REDIS_URL) -> None:
    """Skip the calling test when no Redis answers at `url`."""
    redis = pytest.importorskip("redis.asyncio")
    probe = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        await probe.ping()
    except Exception:
        pytest.skip("Redis not reachable")
    finally:
        await probe.aclose()
