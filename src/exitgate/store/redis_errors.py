"""The recent-errors log shared by every instance (issue 9): one Redis list per package.

A SOCKS5 user reads the exact code of a failure from the package's log, whichever instance
served the request and whichever instance answers the read. Each instance keeps its own log in
memory (recorder.py) and also sends every event here: events are buffered and written every
`interval` as one pipeline (`LPUSH` + `LTRIM` to the newest `RECENT_ERRORS` + `EXPIRE`), so a
burst of errors costs one round trip, and the error path itself never waits on the network.
The buffer is bounded: under a flood the oldest unsent events are dropped (and counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from typing import Any

from redis.asyncio import Redis

from exitgate.recorder import RECENT_ERRORS, ErrorEvent
from exitgate.tasks import spawn

log = logging.getLogger("exitgate.errors")

RETENTION_SECONDS = 7 * 24 * 3600
MAX_BUFFERED = 10_000


class RedisErrorLog:
    def __init__(self, redis: Redis, *, prefix: str = "eg:", interval: float = 0.1) -> None:
        self.redis = redis
        self.prefix = prefix
        self.interval = interval
        self.dropped = 0
        self._buffer: deque[tuple[str, ErrorEvent]] = deque(maxlen=MAX_BUFFERED)
        self._task: asyncio.Task[None] | None = None

    def key(self, package_id: str) -> str:
        return f"{self.prefix}errors:{package_id}"

    def add(self, package_id: str, event: ErrorEvent) -> None:
        """Queue one event (synchronous, never raises, never blocks)."""
        if len(self._buffer) == self._buffer.maxlen:
            self.dropped += 1
        self._buffer.append((package_id, event))
        if self._task is None:
            self._task = spawn(self._flush_soon(), "errors-flush")

    async def _flush_soon(self) -> None:
        try:
            await asyncio.sleep(self.interval)
            await self.flush()
        finally:
            self._task = None
            if self._buffer:
                self._task = spawn(self._flush_soon(), "errors-flush")

    async def flush(self) -> None:
        batch = list(self._buffer)
        self._buffer.clear()
        if not batch:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for package_id in {p for p, _ in batch}:
                    events = [json.dumps(e.as_dict()) for p, e in batch if p == package_id]
                    key = self.key(package_id)
                    pipe.lpush(key, *events)
                    pipe.ltrim(key, 0, RECENT_ERRORS - 1)
                    pipe.expire(key, RETENTION_SECONDS)
                await pipe.execute()
        except Exception as exc:  # each instance still has its own log
            self.dropped += len(batch)
            log.warning("recent errors not shared (%d events): %s", len(batch), exc)

    async def recent(self, package_id: str) -> list[dict[str, Any]]:
        raw = await self.redis.lrange(self.key(package_id), 0, RECENT_ERRORS - 1)
        out: list[dict[str, Any]] = []
        for item in raw:
            with contextlib.suppress(ValueError):
                out.append(json.loads(item))
        return out

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()


__all__ = ["RedisErrorLog"]
