"""The Webhooks page: endpoints and their delivery log, through `WebhookService` as the admin
API (`admin/api_webhooks.py`) goes, with the API's own schemas for the bounds.

Every change is a CSRF-checked form answered by a redirect and a flash (post/redirect/get),
except the two that make a secret (adding an endpoint, rotating its secret): as the API
returns a secret once, the answer itself shows it (no redirect, `no-store` from the guard)
and no later page ever holds it. The delivery log is a fragment htmx re-reads every few
seconds, so a test event's outcome appears without a reload.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from pydantic import ValidationError

from exitgate.admin.api_webhooks import WebhookCreate
from exitgate.admin.dashboard.auth import session_of
from exitgate.admin.dashboard.core import Pages, Parts
from exitgate.admin.dashboard.forms import Form, back, field, problem
from exitgate.events import EVENT_TYPES
from exitgate.store.base import NotFound
from exitgate.webhooks.guard import DestinationRefused
from exitgate.webhooks.service import ALL, WebhookService

LOG_ROWS = 50  # deliveries shown, newest first
HOME = "/webhooks"


def _where(endpoint_id: str) -> str:
    return f"{HOME}?{urlencode({'endpoint': endpoint_id})}" if endpoint_id else HOME


def routes(parts: Parts, pages: Pages) -> APIRouter:
    r = APIRouter(include_in_schema=False)

    def service() -> WebhookService:
        if parts.webhooks is None:  # the gateway wires it before the admin listener starts
            raise HTTPException(503, "webhooks are not running")
        return parts.webhooks

    async def _log(request: Request) -> dict[str, Any]:
        wanted = request.query_params.get("endpoint", "").strip()
        try:
            rows = await service().list_deliveries(endpoint_id=wanted or None, limit=LOG_ROWS)
        except NotFound:  # an endpoint deleted meanwhile: the whole log instead
            wanted, rows = "", await service().list_deliveries(limit=LOG_ROWS)
        return {"deliveries": rows, "endpoint": wanted}

    async def _page(
        request: Request,
        secret: tuple[str, str] | None = None,
        status: int = 200,
        form: dict[str, Any] | None = None,
    ) -> Response:
        orgs = await parts.service.list_orgs()
        context: dict[str, Any] = {
            "endpoints": await service().list_endpoints(),
            "orgs": orgs,
            "org_names": {o.id: o.name for o in orgs},
            "event_types": sorted(EVENT_TYPES),
            "secret": secret,  # (endpoint id, secret): this answer only
            "form": form or {"url": "", "org_id": "", "events": [ALL], "description": ""},
        }
        context.update(await _log(request))
        return pages.render(request, "webhooks.html", context, status=status)

    @r.get(HOME)
    async def webhooks(request: Request) -> Response:
        return await _page(request)

    @r.get("/fragments/webhook-deliveries")
    async def delivery_log(request: Request) -> Response:
        return pages.render(request, "_deliveries.html", await _log(request))

    @r.post(HOME)
    async def create(request: Request, form: Form) -> Response:
        session = session_of(request)
        given = {
            "url": field(form, "url"),
            "org_id": field(form, "org_id") or None,
            "events": [e for e in form.getlist("events") if isinstance(e, str)] or [ALL],
            "description": field(form, "description"),
        }
        try:
            body = WebhookCreate.model_validate(given)
            endpoint, secret = await service().create_endpoint(
                body.url,
                org_id=body.org_id,
                event_types=body.events,
                description=body.description,
            )
        except (ValueError, ValidationError, DestinationRefused) as exc:
            session.say(problem(exc), "error")
        except NotFound:
            session.say("org_id: unknown organization", "error")
        else:
            session.say(f"endpoint {endpoint.id} added")
            return await _page(request, (endpoint.id, secret), status=201)
        return await _page(request, status=422, form=given | {"org_id": given["org_id"] or ""})

    @r.post(HOME + "/{endpoint_id}/enabled")
    async def set_enabled(request: Request, endpoint_id: str, form: Form) -> Response:
        enabled = field(form, "enabled") == "true"
        await service().update_endpoint(endpoint_id, enabled=enabled)
        session_of(request).say(f"endpoint {endpoint_id} {'enabled' if enabled else 'disabled'}")
        return back(HOME)

    @r.post(HOME + "/{endpoint_id}/delete")
    async def delete(request: Request, endpoint_id: str, form: Form) -> Response:
        await service().delete_endpoint(endpoint_id)
        session_of(request).say(f"endpoint {endpoint_id} deleted")
        return back(HOME)

    @r.post(HOME + "/{endpoint_id}/secret")
    async def rotate(request: Request, endpoint_id: str, form: Form) -> Response:
        secret = await service().rotate_secret(endpoint_id)
        session_of(request).say(f"endpoint {endpoint_id}: new secret, old one no longer signs")
        return await _page(request, (endpoint_id, secret))

    @r.post(HOME + "/{endpoint_id}/test")
    async def send_test(request: Request, endpoint_id: str, form: Form) -> Response:
        delivery = await service().send_test(endpoint_id)
        session_of(request).say(f"test event queued ({delivery.id})")
        return back(_where(endpoint_id))

    @r.post("/webhook-deliveries/{delivery_id}/replay")
    async def replay(request: Request, delivery_id: str, form: Form) -> Response:
        delivery = await service().replay(delivery_id)
        session_of(request).say(f"delivery {delivery_id} replayed as {delivery.id}")
        return back(_where(field(form, "endpoint")))

    return r


__all__ = ["routes"]
