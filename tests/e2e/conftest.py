"""Fixtures for end-to-end tests that need the machine's PostgreSQL and Redis."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import psycopg
import pytest
import redis

PG_ADMIN = os.environ.get("EXITGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("EXITGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def shared_urls() -> Iterator[tuple[str, str]]:
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=2)
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except (psycopg.Error, redis.RedisError) as exc:
        pytest.skip(f"PostgreSQL or Redis not reachable: {exc}")
    name = f"exitgate_scale_{secrets.token_hex(4)}"
    admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}", REDIS_URL
    finally:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.close()
