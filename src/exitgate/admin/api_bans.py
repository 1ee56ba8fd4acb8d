"""Admin API for per-domain exit bans (issue 13), mounted behind the admin token.

    GET    /v1/packages/{id}/bans                      live bans, by domain
    POST   /v1/packages/{id}/bans                      {"domain", "node_id", "ttl"}: ban by hand
    DELETE /v1/packages/{id}/bans                      lift every ban of the package
    DELETE /v1/packages/{id}/bans/{domain}             lift the domain's bans
    DELETE /v1/packages/{id}/bans/{domain}/{node_id}   lift one ban

Deletes answer `{"lifted": n}` (0 is not an error: a ban may have just expired); an unknown
package is a 404 everywhere. Bans are per instance until they move to a shared store.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from exitgate.routing.domains import MAX_BAN_TTL, BanTable, domain_of
from exitgate.store.bans import Ban


class BanIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    domain: str = Field(min_length=1, max_length=253)
    node_id: str = Field(min_length=1, max_length=80)
    ttl: int = Field(default=600, strict=True, ge=1, le=MAX_BAN_TTL)


class BanOut(BaseModel):
    domain: str
    node_id: str
    created: float
    until: float
    expires_in: float
    reason: str

    @classmethod
    def of(cls, ban: Ban, now: float) -> BanOut:
        return cls(
            domain=ban.domain,
            node_id=ban.node_id,
            created=ban.created,
            until=ban.until,
            expires_in=round(max(ban.until - now, 0.0), 3),
            reason=ban.reason,
        )


class Lifted(BaseModel):
    lifted: int


def bans_router(
    bans: BanTable, package_known: Callable[[str], bool], node_known: Callable[[str], bool]
) -> APIRouter:
    r = APIRouter(prefix="/v1/packages/{package_id}/bans", tags=["bans"])

    def known(package_id: str) -> None:
        if not package_known(package_id):
            raise HTTPException(404, f"package not found: {package_id}")

    @r.get("")
    async def list_bans(package_id: str) -> list[BanOut]:
        known(package_id)
        now = time.time()
        return [BanOut.of(b, now) for b in await bans.list(package_id)]

    @r.post("", status_code=201)
    async def add_ban(package_id: str, body: BanIn) -> BanOut:
        known(package_id)
        if not node_known(body.node_id):
            raise HTTPException(422, f"node not found: {body.node_id}")
        ban = await bans.ban(package_id, domain_of(body.domain), body.node_id, body.ttl, "admin")
        return BanOut.of(ban, time.time())

    @r.delete("")
    async def lift_all(package_id: str) -> Lifted:
        known(package_id)
        return Lifted(lifted=await bans.lift(package_id))

    @r.delete("/{domain}")
    async def lift_domain(package_id: str, domain: str) -> Lifted:
        known(package_id)
        return Lifted(lifted=await bans.lift(package_id, domain))

    @r.delete("/{domain}/{node_id}")
    async def lift_one(package_id: str, domain: str, node_id: str) -> Lifted:
        known(package_id)
        return Lifted(lifted=await bans.lift(package_id, domain, node_id))

    return r
