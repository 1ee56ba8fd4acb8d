"""The event bus: edges `emit` what happened; the webhook service takes it from here.

    services, hub, proxy edge, webhook watcher ──emit──▶ EventBus (bounded, in memory)
        ──take──▶ webhooks.WebhookService: matching endpoints ──▶ outbox rows in the store

`emit` runs on the event loop, in the data path for some callers (a limit rejection), so it
is cheap and never raises: a dict lookup for the optional throttle, a tuple append, a wake-up
callback. Past `capacity` queued events it drops and counts (`dropped`): an outbox that cannot
keep up must never slow the proxy. Events are made durable by the service's dispatcher within
one loop step of being taken (and on a clean stop), so only a crash can lose the few in here.

`key`: events of one type with the same key at most once per `throttle` seconds (used by
`package.limit.reached`, keyed by package and limit, which a flood would otherwise emit per
rejected request).

System events (nodes, agents, pools) have `org_id=None`: they belong to the gateway, not to an
organization (see `webhooks.service` for who receives them).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from exitgate.errors import Code, GatewayError

log = logging.getLogger("exitgate.events")

PACKAGE_USAGE_THRESHOLD: Final = "package.usage.threshold"
PACKAGE_LIMIT_REACHED: Final = "package.limit.reached"
PACKAGE_STATUS_CHANGED: Final = "package.status.changed"
ORG_CREDITS_LOW: Final = "org.credits.low"
ORG_CREDITS_EXHAUSTED: Final = "org.credits.exhausted"
NODE_DOWN: Final = "node.down"
NODE_RECOVERED: Final = "node.recovered"
AGENT_DISCONNECTED: Final = "agent.disconnected"
POOL_DEGRADED: Final = "pool.degraded"

ORG_EVENTS: Final = frozenset(
    {
        PACKAGE_USAGE_THRESHOLD,
        PACKAGE_LIMIT_REACHED,
        PACKAGE_STATUS_CHANGED,
        ORG_CREDITS_LOW,
        ORG_CREDITS_EXHAUSTED,
    }
)
SYSTEM_EVENTS: Final = frozenset({NODE_DOWN, NODE_RECOVERED, AGENT_DISCONNECTED, POOL_DEGRADED})
EVENT_TYPES: Final = ORG_EVENTS | SYSTEM_EVENTS


def limit_of(err: GatewayError) -> str | None:
    """The limit a rejection hit ("rps", "concurrency", "traffic"), None for other errors."""
    if err.code == Code.TRAFFIC_LIMIT_EXCEEDED:
        return "traffic"
    if err.code == Code.RATE_LIMIT_EXCEEDED:
        # policy/ratelimit.py words the two kinds apart; the code is shared (SPEC 8)
        return "concurrency" if err.detail.startswith("Concurrent") else "rps"
    return None


def new_event_id() -> str:
    """A Standard Webhooks message id: unique per event, the same on every retry."""
    return "msg_" + secrets.token_urlsafe(18)


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    type: str
    org_id: str | None
    data: Mapping[str, Any]
    at: float  # epoch seconds


class EventBus:
    def __init__(
        self,
        *,
        capacity: int = 10_000,
        throttle: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.capacity = capacity
        self.throttle = throttle
        self.clock = clock
        self.dropped = 0
        self._queue: deque[Event] = deque()
        self._last: dict[tuple[str, Hashable], float] = {}
        self._wake: Callable[[], None] | None = None

    def emit(
        self,
        event_type: str,
        org_id: str | None,
        data: Mapping[str, Any],
        *,
        key: Hashable | None = None,
    ) -> None:
        """Queue one event; never raises, never blocks."""
        try:
            now = self.clock()
            if key is not None:
                slot = (event_type, key)
                last = self._last.get(slot)
                if last is not None and now - last < self.throttle:
                    return
                self._last[slot] = now
            if len(self._queue) >= self.capacity:
                self.dropped += 1
                return
            self._queue.append(Event(new_event_id(), event_type, org_id, dict(data), now))
            if self._wake is not None:
                self._wake()
        except Exception:  # an event is never worth a failed request
            log.exception("event %s not queued", event_type)

    def on_emit(self, wake: Callable[[], None] | None) -> None:
        """Called (on the loop) after each queued event: the consumer's wake-up."""
        self._wake = wake

    def take(self, limit: int = 1000) -> list[Event]:
        out: list[Event] = []
        queue = self._queue
        while queue and len(out) < limit:
            out.append(queue.popleft())
        return out

    def put_back(self, events: list[Event]) -> None:
        """Events the consumer could not store yet, back at the front, oldest first."""
        self._queue.extendleft(reversed(events))

    def __len__(self) -> int:
        return len(self._queue)
