"""The admin surface of a running gateway: the routes that read its live parts (errors,
node health, sessions, bans), what /metrics and the self-service routes read, the dashboard,
and the uvicorn server that serves them all on `[admin] listen`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import time
from collections.abc import Iterator, Sized
from typing import TYPE_CHECKING

import uvicorn
from fastapi import APIRouter, HTTPException

from exitgate.admin.api import create_admin_app
from exitgate.admin.api_bans import bans_router
from exitgate.admin.api_self import GatewayReads
from exitgate.admin.api_webhooks import webhook_routes
from exitgate.admin.dashboard import Dashboard, Parts
from exitgate.cluster.health import merge as merge_health
from exitgate.observe.metrics import Sources, metrics_router
from exitgate.settings import split_hostport
from exitgate.store.degraded import FailoverCounters
from exitgate.targeting import TargetingCounts
from exitgate.tasks import spawn

if TYPE_CHECKING:
    from exitgate.app import Gateway

log = logging.getLogger("exitgate")


class _AdminServer(uvicorn.Server):
    """uvicorn without its signal capture: `serve` owns SIGINT/SIGTERM for every part."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def gateway_routers(gw: Gateway) -> list[APIRouter]:
    """The admin API routes that read the running gateway: a package's errors (every
    instance's), node health, sessions, bans."""
    router = APIRouter()
    recorder = gw.recorder
    registry = gw.registry
    sessions = gw.sessions
    shared_errors = gw.error_log
    board = gw.health_board
    health = gw.health

    def known(package_id: str) -> None:
        if registry.package(package_id) is None:
            raise HTTPException(404, f"package not found: {package_id}")

    @router.get("/v1/packages/{package_id}/errors", tags=["packages"])
    async def package_errors(package_id: str) -> list[dict[str, object]]:
        known(package_id)
        if shared_errors is not None:
            try:
                return await shared_errors.recent(package_id)  # every instance's errors
            except Exception as exc:
                log.warning("shared errors log unreadable, showing this instance's: %s", exc)
        return recorder.recent_errors(package_id)

    @router.get("/v1/health/nodes", tags=["nodes"])
    async def node_health() -> dict[str, dict[str, object]]:
        """Nodes some instance has news of (breaker not closed, failures, penalty): the
        worst state and each instance's view (healthy nodes are left out)."""
        if board is not None:
            return await board.read()
        return merge_health({gw.instance_id: health.summary()})

    @router.get("/v1/sessions", tags=["sessions"])
    async def list_sessions(package_id: str) -> list[dict[str, object]]:
        known(package_id)
        now = time.time()
        return [
            {
                "package_id": r.key.package_id,
                "session": r.key.session_id,
                "node_id": r.node_id,
                "rules": r.rules,
                "created": r.created,
                "age": round(now - r.created, 3),
                "last_used": r.last_used,
                "node_since": r.assigned,
                "requests": r.requests,
                "expires": r.expires(sessions.idle_timeout),
            }
            for r in await sessions.list(package_id)
            if not r.provisional
        ]

    @router.delete("/v1/sessions/{package_id}/{session_id}", tags=["sessions"], status_code=204)
    async def end_session(package_id: str, session_id: str) -> None:
        known(package_id)
        if not await sessions.end(package_id, session_id):
            raise HTTPException(404, f"session not found: {session_id}")

    def node_known(node_id: str) -> bool:
        return gw.index.get(node_id) is not None

    bans = bans_router(gw.bans, lambda p: registry.package(p) is not None, node_known)
    return [router, bans]

def metrics_sources(gw: Gateway) -> Sources:
    """What /metrics reads, live."""
    hub, usage = gw.hub, gw.usage

    def agents() -> tuple[int, int]:
        return (len(hub.live), hub.reconnects) if hub is not None else (0, 0)

    def flushed_at() -> float:
        return usage.flushed_at if usage is not None else time.time()

    store = gw.sessions.store
    counters = gw.counters

    def degraded() -> dict[str, int]:
        sessions = int(getattr(store, "down", False))
        limits = int(isinstance(counters, FailoverCounters) and counters.degraded)
        return {"sessions": sessions, "limits": limits}

    def interlink() -> tuple[int, int]:
        link = gw.interlink
        return (link.forwarded, link.carried) if link is not None else (0, 0)

    udp = gw.proxy.ctx.udp if gw.proxy is not None else None
    return Sources(
        stats=gw.stats,
        nodes=gw.registry.nodes.values,
        agents=agents,
        sessions=store if isinstance(store, Sized) else None,
        flushed_at=flushed_at,
        degraded=degraded,  # 0 without Redis: the families are always there
        interlink=interlink,
        udp=udp.stats if udp is not None else None,
    )

def self_reads(gw: Gateway) -> GatewayReads:
    """What the catalogue and self-service routes read (issue 13): memory, no database."""
    if gw.usage is None or gw.counters is None:
        raise RuntimeError("start usage and counters before the admin API")
    return GatewayReads(
        registry=gw.registry,
        targeting=TargetingCounts.follow(gw.registry),
        recorder=gw.recorder,
        shared_errors=None if gw.error_log is None else gw.error_log.recent,
        sessions=gw.sessions,
        counters=gw.counters,
        usage_totals=gw.usage.totals,
        usage_buckets=gw.usage.buckets,
        bans=functools.partial(_package_bans, gw),
    )

async def _package_bans(gw: Gateway, package_id: str) -> list[dict[str, object]]:
    now = time.time()
    return [
        {"domain": b.domain, "node_id": b.node_id, "reason": b.reason,
         "created": b.created, "until": b.until, "left": round(b.until - now, 3)}
        for b in await gw.bans.list(package_id)
    ]  # fmt: skip

def build_dashboard(gw: Gateway) -> Dashboard:
    """The web dashboard (issue 11), on the instance that serves the admin API."""
    assert gw.service is not None and gw.usage is not None and gw.history is not None
    parts = Parts(
        gw.service, gw.usage, gw.recorder, gw.sessions, gw.health, gw.stats,
        gw.history.store, gw.history, gw.hub, gw.proxy_bound,
        gw.node_bytes,
        gw.node_connects,
        gw.error_log,
        gw.webhooks,
    )
    return Dashboard(parts, gw.token, gw.settings.dashboard)

async def start_admin(gw: Gateway) -> tuple[str, int]:
    """The admin API (with the dashboard and /metrics) on `[admin] listen`; its address."""
    if not gw.settings.admin.listen:
        return ("", 0)  # a worker other than the first: worker 0 serves the admin API
    if gw.service is None or gw.usage is None:
        raise RuntimeError("start the store and usage before the admin API")
    dashboard = build_dashboard(gw) if gw.settings.dashboard.enabled else None
    app = create_admin_app(
        gw.service,
        gw.token,
        extra_routers=[
            *gateway_routers(gw),
            *([] if gw.webhooks is None else [webhook_routes(gw.webhooks)]),
            *(dashboard.api_routers() if dashboard else []),
        ],
        public_routers=[metrics_router(metrics_sources(gw))],
        usage_provider=gw.usage.totals,
        usage_buckets=gw.usage.buckets,
        reads=self_reads(gw),
        max_body_bytes=gw.settings.admin.max_body_bytes,
    )
    if dashboard is not None:
        dashboard.install(app)
    host, port = split_hostport(gw.settings.admin.listen)
    # Bound here, not by uvicorn: a busy port is then an OSError for `serve` to report,
    # instead of uvicorn's sys.exit inside a task.
    sock = socket.create_server(
        (host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET
    )
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = _AdminServer(config)
    gw.admin_server = server
    task = gw.admin_task = spawn(server.serve(sockets=[sock]), "admin-api")
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("admin API stopped during start")
        await asyncio.sleep(0.01)
    sock = server.servers[0].sockets[0].getsockname()
    return str(sock[0]), int(sock[1])
