"""`GET /metrics`: the Prometheus text exposition of one gateway, built at scrape time.

The data path only bumps plain ints in `LiveStats` (see stats.py); `GatewayCollector` turns
them, and what the registry, the hub, the session table and the usage flush hold, into
metric families when Prometheus asks. Nothing is counted through prometheus-client objects,
so the relay takes no lock and allocates nothing for metrics.

Cardinality. Every label value comes from a closed set: protocol (`Protocol`), exit kind
(`NodeKind`), node state (`NodeState`), outcome code ("OK", "ABORTED" or a catalogue `Code`),
limit kind (`stats.LIMIT_KINDS`), auth-failure reason (`stats.AUTH_REASONS`), direction
(up, down), webhook delivery outcome. Never a package, key, client, target, exit address or
agent id: per-package figures are the admin API's and the dashboard's. The families and
labels are listed in `FAMILIES` (tests check the exposition against it, and the Grafana
dashboard and alert rules against the exposition).

The route handler is `async`, so the collector runs on the event loop, the only thread that
writes these figures: a scrape sees one consistent moment.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from exitgate import __version__
from exitgate.model import Node, NodeKind, NodeState
from exitgate.observe.stats import AUTH_REASONS, LIMIT_KINDS, Histogram, LiveStats

# name (as exposed, counters with _total) → label names. The contract of /metrics.
FAMILIES: dict[str, tuple[str, ...]] = {
    "exitgate_build_info": ("version", "python"),
    "exitgate_start_time_seconds": (),
    "exitgate_requests_total": ("protocol", "code"),
    "exitgate_connections_active": (),
    "exitgate_tunnels_active": (),
    "exitgate_bytes_total": ("direction",),
    "exitgate_exit_connect_duration_seconds": ("kind",),
    "exitgate_request_duration_seconds": ("protocol",),
    "exitgate_nodes": ("kind", "state"),
    "exitgate_agents_connected": (),
    "exitgate_agent_reconnects_total": (),
    "exitgate_sessions_live": (),
    "exitgate_limit_rejections_total": ("limit",),
    "exitgate_auth_failures_total": ("reason",),
    "exitgate_usage_flush_lag_seconds": (),
    "exitgate_webhook_deliveries_total": ("outcome",),
    "exitgate_accesslog_lines_total": (),
    "exitgate_accesslog_dropped_total": (),
}


@dataclass(slots=True)
class Sources:
    """What the collector reads besides `LiveStats`; each part may be absent (None)."""

    stats: LiveStats
    nodes: Callable[[], Iterable[Node]] | None = None
    agents: Callable[[], tuple[int, int]] | None = None  # (connected, reconnects)
    sessions: Sized | None = None
    flushed_at: Callable[[], float] | None = None  # wall time of the last complete flush


def _histogram(name: str, doc: str, label: str, data: dict[str, Histogram]) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=[label])
    for value, hist in sorted(data.items()):
        family.add_metric([str(value)], hist.cumulative(), hist.sum)
    return family


class GatewayCollector(Collector):
    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterable[Metric]:
        src = self.sources
        stats = src.stats
        info = InfoMetricFamily("exitgate_build", "exitgate version and Python runtime")
        info.add_metric([], {"version": __version__, "python": platform.python_version()})
        yield info
        yield GaugeMetricFamily(
            "exitgate_start_time_seconds", "Process start, Unix time", value=stats.started_at
        )

        requests = CounterMetricFamily(
            "exitgate_requests",
            "Finished tunnels, SOCKS5 connections and forwarded requests, by listener "
            "protocol and outcome code (OK, ABORTED or the error code)",
            labels=["protocol", "code"],
        )
        for (protocol, code), n in sorted(stats.outcomes.items()):
            requests.add_metric([str(protocol), str(code)], n)
        yield requests

        yield GaugeMetricFamily(
            "exitgate_connections_active",
            "Client connections open on the proxy listeners",
            value=stats.connections_active,
        )
        yield GaugeMetricFamily(
            "exitgate_tunnels_active",
            "Spliced tunnels and forwarded requests in flight",
            value=stats.tunnels_active,
        )
        up, down = stats.bytes()
        relayed = CounterMetricFamily(
            "exitgate_bytes",
            "Bytes relayed (up: client to target, down: target to client), counted per chunk "
            "while tunnels are open",
            labels=["direction"],
        )
        relayed.add_metric(["up"], up)
        relayed.add_metric(["down"], down)
        yield relayed

        yield _histogram(
            "exitgate_exit_connect_duration_seconds",
            "Time to open a connection to the target through an exit, successful dials",
            "kind",
            {str(k): v for k, v in stats.connect_seconds.items()},
        )
        yield _histogram(
            "exitgate_request_duration_seconds",
            "Request arrival to end (a tunnel: to its close), by listener protocol",
            "protocol",
            {str(k): v for k, v in stats.request_seconds.items()},
        )

        if src.nodes is not None:
            counts = {(k.value, s.value): 0 for k in NodeKind for s in NodeState}
            for node in src.nodes():
                counts[(node.kind.value, node.state.value)] += 1
            nodes = GaugeMetricFamily(
                "exitgate_nodes", "Exit nodes by kind and state", labels=["kind", "state"]
            )
            for (kind, state), n in sorted(counts.items()):
                nodes.add_metric([kind, state], n)
            yield nodes

        if src.agents is not None:
            connected, reconnects = src.agents()
            yield GaugeMetricFamily(
                "exitgate_agents_connected", "Node agents connected to the hub", value=connected
            )
            yield CounterMetricFamily(
                "exitgate_agent_reconnects",
                "Agent registrations of an id that had registered before since start",
                value=reconnects,
            )

        # With a shared (Redis) session store there is no cheap count: the family is listed
        # without a sample, and the admin API lists the sessions.
        yield GaugeMetricFamily(
            "exitgate_sessions_live",
            "Sticky sessions held in this instance's store (expired ones not yet reclaimed "
            "included); no sample with a shared session store",
            value=len(src.sessions) if src.sessions is not None else None,
        )

        limits = CounterMetricFamily(
            "exitgate_limit_rejections",
            "Requests refused or stopped by a package limit, by limit kind",
            labels=["limit"],
        )
        for kind in LIMIT_KINDS:
            limits.add_metric([kind], stats.limit_rejections.get(kind, 0))
        yield limits
        auth = CounterMetricFamily(
            "exitgate_auth_failures",
            "Authentication failures by reason",
            labels=["reason"],
        )
        for reason in AUTH_REASONS:
            auth.add_metric([reason], stats.auth_failures.get(reason, 0))
        yield auth

        if src.flushed_at is not None:
            yield GaugeMetricFamily(
                "exitgate_usage_flush_lag_seconds",
                "Seconds since the usage flush last wrote everything to the store",
                value=max(0.0, time.time() - src.flushed_at()),
            )

        hooks = CounterMetricFamily(
            "exitgate_webhook_deliveries",
            "Webhook delivery attempts by outcome",
            labels=["outcome"],
        )
        for outcome, n in sorted(stats.webhook_deliveries.items()):
            hooks.add_metric([str(outcome)], n)
        yield hooks

        yield CounterMetricFamily(
            "exitgate_accesslog_lines", "Access-log lines queued", value=stats.accesslog_lines
        )
        yield CounterMetricFamily(
            "exitgate_accesslog_dropped",
            "Access-log lines dropped: the queue was full or the sink refused the write",
            value=stats.accesslog_dropped + stats.accesslog_failed,
        )


def metrics_router(sources: Sources) -> APIRouter:
    """`GET /metrics` over a registry of its own (several gateways may share a process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(sources))
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
