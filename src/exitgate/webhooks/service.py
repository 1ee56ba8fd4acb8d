"""`WebhookService`: endpoints, deliveries and replay for the API, CLI and dashboard; and the
background parts: the dispatcher (bus → outbox), the delivery worker, the watcher.

Who receives what. An endpoint belongs to an organization (`org_id`) or to the gateway
(`org_id` None, the operator's). Its filter lists event types, or `*` for all:
- an organization's events (`package.*`, `org.*`) go to that organization's endpoints and to
  gateway endpoints whose filter matches;
- system events (`node.*`, `agent.disconnected`, `pool.degraded`: no organization) go to
  gateway endpoints whose filter matches, and to an organization's endpoint only when its
  filter names the type explicitly (never through `*`): nodes are the operator's business,
  and the operator decides which customer sees them.

An event that matches no endpoint is not stored. Matching reads a cached list of enabled
endpoints, refreshed after every change made here and every `REFRESH` seconds (changes by
another instance).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from exitgate import events
from exitgate.events import Event, EventBus
from exitgate.observe.stats import LiveStats
from exitgate.policy.metering import Metering
from exitgate.registry import Registry
from exitgate.routing.health import NodeHealth
from exitgate.settings import WebhookSettings
from exitgate.store.base import AccountStore, NotFound
from exitgate.store.keys import new_id
from exitgate.store.webhooks import (
    AttemptRecord,
    DeliveryRecord,
    EndpointRecord,
    NewDelivery,
    WebhookStore,
)
from exitgate.tasks import spawn
from exitgate.webhooks.delivery import Deliverer
from exitgate.webhooks.guard import resolve
from exitgate.webhooks.signing import new_secret
from exitgate.webhooks.vault import Vault
from exitgate.webhooks.watch import Watcher

log = logging.getLogger("exitgate.webhooks")

ALL: Final = "*"
REFRESH: Final = 5.0


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An endpoint as shown: never its secret."""

    id: str
    org_id: str | None
    url: str
    events: tuple[str, ...]
    enabled: bool
    disabled_reason: str
    description: str
    created_at: float

    @classmethod
    def of(cls, r: EndpointRecord) -> Endpoint:
        return cls(
            r.id, r.org_id, r.url, r.events, r.enabled, r.disabled_reason, r.description,
            r.created_at,
        )


def matches(endpoint: EndpointRecord, event: Event) -> bool:
    if not endpoint.enabled:
        return False
    named = event.type in endpoint.events
    if endpoint.org_id is None:
        return named or ALL in endpoint.events
    if event.org_id is None:
        return named
    return event.org_id == endpoint.org_id and (named or ALL in endpoint.events)


def body_of(event: Event) -> str:
    """The Standard Webhooks payload: type, ISO 8601 timestamp, data."""
    stamp = datetime.fromtimestamp(event.at, UTC).isoformat(timespec="milliseconds")
    payload = {"type": event.type, "timestamp": stamp.replace("+00:00", "Z"), "data": event.data}
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str)


class WebhookService:
    def __init__(
        self,
        settings: WebhookSettings,
        accounts: AccountStore,
        vault: Vault,
        bus: EventBus,
        stats: LiveStats,
    ) -> None:
        self.settings = settings
        self.accounts = accounts
        self.store = WebhookStore.of(accounts)
        self.vault = vault
        self.bus = bus
        self.deliverer = Deliverer(settings, self.store, vault, stats, on_disable=self._changed)
        self.watcher: Watcher | None = None
        self._endpoints: list[EndpointRecord] = []
        self._loaded_at = 0.0
        self._dispatch = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- life ---------------------------------------------------------------------------------
    async def start(self, registry: Registry, metering: Metering, health: NodeHealth) -> None:
        await self._refresh()
        if self.settings.enabled:
            self.bus.on_emit(self._dispatch.set)
            self._dispatch.set()  # events emitted before start
            self._tasks.append(spawn(self._dispatcher(), "webhook-dispatch"))
            self.watcher = Watcher(
                self.settings, registry, metering, health, self.bus, self.store
            )
            await self.watcher.load()
            self._tasks.append(spawn(self.watcher.run(), "webhook-watch"))
            self._tasks.append(spawn(self.deliverer.run(), "webhook-delivery-loop"))

    async def close(self) -> None:
        """Stop watching and sending; store what the bus still holds (it survives)."""
        self.bus.on_emit(None)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        with contextlib.suppress(Exception):
            await self._store_events()
        await self.deliverer.close()

    # -- the dispatcher -------------------------------------------------------------------------
    async def _dispatcher(self) -> None:
        while True:
            await self._dispatch.wait()
            self._dispatch.clear()
            try:
                await self._store_events()
            except Exception as exc:  # kept in the bus; the next round tries again
                log.warning("webhook events not stored yet: %s", exc)
                await asyncio.sleep(1.0)
                self._dispatch.set()

    async def _store_events(self) -> None:
        while len(self.bus):
            taken = self.bus.take()
            if time.monotonic() - self._loaded_at > REFRESH:
                await self._refresh()
            rows = [
                NewDelivery(e.id, ep.id, e.org_id, e.type, body_of(e), e.at)
                for e in taken
                for ep in self._endpoints
                if matches(ep, e)
            ]
            # The write runs to its end even when this task is cancelled (a stop): the
            # events are then either stored or back in the bus, never both.
            write = spawn(asyncio.to_thread(self.store.enqueue, rows), "webhook-enqueue")
            try:
                await asyncio.shield(write)
            finally:
                if not write.done():
                    await asyncio.wait([write])
                if write.cancelled() or write.exception() is not None:
                    self.bus.put_back(taken)
            if rows:
                self.deliverer.wake()

    async def _refresh(self) -> None:
        found = await asyncio.to_thread(self.store.list_endpoints)
        self._endpoints = [e for e in found if e.enabled]
        self._loaded_at = time.monotonic()

    def _changed(self, _endpoint_id: str = "") -> None:
        self._loaded_at = 0.0  # re-read before the next match

    # -- endpoints ------------------------------------------------------------------------------
    async def check_url(self, url: str) -> None:
        """DestinationRefused when `url` may not receive webhooks (scheme, host, addresses)."""
        await resolve(url, self.settings.allow_private)

    async def create_endpoint(
        self,
        url: str,
        *,
        org_id: str | None = None,
        event_types: Sequence[str] = (ALL,),
        description: str = "",
    ) -> tuple[Endpoint, str]:
        """The endpoint and its secret: the only time the secret is shown.
        NotFound("org") for an unknown organization; DestinationRefused for a bad URL."""
        await self.check_url(url)
        if org_id is not None:
            await asyncio.to_thread(self.accounts.get_org, org_id)
        endpoint_id = new_id("whe")
        secret = new_secret()
        sealed = self.vault.seal(secret, endpoint_id)
        record = await asyncio.to_thread(
            self.store.create_endpoint, endpoint_id, org_id, url, sealed, list(event_types),
            description, time.time(),
        )
        self._changed()
        return Endpoint.of(record), secret

    async def get_endpoint(self, endpoint_id: str) -> Endpoint:
        return Endpoint.of(await asyncio.to_thread(self.store.get_endpoint, endpoint_id))

    async def list_endpoints(self, org_id: str | None = None) -> list[Endpoint]:
        found = await asyncio.to_thread(self.store.list_endpoints, org_id)
        return [Endpoint.of(e) for e in found]

    async def update_endpoint(
        self,
        endpoint_id: str,
        *,
        url: str | None = None,
        event_types: Sequence[str] | None = None,
        enabled: bool | None = None,
        description: str | None = None,
    ) -> Endpoint:
        values: dict[str, Any] = {}
        if url is not None:
            await self.check_url(url)
            values["url"] = url
        if event_types is not None:
            values["events"] = list(event_types)
        if enabled is not None:
            values["enabled"] = enabled
            values["disabled_reason"] = "" if enabled else "disabled by an operator"
        if description is not None:
            values["description"] = description
        record = await asyncio.to_thread(self.store.update_endpoint, endpoint_id, values)
        self._changed()
        return Endpoint.of(record)

    async def rotate_secret(self, endpoint_id: str) -> str:
        """A new secret, shown once; deliveries from now on are signed with it."""
        await asyncio.to_thread(self.store.get_endpoint, endpoint_id)  # NotFound first
        secret = new_secret()
        values = {"secret": self.vault.seal(secret, endpoint_id)}
        await asyncio.to_thread(self.store.update_endpoint, endpoint_id, values)
        return secret

    async def delete_endpoint(self, endpoint_id: str) -> None:
        await asyncio.to_thread(self.store.delete_endpoint, endpoint_id)
        self._changed()

    # -- deliveries -----------------------------------------------------------------------------
    async def list_deliveries(
        self,
        *,
        endpoint_id: str | None = None,
        org_id: str | None = None,
        state: str | None = None,
        limit: int = 100,
    ) -> list[DeliveryRecord]:
        if endpoint_id is not None:
            await asyncio.to_thread(self.store.get_endpoint, endpoint_id)  # 404 when unknown
        return await asyncio.to_thread(
            lambda: self.store.list_deliveries(
                endpoint_id=endpoint_id, org_id=org_id, state=state, limit=limit
            )
        )

    async def get_delivery(self, delivery_id: str) -> tuple[DeliveryRecord, list[AttemptRecord]]:
        return await asyncio.to_thread(self.store.get_delivery, delivery_id)

    async def replay(self, delivery_id: str) -> DeliveryRecord:
        """Send a delivery's message again, as a new delivery (same webhook-id and body)."""
        record = await asyncio.to_thread(self.store.replay, delivery_id, time.time())
        self.deliverer.wake()
        return record

    async def send_test(self, endpoint_id: str) -> DeliveryRecord:
        """Queue a `webhook.test` message to one endpoint (whatever its filter)."""
        endpoint = await asyncio.to_thread(self.store.get_endpoint, endpoint_id)
        event = Event(events.new_event_id(), "webhook.test", endpoint.org_id,
                      {"endpoint_id": endpoint_id}, time.time())
        row = NewDelivery(event.id, endpoint_id, event.org_id, event.type, body_of(event), event.at)
        (delivery_id,) = await asyncio.to_thread(self.store.enqueue, [row])
        self.deliverer.wake()
        delivery, _ = await asyncio.to_thread(self.store.get_delivery, delivery_id)
        return delivery


__all__ = ["ALL", "Endpoint", "NotFound", "WebhookService", "body_of", "matches"]
