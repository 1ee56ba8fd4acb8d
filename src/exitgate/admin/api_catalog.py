"""`GET /v1/catalog?country=&network=`: the targeting catalogue, for the admin (issue 13).

Read from `targeting.TargetingCounts`, which follows the registry's node changes exactly as
the routing index does, never from the database: it shows what can be targeted at this
moment, and costs no scan per read. Mounted behind the admin token.
A bad `country` (not ISO 3166-1 alpha-2) or `network` (not res, mob, dc) is a 422 naming
the query field. The package holder's view of the same thing is `GET /v1/self/catalog`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from exitgate.admin.schemas import Country
from exitgate.model import Network
from exitgate.targeting import TargetingCounts


def catalog_routes(targeting: TargetingCounts) -> APIRouter:
    r = APIRouter(tags=["catalog"])

    @r.get("/v1/catalog")
    async def catalog(
        country: Annotated[Country | None, Query(description="ISO 3166-1 alpha-2")] = None,
        network: Annotated[Network | None, Query()] = None,
    ) -> dict[str, Any]:
        """Countries, regions, cities, ISPs and ASNs with online nodes now, with counts."""
        return targeting.catalog(country=country or None, network=network)

    return r


__all__ = ["catalog_routes"]
