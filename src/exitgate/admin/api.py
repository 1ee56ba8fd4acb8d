"""The admin HTTP API (SPEC 9): organizations, packages, nodes, usage.

`create_admin_app` builds the FastAPI app over an `AccountService`. Everything needs
`Authorization: Bearer <token>` (compared in constant time) except `/healthz` and whatever
the caller mounts through `public_routers` (`/metrics`, the dashboard). `/openapi.json` is
authenticated too: SPEC 9 leaves only `/healthz` and `/metrics` open, so the interactive
docs pages (which could not send the token) are off.

`admin.guard.AdminGuard` wraps the app: it checks the token for `/v1` and `/openapi.json`
before routing and before any body is read, caps every body (`max_body_bytes`, 413) and
bounds JSON depth (422). The per-route token dependency stays as a second lock.

Error answers are JSON `{"detail": ...}`:
- 401 `"missing or invalid admin token"` with `WWW-Authenticate: Bearer`;
- 404 `"package not found: pkg_..."` for unknown ids in the path;
- 422 `[{"loc": ["body", "rps_limit"], "msg": ..., "type": ...}]`: FastAPI's shape without
  its `input` echo, since the input may hold a node's credentials. An unknown `org_id` in a
  package body is a 422 on `org_id` (the body refers to nothing; the path exists).

Usage: `GET /v1/packages/{id}` carries `usage` totals from `usage_provider`;
`GET /v1/packages/{id}/usage?since=&until=&limit=` lists hourly buckets from `usage_buckets`,
newest first: those overlapping [since, until) (ISO 8601; no timezone means UTC), at most
`limit` (default 1000, at most 10000). Without a provider a package has no usage (zeros, []).

With `reads` (issue 13): `GET /v1/catalog` behind the token (`api_catalog`) and the package
holders' `/v1/self/...` routes outside it, authenticated by the package key (`api_self`).
"""

from __future__ import annotations

import hmac
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from exitgate.admin.api_catalog import catalog_routes
from exitgate.admin.api_self import GatewayReads, self_routes
from exitgate.admin.guard import DEFAULT_MAX_BODY, AdminGuard
from exitgate.admin.schemas import (
    Country,
    GeoName,
    KeyOut,
    NodeCreate,
    NodeOut,
    NodePatch,
    OrgCreate,
    OrgOut,
    OrgPatch,
    PackageCreate,
    PackageCreated,
    PackageDetail,
    PackageOut,
    PackagePatch,
    Usage,
    UsageBucketOut,
    epoch_of,
)
from exitgate.model import Limits as PackageLimits
from exitgate.model import Network, NodeAttrs, NodeKind, NodeState
from exitgate.services import AccountService, NodeFilter
from exitgate.store.base import (
    UNSET,
    NewNode,
    NewPackage,
    NodeUpdate,
    NotFound,
    OrgUpdate,
    PackageUpdate,
    UsageBucket,
)

UsageProvider = Callable[[str], Mapping[str, int] | Awaitable[Mapping[str, int]]]
# (package_id, since, until, limit) → buckets, newest first; times in epoch seconds
UsageBuckets = Callable[[str, float | None, float | None, int], Awaitable[Sequence[UsageBucket]]]
MAX_BUCKETS = 10_000

_bearer = HTTPBearer(auto_error=False, description="the admin token")


def create_admin_app(
    service: AccountService,
    token: str,
    *,
    extra_routers: Sequence[APIRouter] = (),
    public_routers: Sequence[APIRouter] = (),
    usage_provider: UsageProvider | None = None,
    usage_buckets: UsageBuckets | None = None,
    reads: GatewayReads | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY,
) -> FastAPI:
    """The admin app. `extra_routers` are mounted behind the token, `public_routers` not."""
    if not token:
        raise ValueError("the admin token must not be empty")
    expected = token.encode("utf-8")

    async def require_token(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        given = creds.credentials.encode("utf-8") if creds is not None else b""
        if not hmac.compare_digest(given, expected):
            raise HTTPException(
                status_code=401,
                detail="missing or invalid admin token",
                headers={"WWW-Authenticate": "Bearer"},
            )

    app = FastAPI(
        title="exitgate admin API",
        version="1",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(AdminGuard, token=token, max_body_bytes=max_body_bytes)
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(RequestValidationError, _invalid)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    private = APIRouter(dependencies=[Depends(require_token)])

    @private.get("/openapi.json", include_in_schema=False)
    async def openapi() -> dict[str, Any]:
        return app.openapi()

    private.include_router(_org_routes(service))
    private.include_router(_package_routes(service, usage_provider, usage_buckets))
    private.include_router(_node_routes(service))
    for router in extra_routers:
        private.include_router(router)
    if reads is not None:  # issue 13: the catalogue (admin), self-service (package key)
        private.include_router(catalog_routes(reads.targeting))
        app.include_router(self_routes(reads))
    app.include_router(private)
    for router in public_routers:
        app.include_router(router)
    return app


async def _not_found(_request: Request, exc: Exception) -> Response:
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def _invalid(_request: Request, exc: Exception) -> Response:
    found = exc.errors() if isinstance(exc, RequestValidationError) else []
    errors = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type", "")}
        for e in found
    ]
    return JSONResponse({"detail": errors}, status_code=422)


def _field_error(
    field: str, msg: str, kind: str = "value_error", where: str = "body"
) -> RequestValidationError:
    return RequestValidationError([{"loc": (where, field), "msg": msg, "type": kind}])


# -- organizations


def _org_routes(service: AccountService) -> APIRouter:
    r = APIRouter(prefix="/v1/orgs", tags=["orgs"])

    @r.post("", status_code=201)
    async def create_org(body: OrgCreate) -> OrgOut:
        return OrgOut.of(await service.create_org(body.name, body.credits))

    @r.get("")
    async def list_orgs() -> list[OrgOut]:
        return [OrgOut.of(o) for o in await service.list_orgs()]

    @r.get("/{org_id}")
    async def get_org(org_id: str) -> OrgOut:
        return OrgOut.of(await service.get_org(org_id))

    @r.patch("/{org_id}")
    async def update_org(org_id: str, body: OrgPatch) -> OrgOut:
        given = body.model_fields_set
        update = OrgUpdate(
            name=body.name if "name" in given and body.name is not None else UNSET,
            credits=body.credits if "credits" in given else UNSET,
        )
        return OrgOut.of(await service.update_org(org_id, update))

    return r


# -- packages


def _package_routes(
    service: AccountService,
    usage_provider: UsageProvider | None,
    usage_buckets: UsageBuckets | None,
) -> APIRouter:
    r = APIRouter(prefix="/v1/packages", tags=["packages"])

    async def usage_of(package_id: str) -> Usage:
        if usage_provider is None:
            return Usage()
        found = usage_provider(package_id)
        if inspect.isawaitable(found):
            found = await found
        return Usage.model_validate(dict(found))

    @r.post("", status_code=201)
    async def create_package(body: PackageCreate) -> PackageCreated:
        new = NewPackage(
            org_id=body.org_id,
            name=body.name,
            status=body.status,
            limits=PackageLimits(
                rps=body.rps_limit,
                concurrency=body.concurrency_limit,
                traffic_bytes=body.traffic_limit_bytes,
            ),
            ip_allowlist=body.allowlist(),
            protocols=frozenset(body.protocols),
            networks=frozenset(body.networks),
            rules=None if body.rules is None else frozenset(body.rules),
            auth_mode=body.auth_mode,
            autoban=None if body.autoban is None else body.autoban.value(),
        )
        try:
            package, key = await service.create_package(new)
        except NotFound as exc:
            if exc.kind != "org":
                raise
            raise _field_error("org_id", "unknown organization", "not_found") from None
        return PackageCreated(**PackageOut.fields_of(package), key=key)

    @r.get("")
    async def list_packages(org_id: str | None = None) -> list[PackageOut]:
        return [PackageOut.of(p) for p in await service.list_packages(org_id)]

    @r.get("/{package_id}")
    async def get_package(package_id: str) -> PackageDetail:
        package = await service.get_package(package_id)
        usage = await usage_of(package_id)
        return PackageDetail(**PackageOut.fields_of(package), usage=usage)

    @r.patch("/{package_id}")
    async def update_package(package_id: str, body: PackagePatch) -> PackageOut:
        given = body.model_fields_set

        def pick(name: str, value: Any) -> Any:
            return value if name in given else UNSET

        allowlist = body.allowlist()
        update = PackageUpdate(
            name=pick("name", body.name),
            status=pick("status", body.status),
            rps_limit=pick("rps_limit", body.rps_limit),
            concurrency_limit=pick("concurrency_limit", body.concurrency_limit),
            traffic_limit_bytes=pick("traffic_limit_bytes", body.traffic_limit_bytes),
            ip_allowlist=UNSET if allowlist is None else allowlist,
            protocols=UNSET if body.protocols is None else frozenset(body.protocols),
            networks=UNSET if body.networks is None else frozenset(body.networks),
            rules=pick("rules", None if body.rules is None else frozenset(body.rules)),
            auth_mode=UNSET if body.auth_mode is None else body.auth_mode,
            autoban=pick("autoban", None if body.autoban is None else body.autoban.value()),
        )
        return PackageOut.of(await service.update_package(package_id, update))

    @r.get("/{package_id}/usage")
    async def package_usage(
        package_id: str,
        since: Annotated[datetime | None, Query(description="ISO 8601; UTC if no zone")] = None,
        until: Annotated[datetime | None, Query(description="ISO 8601, exclusive")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_BUCKETS)] = 1000,
    ) -> list[UsageBucketOut]:
        """Hourly usage buckets, newest first."""
        first = None if since is None else epoch_of(since)
        last = None if until is None else epoch_of(until)
        if first is not None and last is not None and last <= first:
            raise _field_error("until", "must be later than since", where="query")
        await service.get_package(package_id)  # 404 for an unknown package
        if usage_buckets is None:
            return []
        found = await usage_buckets(package_id, first, last, limit)
        return [UsageBucketOut.of(b) for b in found]

    @r.post("/{package_id}/key")
    async def rotate_key(package_id: str) -> KeyOut:
        return KeyOut(id=package_id, key=await service.rotate_key(package_id))

    return r


# -- nodes


def _node_routes(service: AccountService) -> APIRouter:
    r = APIRouter(prefix="/v1/nodes", tags=["nodes"])

    @r.post("", status_code=201)
    async def create_node(body: NodeCreate) -> NodeOut:
        new = NewNode(
            kind=NodeKind(body.kind),
            attrs=NodeAttrs(
                country=body.country,
                region=body.region,
                city=body.city,
                isp=body.isp,
                asn=body.asn,
                network=body.network,
            ),
            state=body.state,
            url=body.url or "",
            bind_address=body.bind_address or "",
            ip=body.ip,
        )
        return NodeOut.of(await service.create_node(new))

    @r.get("")
    async def list_nodes(
        *,
        kind: NodeKind | None = None,
        state: NodeState | None = None,
        country: Annotated[Country | None, Query()] = None,
        region: Annotated[GeoName | None, Query()] = None,
        city: Annotated[GeoName | None, Query()] = None,
        isp: Annotated[GeoName | None, Query()] = None,
        asn: Annotated[int | None, Query(ge=0, le=4294967295)] = None,
        network: Network | None = None,
    ) -> list[NodeOut]:
        filters = NodeFilter(
            kind=kind,
            state=state,
            country=country,
            region=region,
            city=city,
            isp=isp,
            asn=asn,
            network=network,
        )
        return [NodeOut.of(n) for n in await service.list_nodes(filters)]

    @r.get("/{node_id}")
    async def get_node(node_id: str) -> NodeOut:
        return NodeOut.of(await service.get_node(node_id))

    @r.patch("/{node_id}")
    async def update_node(node_id: str, body: NodePatch) -> NodeOut:
        if body.url is not None or body.bind_address is not None:
            node = await service.get_node(node_id)
            if body.url is not None and node.kind is not NodeKind.UPSTREAM:
                raise _field_error("url", "only upstream nodes have a url")
            if body.bind_address is not None and node.kind is not NodeKind.DIRECT:
                raise _field_error("bind_address", "only direct nodes have a bind_address")

        def pick(value: Any) -> Any:
            return UNSET if value is None else value

        update = NodeUpdate(
            state=pick(body.state),
            country=pick(body.country),
            region=pick(body.region),
            city=pick(body.city),
            isp=pick(body.isp),
            asn=pick(body.asn),
            network=pick(body.network),
            url=pick(body.url),
            bind_address=pick(body.bind_address),
            ip=pick(body.ip),
        )
        return NodeOut.of(await service.update_node(node_id, update))

    @r.delete("/{node_id}", status_code=204)
    async def delete_node(node_id: str) -> Response:
        await service.delete_node(node_id)
        return Response(status_code=204)

    return r


__all__ = ["UsageBuckets", "UsageProvider", "create_admin_app"]
