"""Live figures of one gateway process, kept as plain integers on the hot path.

The relay and the handlers bump these attributes (an int add costs tens of nanoseconds; a
prometheus-client counter takes a lock). Readers (the `/metrics` collector, the dashboard,
the per-minute history) copy them when they look. Totals only ever grow; `*_active` figures
go up and down. Nothing here is labelled by package, key, client or target.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class LiveStats:
    started_at: float = field(default_factory=time.time)
    connections_active: int = 0  # client connections open on the proxy listeners
    tunnels_active: int = 0  # spliced tunnels and forwarded requests in flight
    bytes_up: int = 0  # client → target, counted as they flow
    bytes_down: int = 0  # target → client, counted as they flow
    requests_total: int = 0  # tunnels, SOCKS5 connections and forwarded requests admitted or not
    errors_total: int = 0  # of those, the ones answered with a catalogued error
    # (protocol, outcome) → count; outcome is "OK" or an error code: closed label sets only
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    # webhook delivery attempts by outcome: "ok", "failed", "disabled" (410 Gone)
    webhook_deliveries: Counter[str] = field(default_factory=Counter)

    def outcome(self, protocol: str, code: str) -> None:
        self.requests_total += 1
        if code != "OK":
            self.errors_total += 1
        self.outcomes[(protocol, code)] += 1

    def snapshot(self) -> dict[str, int | float]:
        return {
            "at": time.time(),
            "connections_active": self.connections_active,
            "tunnels_active": self.tunnels_active,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "requests_total": self.requests_total,
            "errors_total": self.errors_total,
        }
