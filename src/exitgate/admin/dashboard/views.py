"""The dashboard's figures, shaped once for both the pages and their `/v1` API twins."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

from exitgate.admin.dashboard.core import Parts
from exitgate.admin.schemas import NodeOut
from exitgate.model import Node, NodeState
from exitgate.observe.node_figures import NodeConnects
from exitgate.routing.health import BreakerState
from exitgate.services import NodeFilter

log = logging.getLogger("exitgate.dashboard")
RANGES = {"hour": (3600, 60), "day": (86400, 600), "week": (7 * 86400, 3600)}  # span, step


async def overview(parts: Parts) -> dict[str, Any]:
    nodes = await parts.service.list_nodes()
    healthy = sum(
        1
        for n in nodes
        if n.state is NodeState.ONLINE and parts.health.state(n.id) is BreakerState.CLOSED
    )
    rates = parts.writer.rates
    up, down = parts.stats.bytes()
    return {
        "up_per_s": rates.bytes_up,
        "down_per_s": rates.bytes_down,
        "requests_per_s": round(rates.requests, 2),
        "error_rate": round(rates.error_rate, 4),
        "tunnels_active": parts.stats.tunnels_active,
        "connections_active": parts.stats.connections_active,
        "nodes_healthy": healthy,
        "nodes_total": len(nodes),
        "sessions_live": len(await live_sessions(parts)),
        "bytes_up_total": up,
        "bytes_down_total": down,
        "requests_total": parts.stats.requests_total,
        "errors_total": parts.stats.errors_total,
    }


async def history(parts: Parts, span: str) -> dict[str, Any]:
    """uPlot's shape: x (epoch seconds) and one list per series, per-second rates."""
    seconds, step = RANGES.get(span, RANGES["hour"])
    now = time.time()
    rows = await asyncio.to_thread(parts.history.read, now - seconds, None, step)
    return {
        "range": span if span in RANGES else "hour",
        "step": step,
        "from": int(now - seconds),
        "to": int(now),
        "x": [r.minute for r in rows],
        "bytes_up": [round(r.bytes_up / step, 1) for r in rows],
        "bytes_down": [round(r.bytes_down / step, 1) for r in rows],
        "requests": [round(r.requests / step, 3) for r in rows],
        "errors": [round(r.errors / step, 3) for r in rows],
        "tunnels": [r.tunnels for r in rows],
    }


def _node_row(parts: Parts, node: Node) -> dict[str, Any]:
    out = NodeOut.of(node).model_dump(mode="json")  # the url comes redacted
    out["breaker"] = parts.health.state(node.id).value
    out["inflight"] = parts.health.inflight(node.id)
    out["recent_failures"] = round(parts.health.failure_score(node.id), 2)
    out["bytes_up"], out["bytes_down"] = parts.node_bytes.get(node.id, (0, 0))
    c = parts.node_connects.get(node.id, NodeConnects())
    out["connects"], out["connect_failures"] = c.connects, c.failures
    out["connect_ms_avg"], out["connect_ms_last"] = round(c.avg_ms, 1), round(c.last_ms, 1)
    return out


async def nodes(parts: Parts, filters: NodeFilter | None = None) -> list[dict[str, Any]]:
    return [_node_row(parts, n) for n in await parts.service.list_nodes(filters)]


def agents(parts: Parts) -> list[dict[str, Any]]:
    if parts.hub is None:
        return []
    now = time.monotonic()
    rows = []
    for agent_id, link in sorted(parts.hub.live.items()):
        hello = link.hello
        rows.append(
            {
                "agent_id": agent_id,
                "address": link.peer,
                "ip": link.ip,
                "version": hello.version if hello else "",
                "country": hello.attrs.country if hello else "",
                "network": hello.attrs.network.value if hello else "",
                "streams": len(link.streams),
                "draining": link.draining,
                "last_heartbeat_s": round(now - link.last_rx, 1),
                "rtt_ms": round(link.rtt * 1000, 1),
                "connected_s": round(now - link.started, 1),
            }
        )
    return rows


async def live_sessions(parts: Parts) -> list[dict[str, Any]]:
    now = time.time()
    out = []
    for package in await parts.service.list_packages():
        for r in await parts.sessions.list(package.id):
            if r.provisional:
                continue
            out.append(
                {
                    "package_id": r.key.package_id,
                    "session": r.key.session_id,
                    "node_id": r.node_id,
                    "rules": r.rules,
                    "age": round(now - r.created, 1),
                    "requests": r.requests,
                    "last_used": r.last_used,
                }
            )
    return out


async def coverage(parts: Parts) -> dict[str, list[dict[str, Any]]]:
    found = await parts.service.list_nodes()
    out: dict[str, list[dict[str, Any]]] = {}
    for name in ("country", "city", "isp", "asn", "network"):
        total: Counter[str] = Counter()
        online: Counter[str] = Counter()
        for n in found:
            value = str(getattr(n.attrs, name) or "")
            if value in ("", "0"):
                continue
            total[value] += 1
            if n.state is NodeState.ONLINE:
                online[value] += 1
        out[name] = [{"value": v, "nodes": c, "online": online[v]} for v, c in total.most_common()]
    return out


async def recent_errors(parts: Parts, package_id: str) -> list[dict[str, object]]:
    """As `GET /v1/packages/{id}/errors`: every instance's, this one's if Redis is unreadable."""
    if parts.shared_errors is not None:
        try:
            return await parts.shared_errors.recent(package_id)
        except Exception as exc:
            log.warning("shared errors log unreadable, showing this instance's: %s", exc)
    return parts.recorder.recent_errors(package_id)
