"""What the dashboard reads and writes through, and its template rendering.

`Parts` holds the gateway's own objects: the same `AccountService` and `UsageService` as the
admin API (so anything the UI does, the API does too), the `WebhookService` of
`/v1/webhooks`, plus the live views the API routes of
`app.py` read (recorder, session table, node health, hub, live stats, history).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse

from exitgate.admin.dashboard.auth import Session, session_of
from exitgate.observe.node_figures import NodeConnects
from exitgate.observe.stats import LiveStats
from exitgate.recorder import Recorder
from exitgate.routing.health import NodeHealth
from exitgate.routing.sessions import SessionTable
from exitgate.services import AccountService, UsageService
from exitgate.store.history import HistoryStore, HistoryWriter

if TYPE_CHECKING:
    from exitgate.hub.server import Hub
    from exitgate.store.redis_errors import RedisErrorLog
    from exitgate.webhooks.service import WebhookService

HERE = Path(__file__).parent
NAV = (
    ("/", "Overview"),
    ("/packages", "Packages"),
    ("/orgs", "Organizations"),
    ("/nodes", "Nodes"),
    ("/agents", "Agents"),
    ("/sessions", "Live sessions"),
    ("/coverage", "Coverage"),
    ("/webhooks", "Webhooks"),
    ("/tester", "Proxy tester"),
)


@dataclass(slots=True)
class Parts:
    service: AccountService
    usage: UsageService
    recorder: Recorder
    sessions: SessionTable
    health: NodeHealth
    stats: LiveStats
    history: HistoryStore
    writer: HistoryWriter
    hub: Hub | None
    proxy: tuple[str, int]  # the gateway's own proxy listener, for the tester
    node_bytes: dict[str, list[int]]  # node id → [up, down] relayed since start
    node_connects: dict[str, NodeConnects]  # node id → connect counts and times
    shared_errors: RedisErrorLog | None = None  # every instance's recent errors (Redis)
    webhooks: WebhookService | None = None  # the same service as /v1/webhooks


def _bytes(n: float | None) -> str:
    if n is None:
        return "∞"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def _when(t: float | None) -> str:
    if not t:
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ago(t: float | None) -> str:
    if not t:
        return "-"
    s = max(0.0, time.time() - t)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["bytes"] = _bytes
    env.filters["when"] = _when
    env.filters["ago"] = _ago
    return env


class Pages:
    """Template rendering with the page chrome (nav, flash, CSRF token)."""

    def __init__(self) -> None:
        self.env = environment()

    def render(
        self,
        request: Request,
        name: str,
        context: Mapping[str, Any] | None = None,
        status: int = 200,
        session: Session | None = None,
    ) -> HTMLResponse:
        if session is None and name != "login.html":
            session = session_of(request)
        base: dict[str, Any] = {
            "nav": NAV,
            "path": request.url.path,
            "csrf": session.csrf if session else "",
            "flash": session.take_flash() if session else [],
        }
        html = self.env.get_template(name).render(base | dict(context or {}))
        return HTMLResponse(html, status_code=status)
