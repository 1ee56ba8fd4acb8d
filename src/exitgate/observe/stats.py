"""Live figures of one gateway process, kept as plain integers on the hot path.

The relay and the handlers bump these attributes (an int add costs tens of nanoseconds; a
prometheus-client counter takes a lock). Readers (the `/metrics` collector, the dashboard,
the per-minute history) copy them when they look. Totals only ever grow; `*_active` figures
go up and down. Nothing here is labelled by package, key, client or target: every key of
every `Counter` below comes from a closed set (protocol, exit kind, error code, limit kind,
auth-failure reason, delivery outcome).

Bytes. With metering on, every relayed chunk already lands in a `policy.metering` account
(per package and network, since process start); `metered` sums those at read time, so the
relay pays nothing extra. With `[proxy] metering = false` the relay's per-connection `Tally`
adds to `bytes_up` / `bytes_down` here instead. Read the total with `bytes()`.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Sized
from dataclasses import dataclass, field

from exitgate.errors import Code, GatewayError

# Upper bounds (seconds) of the histogram buckets; +Inf is implicit.
CONNECT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

# The closed label sets of the limit and auth counters (metrics.py emits every value).
LIMIT_KINDS = ("rate", "concurrency", "traffic", "credits", "connections")
AUTH_REASONS = ("missing", "invalid_key", "malformed", "ip_not_allowed", "throttled")
_AUTH_REASON = {
    Code.ERR_AUTH_REQUIRED: "missing",
    Code.AUTH_FAILED: "invalid_key",
    Code.IP_NOT_ALLOWED: "ip_not_allowed",
    Code.AUTH_THROTTLED: "throttled",
}


class Histogram:
    """Bucket counts for a fixed set of upper bounds: `observe` is one bisect and two adds."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        """[(le, count of observations <= le)], +Inf last: Prometheus's bucket shape."""
        out: list[tuple[str, int]] = []
        total = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            total += n
            out.append((repr(float(bound)), total))
        out.append(("+Inf", total + self.counts[-1]))
        return out


def limit_kind(err: GatewayError) -> str | None:
    """Which limit refused (None: not a limit). Concurrency and rate share a code; the
    policy layer's detail tells them apart (`ratelimit.concurrency_exceeded`)."""
    code = err.code
    if code is Code.RATE_LIMIT_EXCEEDED:
        return "concurrency" if err.detail.startswith("Concurrent") else "rate"
    if code is Code.TRAFFIC_LIMIT_EXCEEDED:
        return "traffic"
    if code is Code.PACKAGE_NO_CREDITS:
        return "credits"
    if code is Code.TOO_MANY_CONNECTIONS:
        return "connections"
    return None


def auth_reason(err: GatewayError) -> str | None:
    reason = _AUTH_REASON.get(err.code)
    if reason == "invalid_key" and err.detail.startswith("Malformed"):
        return "malformed"
    return reason


def _nothing_metered() -> tuple[int, int]:
    return 0, 0


@dataclass(slots=True)
class LiveStats:
    started_at: float = field(default_factory=time.time)
    # the proxy listeners' open client connections (the server's own set, read by `len`)
    clients: Sized = ()
    tunnels_active: int = 0  # spliced tunnels and forwarded requests in flight
    bytes_up: int = 0  # client → target, unmetered part (see the module docstring)
    bytes_down: int = 0  # target → client, unmetered part
    metered: Callable[[], tuple[int, int]] = _nothing_metered
    requests_total: int = 0  # tunnels, SOCKS5 connections and forwarded requests, finished
    errors_total: int = 0  # of those, the ones answered with a catalogued error
    # (protocol, outcome) → count; outcome is "OK" or an error code: closed label sets only
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    limit_rejections: Counter[str] = field(default_factory=Counter)  # by LIMIT_KINDS
    auth_failures: Counter[str] = field(default_factory=Counter)  # by AUTH_REASONS
    # exit kind → connect duration of successful dials
    connect_seconds: dict[str, Histogram] = field(default_factory=dict)
    # protocol → time from the request's arrival to its end (a tunnel: to its close)
    request_seconds: dict[str, Histogram] = field(default_factory=dict)
    # outcome → count; the webhooks work bumps it (outcomes such as "delivered", "failed")
    webhook_deliveries: Counter[str] = field(default_factory=Counter)
    accesslog_lines: int = 0  # queued for the access log
    accesslog_dropped: int = 0  # not queued: the queue was full
    accesslog_failed: int = 0  # queued, but the sink refused the write (the writer's count)

    @property
    def connections_active(self) -> int:
        return len(self.clients)

    def outcome(self, protocol: str, code: str) -> None:
        self.requests_total += 1
        if code != "OK":
            self.errors_total += 1
        self.outcomes[(protocol, code)] += 1

    def observe_request(self, protocol: str, seconds: float) -> None:
        hist = self.request_seconds.get(protocol)
        if hist is None:
            hist = self.request_seconds[protocol] = Histogram(REQUEST_BUCKETS)
        hist.observe(seconds)

    def observe_connect(self, kind: str, seconds: float) -> None:
        hist = self.connect_seconds.get(kind)
        if hist is None:
            hist = self.connect_seconds[kind] = Histogram(CONNECT_BUCKETS)
        hist.observe(seconds)

    def refused(self, err: GatewayError) -> None:
        """A limit or an authentication check said no (mid-tunnel stops included)."""
        kind = limit_kind(err)
        if kind is not None:
            self.limit_rejections[kind] += 1
            return
        reason = auth_reason(err)
        if reason is not None:
            self.auth_failures[reason] += 1

    def bytes(self) -> tuple[int, int]:
        """(up, down) relayed since start, counted per chunk while tunnels are open."""
        up, down = self.metered()
        return self.bytes_up + up, self.bytes_down + down

    def snapshot(self) -> dict[str, int | float]:
        up, down = self.bytes()
        return {
            "at": time.time(),
            "connections_active": self.connections_active,
            "tunnels_active": self.tunnels_active,
            "bytes_up": up,
            "bytes_down": down,
            "requests_total": self.requests_total,
            "errors_total": self.errors_total,
        }


class Tally:
    """Per-connection byte counts when metering is off (the `Meter` counts them otherwise):
    the access log's bytes, and the live totals in `LiveStats`."""

    __slots__ = ("down", "stats", "up")

    def __init__(self, stats: LiveStats) -> None:
        self.stats = stats
        self.up = 0
        self.down = 0

    def tick_up(self, n: int) -> None:
        self.up += n
        self.stats.bytes_up += n

    def tick_down(self, n: int) -> None:
        self.down += n
        self.stats.bytes_down += n

    def close(self) -> None:
        return None
