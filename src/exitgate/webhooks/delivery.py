"""The delivery worker: due outbox rows → signed POSTs, with retries, a log and outcomes.

One loop claims due rows (`WebhookStore.claim`, a lease of `timeout + LEASE_SLACK`) while
fewer than `[webhooks] concurrency` are in flight, and runs one task per row. An attempt:

1. the endpoint is read fresh: deleted or disabled ends the delivery without an attempt;
2. the URL's host is resolved and every address checked (`guard.resolve`); a refusal is a
   failed attempt (retried: DNS may change back) with the reason as its error;
3. POST the stored body to one of the checked addresses (pinned: the URL's host goes in
   `Host` and, for https, in SNI and certificate checks), signed (`signing.headers`), no
   redirects followed (a redirect could point anywhere), no proxy from the environment,
   at most `timeout` seconds in all; the answer's body is not read;
4. 2xx: delivered ("ok"). 410 Gone: the endpoint is disabled and the delivery ends
   ("disabled"). Anything else, or no answer: a failed attempt ("failed"), retried after
   `RetryPolicy.delay` until `max_attempts`.

Each attempt is one row of the delivery log and one count in `LiveStats.webhook_deliveries`
by outcome. Stopping cancels attempts in flight and gives their claims back (due at once),
so the next start sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable
from typing import Final

import httpx

from exitgate.observe.stats import LiveStats
from exitgate.settings import WebhookSettings
from exitgate.store.base import NotFound
from exitgate.store.webhooks import (
    DELIVERED,
    FAILED,
    PENDING,
    AttemptRecord,
    DeliveryRecord,
    WebhookStore,
)
from exitgate.tasks import spawn
from exitgate.webhooks.guard import Destination, DestinationRefused, resolve
from exitgate.webhooks.policy import RetryPolicy
from exitgate.webhooks.signing import headers, key_of
from exitgate.webhooks.vault import Vault

log = logging.getLogger("exitgate.webhooks")

LEASE_SLACK: Final = 30.0
POLL: Final = 1.0  # look for due rows (retries, other instances' rows) at least this often
USER_AGENT: Final = "exitgate-webhooks/1"


def pinned(url: str, dest: Destination) -> tuple[str, dict[str, str], dict[str, object]]:
    """(URL with a checked address as its host, extra headers, httpx extensions)."""
    parts = httpx.URL(url)
    host_header = parts.netloc.decode("ascii")
    target = parts.copy_with(host=dest.addresses[0])
    extensions: dict[str, object] = {}
    if dest.scheme == "https":
        extensions["sni_hostname"] = dest.host
    return str(target), {"host": host_header}, extensions


class Deliverer:
    def __init__(
        self,
        settings: WebhookSettings,
        store: WebhookStore,
        vault: Vault,
        stats: LiveStats,
        *,
        on_disable: Callable[[str], None] = lambda _id: None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.store = store
        self.vault = vault
        self.stats = stats
        self.on_disable = on_disable
        self.retry = RetryPolicy(
            settings.retry_base, settings.retry_max_delay, settings.max_attempts
        )
        self._draw = draw
        self._wake = asyncio.Event()
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.timeout),
            follow_redirects=False,
            trust_env=False,
            headers={"user-agent": USER_AGENT},
        )

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        lease = self.settings.timeout + LEASE_SLACK
        while True:
            room = self.settings.concurrency - len(self._inflight)
            claimed: list[DeliveryRecord] = []
            if room > 0:
                try:
                    claimed = await self._claim(lease, room)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("webhook outbox not readable: %s", exc)
            for delivery in claimed:
                task = spawn(self._attempt(delivery), "webhook-delivery")
                self._inflight[delivery.id] = task
                task.add_done_callback(functools.partial(self._done, delivery.id))
            if claimed and len(self._inflight) < self.settings.concurrency:
                continue  # there may be more due
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL)

    async def _claim(self, lease: float, room: int) -> list[DeliveryRecord]:
        """Claim due rows; a stop during the claim gives them back instead of leaving them
        leased to nobody until the lease runs out."""
        work = spawn(
            asyncio.to_thread(self.store.claim, time.time(), lease, room), "webhook-claim"
        )
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            await asyncio.wait([work])
            if not work.cancelled() and work.exception() is None:
                ids = [d.id for d in work.result()]
                await asyncio.to_thread(self.store.release, ids, time.time())
            raise

    def _done(self, delivery_id: str, _task: asyncio.Task[None]) -> None:
        self._inflight.pop(delivery_id, None)
        self._wake.set()

    async def close(self) -> None:
        tasks = list(self._inflight.items())
        for _, task in tasks:
            task.cancel()
        for _, task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if tasks:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.store.release, [i for i, _ in tasks], time.time())
        await self._client.aclose()

    # -- one attempt ------------------------------------------------------------------------------
    async def _attempt(self, delivery: DeliveryRecord) -> None:
        try:
            endpoint = await asyncio.to_thread(self.store.get_endpoint, delivery.endpoint_id)
        except NotFound:
            await asyncio.to_thread(self.store.end, delivery.id, "endpoint deleted", time.time())
            return
        if not endpoint.enabled:
            reason = f"endpoint disabled: {endpoint.disabled_reason or 'by an operator'}"
            await asyncio.to_thread(self.store.end, delivery.id, reason, time.time())
            return
        n = delivery.attempts + 1
        at = time.time()
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        try:
            dest = await resolve(endpoint.url, self.settings.allow_private)
            key = key_of(self.vault.open(endpoint.sealed_secret, endpoint.id))
            body = delivery.payload.encode("utf-8")
            signed = headers(key, delivery.event_id, int(time.time()), body)
            url, extra, extensions = pinned(endpoint.url, dest)
            async with asyncio.timeout(self.settings.timeout):
                async with self._client.stream(
                    "POST", url, content=body, headers=signed | extra, extensions=extensions
                ) as answer:
                    status = answer.status_code
        except DestinationRefused as exc:
            error = f"destination refused: {exc}"
        except TimeoutError:
            error = f"no answer within {self.settings.timeout:g}s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except ValueError as exc:  # a secret that does not open or decode
            error = f"cannot sign: {exc}"
        latency = (time.perf_counter() - started) * 1000.0
        if status is not None and not 200 <= status < 300:
            error = f"HTTP {status}"
        attempt = AttemptRecord(n, at, status, round(latency, 3), error)
        if status is not None and 200 <= status < 300:
            outcome, state, next_at = "ok", DELIVERED, at
        elif status == 410:
            outcome, state, next_at = "disabled", FAILED, at
        elif self.retry.gives_up(n):
            outcome, state, next_at = "failed", FAILED, at
        else:
            delay = self.retry.delay(n, self._draw())
            outcome, state, next_at = "failed", PENDING, time.time() + delay
        # Recorded even when a stop cancels this task now: the attempt happened.
        self.stats.webhook_deliveries[outcome] += 1
        record = asyncio.to_thread(self.store.record_attempt, delivery, attempt, state, next_at)
        write = spawn(record, "webhook-attempt-log")
        try:
            await asyncio.shield(write)
        finally:
            if not write.done():
                await asyncio.wait([write])
        if outcome == "disabled":
            values = {"enabled": False, "disabled_reason": "the receiver answered 410 Gone"}
            with contextlib.suppress(NotFound):
                await asyncio.to_thread(self.store.update_endpoint, endpoint.id, values)
            log.warning("webhook endpoint %s disabled: it answered 410 Gone", endpoint.id)
            self.on_disable(endpoint.id)
