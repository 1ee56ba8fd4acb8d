"""The web dashboard on the admin listener (issue 11): server-rendered pages (Jinja2, htmx)
with uPlot charts, vendored in `static/` (see `static/VENDORED.md`); no CDN, no build step.

`Dashboard(parts, token, settings)` gives the routers: `api_routers()` go behind the admin
token (the `/v1` twins of what the pages show), `install(app)` adds the pages, the static
files and the session guard (`auth.DashboardGuard`) to the admin app.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.staticfiles import StaticFiles

from exitgate.admin.dashboard import api, hooks, pages, pool
from exitgate.admin.dashboard.auth import DashboardGuard, SessionBook
from exitgate.admin.dashboard.core import HERE, Pages, Parts
from exitgate.settings import DashboardSettings


class Dashboard:
    def __init__(self, parts: Parts, token: str, settings: DashboardSettings) -> None:
        self.parts = parts
        self.token = token
        self.book = SessionBook(settings.session_ttl)
        self.pages = Pages()

    def api_routers(self) -> list[APIRouter]:
        return [api.routes(self.parts)]

    def install(self, app: FastAPI) -> None:
        app.include_router(pages.routes(self.parts, self.pages, self.book, self.token))
        app.include_router(pool.routes(self.parts, self.pages))
        app.include_router(hooks.routes(self.parts, self.pages))
        app.mount("/static", StaticFiles(directory=HERE / "static"), name="dashboard-static")
        app.add_middleware(DashboardGuard, book=self.book)


__all__ = ["Dashboard", "Parts"]
