"""Node health merged across instances, on read (issue 9).

Each instance's circuit breakers judge the nodes it dials (routing/health.py): an exit that
fails for one instance may work for another (a different network path, a different load), so
verdicts stay per instance. What operators need is the whole picture: every `interval` each
instance writes its summary (nodes with news only) to `{prefix}health:{instance}`, expiring
after `ttl`, and a read merges the summaries of the live instances: per node, the worst state
and each instance's view.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from exitgate.tasks import spawn

log = logging.getLogger("exitgate.cluster")

Summary = dict[str, dict[str, object]]
_WORST = {"closed": 0, "half_open": 1, "probing": 2, "open": 3}


def merge(views: dict[str, Summary]) -> dict[str, dict[str, Any]]:
    """instance → summary  ⇒  node → {"state": worst, "instances": {instance: view}}."""
    merged: dict[str, dict[str, Any]] = {}
    for instance, summary in sorted(views.items()):
        for node_id, view in summary.items():
            entry = merged.setdefault(node_id, {"state": "closed", "instances": {}})
            entry["instances"][instance] = view
            state = str(view.get("state", "closed"))
            if _WORST.get(state, 0) > _WORST.get(entry["state"], 0):
                entry["state"] = state
    return merged


class HealthBoard:
    def __init__(
        self,
        redis: Redis,
        instance: str,
        local: Callable[[], Summary],
        *,
        prefix: str = "eg:",
        interval: float = 2.0,
        ttl: float = 10.0,
    ) -> None:
        self.redis = redis
        self.instance = instance
        self.local = local
        self.prefix = prefix
        self.interval = interval
        self.ttl_ms = int(ttl * 1000)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = spawn(self._publish(), "health-board")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _publish(self) -> None:
        while True:
            try:
                await self.publish()
            except Exception as exc:  # Redis away: reads show this instance's view only
                log.debug("node health not published: %s", exc)
            await asyncio.sleep(self.interval)

    async def publish(self) -> None:
        body = json.dumps(self.local(), separators=(",", ":"))
        await self.redis.set(f"{self.prefix}health:{self.instance}", body, px=self.ttl_ms)

    async def read(self) -> dict[str, dict[str, Any]]:
        """Every live instance's view, merged; this instance's own when Redis fails."""
        views: dict[str, Summary] = {}
        try:
            keys = [k async for k in self.redis.scan_iter(match=f"{self.prefix}health:*")]
            values = await self.redis.mget(keys) if keys else []
            for key, raw in zip(keys, values, strict=True):
                if raw is None:
                    continue
                name = key.decode() if isinstance(key, bytes) else str(key)
                with contextlib.suppress(ValueError):
                    views[name.rsplit(":", 1)[1]] = json.loads(raw)
        except Exception as exc:
            log.warning("merged node health unreadable, showing this instance's: %s", exc)
        views[self.instance] = self.local()  # always current for this instance
        return merge(views)


__all__ = ["HealthBoard", "merge"]
