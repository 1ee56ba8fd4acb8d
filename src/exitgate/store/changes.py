"""`ChangeFeed`: tell every instance, within a second, that accounts or nodes changed.

Instances sharing a database each keep the accounts and nodes in memory (registry.py), so an
admin change made through one instance must reach the others' memory. Three layers, each
covering the one before:

1. a version number in Redis (`{prefix}accounts:v`), `INCR`ed after every local write;
2. a pub/sub message on `{prefix}accounts` carrying the new version: the others re-read at
   once (typically within milliseconds);
3. polling: every `poll` seconds each instance reads the version and re-reads when it moved
   (pub/sub is fire-and-forget: a message sent while a subscriber reconnects is lost), and the
   gateway re-reads the database every `REFRESH_SECONDS` whatever Redis says (Redis down).

The reader side is one asyncio.Event (`wanted`) the refresh loop waits on. Publishing is
coalesced: a burst of writes costs one INCR + PUBLISH in flight and at most one more after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.asyncio import Redis

from exitgate.tasks import spawn

log = logging.getLogger("exitgate.changes")


class ChangeFeed:
    def __init__(self, redis: Redis, *, prefix: str = "eg:", poll: float = 1.0) -> None:
        self.redis = redis
        self.key = f"{prefix}accounts:v"
        self.channel = f"{prefix}accounts"
        self.poll = poll
        self.wanted = asyncio.Event()
        self.seen = 0  # the newest version this instance has heard of
        self._publishing: asyncio.Task[None] | None = None
        self._again = False
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [spawn(self._listen(), "changes-listen"), spawn(self._poll(), "changes-poll")]

    async def close(self) -> None:
        for task in [*self._tasks, self._publishing]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    # -- writers --------------------------------------------------------------------------------
    def changed(self) -> None:
        """A local write happened (synchronous, never raises: called from the registry)."""
        if self._publishing is not None:
            self._again = True
            return
        self._publishing = spawn(self._publish(), "changes-publish")

    async def _publish(self) -> None:
        try:
            while True:
                self._again = False
                try:
                    version = int(await self.redis.incr(self.key))
                    self.seen = max(self.seen, version)  # our own change: nothing to re-read
                    await self.redis.publish(self.channel, str(version))
                except Exception as exc:  # the periodic refresh carries it instead
                    log.warning("could not announce a change (others re-read within 2 s): %s",
                                exc)
                if not self._again:
                    return
        finally:
            self._publishing = None

    # -- readers --------------------------------------------------------------------------------
    def _heard(self, version: int) -> None:
        if version > self.seen:
            self.seen = version
            self.wanted.set()

    async def _listen(self) -> None:
        delay = 0.2
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    delay = 0.2
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            with contextlib.suppress(ValueError, TypeError):
                                self._heard(int(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("change channel lost (%s): polling covers it", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll)
            try:
                raw = await self.redis.get(self.key)
            except Exception as exc:  # Redis down: the periodic database refresh still runs
                log.debug("change version not read: %s", exc)
                continue
            if raw is not None:
                with contextlib.suppress(ValueError):
                    self._heard(int(raw))


__all__ = ["ChangeFeed"]
