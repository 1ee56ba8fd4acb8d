"""The dashboard's `/v1` twins, behind the admin token: whatever a page shows or does that the
account API did not already cover (live figures, history, agents, coverage, node health, every
live session, adding credits, the proxy tester) is an API call too."""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field, field_validator

from exitgate.admin.dashboard import tester, views
from exitgate.admin.dashboard.core import Parts
from exitgate.admin.schemas import OrgOut

HEALTH_FIELDS = frozenset(
    {"id", "state", "breaker", "inflight", "recent_failures", "bytes_up", "bytes_down"}
    | {"connects", "connect_failures", "connect_ms_avg", "connect_ms_last"}
)


class CreditsAdd(BaseModel):
    delta: float = Field(strict=True, allow_inf_nan=False)


class TesterRun(BaseModel):
    url: str = Field(min_length=1, max_length=2048)
    rules: str = Field(default="country-any", max_length=500)
    key: str = Field(min_length=1, max_length=200)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return tester.check_url(v)


def routes(parts: Parts) -> APIRouter:
    r = APIRouter(tags=["dashboard"])

    @r.get("/v1/stats")
    async def stats() -> dict[str, Any]:
        return await views.overview(parts)

    @r.get("/v1/stats/history")
    async def history(range: str = "hour") -> dict[str, Any]:
        if range not in views.RANGES:
            raise HTTPException(422, f"range: one of {', '.join(views.RANGES)}")
        return await views.history(parts, range)

    @r.get("/v1/agents")
    async def agents() -> list[dict[str, Any]]:
        return views.agents(parts)

    @r.get("/v1/coverage")
    async def coverage() -> dict[str, list[dict[str, Any]]]:
        return await views.coverage(parts)

    @r.get("/v1/nodes/{node_id}/health")
    async def node_health(node_id: str) -> dict[str, Any]:
        node = await parts.service.get_node(node_id)
        row = next(n for n in await views.nodes(parts) if n["id"] == node.id)
        return {k: v for k, v in row.items() if k in HEALTH_FIELDS}

    @r.get("/v1/sessions/live")
    async def live_sessions() -> list[dict[str, Any]]:
        return await views.live_sessions(parts)

    @r.post("/v1/orgs/{org_id}/credits")
    async def add_credits(org_id: str, body: CreditsAdd) -> OrgOut:
        if not math.isfinite(body.delta):
            raise HTTPException(422, "delta: a finite number")
        return OrgOut.of(await parts.service.add_credits(org_id, body.delta))

    @r.post("/v1/tester")
    async def run_tester(body: TesterRun) -> dict[str, Any]:
        return (await tester.run(parts, body.url, body.rules, body.key)).as_dict()

    return r
