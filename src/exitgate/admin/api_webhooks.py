"""Admin API routes for webhooks (issue 11), over `WebhookService`.

    POST   /v1/webhooks                      create; the answer holds the secret, once (201)
    GET    /v1/webhooks?org_id=              list (no secrets)
    GET    /v1/webhooks/{id}                 one
    PATCH  /v1/webhooks/{id}                 url, events, enabled, description
    DELETE /v1/webhooks/{id}                 delete; its pending deliveries end (204)
    POST   /v1/webhooks/{id}/secret          a new secret, shown once
    POST   /v1/webhooks/{id}/test            queue a `webhook.test` message (202)
    GET    /v1/webhooks/{id}/deliveries      its delivery log, newest first
    GET    /v1/webhook-deliveries?endpoint_id=&org_id=&state=&limit=
    GET    /v1/webhook-deliveries/{id}       one delivery with its attempts
    POST   /v1/webhook-deliveries/{id}/replay  send the message again, as a new delivery (202)

Errors follow the rest of the API: 404 `"webhook not found: whe_..."` / `"delivery not found:
..."`; 422 naming the field: an unknown event type (`events`), a URL that is not http(s) or
whose host resolves to a private or loopback address without `[webhooks] allow_private`
(`url`), an unknown organization (`org_id`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, field_validator

from exitgate.events import EVENT_TYPES
from exitgate.store.base import NotFound
from exitgate.store.webhooks import AttemptRecord, DeliveryRecord
from exitgate.webhooks.guard import DestinationRefused
from exitgate.webhooks.service import ALL, Endpoint, WebhookService

State = Literal["pending", "delivered", "failed"]
Url = Annotated[str, Field(min_length=8, max_length=2000)]
Description = Annotated[str, Field(max_length=200)]


def _check_events(v: list[str] | None) -> list[str] | None:
    if v is None:
        return v
    if not v:
        raise ValueError("name at least one event type, or *")
    unknown = [e for e in v if e != ALL and e not in EVENT_TYPES]
    if unknown:
        known = ", ".join(sorted(EVENT_TYPES))
        raise ValueError(f"unknown event type {unknown[0]!r} (known: *, {known})")
    return sorted(set(v))


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WebhookCreate(_Body):
    url: Url
    org_id: str | None = Field(default=None, max_length=40)  # None: a gateway endpoint
    events: list[str] = Field(default_factory=lambda: [ALL], max_length=32)
    description: Description = ""

    _events = field_validator("events")(_check_events)


class WebhookPatch(_Body):
    url: Url | None = None
    events: list[str] | None = Field(default=None, max_length=32)
    enabled: bool | None = None
    description: Description | None = None

    _events = field_validator("events")(_check_events)


class WebhookOut(BaseModel):
    id: str
    org_id: str | None
    url: str
    events: list[str]
    enabled: bool
    disabled_reason: str
    description: str
    created_at: float

    @classmethod
    def of(cls, e: Endpoint) -> WebhookOut:
        return cls(
            id=e.id, org_id=e.org_id, url=e.url, events=list(e.events), enabled=e.enabled,
            disabled_reason=e.disabled_reason, description=e.description,
            created_at=e.created_at,
        )


class WebhookCreated(WebhookOut):
    secret: str  # whsec_...: shown here and by /secret only


class SecretOut(BaseModel):
    id: str
    secret: str


class AttemptOut(BaseModel):
    n: int
    at: float
    status: int | None
    latency_ms: float
    error: str | None

    @classmethod
    def of(cls, a: AttemptRecord) -> AttemptOut:
        return cls(n=a.n, at=a.at, status=a.status, latency_ms=a.latency_ms, error=a.error)


class DeliveryOut(BaseModel):
    id: str
    event_id: str
    endpoint_id: str
    org_id: str | None
    type: str
    state: str
    attempts: int
    next_at: float | None  # pending: when the next attempt is due
    created_at: float
    updated_at: float
    last_status: int | None
    last_error: str | None
    last_latency_ms: float | None
    replay_of: str | None

    @classmethod
    def of(cls, d: DeliveryRecord) -> DeliveryOut:
        return cls(
            id=d.id, event_id=d.event_id, endpoint_id=d.endpoint_id, org_id=d.org_id,
            type=d.type, state=d.state, attempts=d.attempts,
            next_at=d.next_at if d.state == "pending" else None, created_at=d.created_at,
            updated_at=d.updated_at, last_status=d.last_status, last_error=d.last_error,
            last_latency_ms=d.last_latency_ms, replay_of=d.replay_of,
        )


class DeliveryDetail(DeliveryOut):
    payload: str
    attempt_log: list[AttemptOut]


def _field_error(field: str, msg: str, kind: str = "value_error") -> RequestValidationError:
    return RequestValidationError([{"loc": ("body", field), "msg": msg, "type": kind}])


Limit = Annotated[int, Query(ge=1, le=1000)]


def webhook_routes(service: WebhookService) -> APIRouter:
    r = APIRouter(tags=["webhooks"])

    @r.post("/v1/webhooks", status_code=201)
    async def create_webhook(body: WebhookCreate) -> WebhookCreated:
        try:
            endpoint, secret = await service.create_endpoint(
                body.url, org_id=body.org_id, event_types=body.events,
                description=body.description,
            )
        except DestinationRefused as exc:
            raise _field_error("url", str(exc)) from None
        except NotFound as exc:
            if exc.kind != "org":
                raise
            raise _field_error("org_id", "unknown organization", "not_found") from None
        return WebhookCreated(**WebhookOut.of(endpoint).model_dump(), secret=secret)

    @r.get("/v1/webhooks")
    async def list_webhooks(org_id: str | None = None) -> list[WebhookOut]:
        return [WebhookOut.of(e) for e in await service.list_endpoints(org_id)]

    @r.get("/v1/webhooks/{endpoint_id}")
    async def get_webhook(endpoint_id: str) -> WebhookOut:
        return WebhookOut.of(await service.get_endpoint(endpoint_id))

    @r.patch("/v1/webhooks/{endpoint_id}")
    async def update_webhook(endpoint_id: str, body: WebhookPatch) -> WebhookOut:
        await service.get_endpoint(endpoint_id)  # 404 before a URL check
        try:
            endpoint = await service.update_endpoint(
                endpoint_id, url=body.url, event_types=body.events, enabled=body.enabled,
                description=body.description,
            )
        except DestinationRefused as exc:
            raise _field_error("url", str(exc)) from None
        return WebhookOut.of(endpoint)

    @r.delete("/v1/webhooks/{endpoint_id}", status_code=204)
    async def delete_webhook(endpoint_id: str) -> Response:
        await service.delete_endpoint(endpoint_id)
        return Response(status_code=204)

    @r.post("/v1/webhooks/{endpoint_id}/secret")
    async def rotate_secret(endpoint_id: str) -> SecretOut:
        return SecretOut(id=endpoint_id, secret=await service.rotate_secret(endpoint_id))

    @r.post("/v1/webhooks/{endpoint_id}/test", status_code=202)
    async def send_test(endpoint_id: str) -> DeliveryOut:
        return DeliveryOut.of(await service.send_test(endpoint_id))

    @r.get("/v1/webhooks/{endpoint_id}/deliveries")
    async def endpoint_deliveries(
        endpoint_id: str, state: State | None = None, limit: Limit = 100
    ) -> list[DeliveryOut]:
        found = await service.list_deliveries(endpoint_id=endpoint_id, state=state, limit=limit)
        return [DeliveryOut.of(d) for d in found]

    @r.get("/v1/webhook-deliveries")
    async def list_deliveries(
        endpoint_id: str | None = None,
        org_id: str | None = None,
        state: State | None = None,
        limit: Limit = 100,
    ) -> list[DeliveryOut]:
        found = await service.list_deliveries(
            endpoint_id=endpoint_id, org_id=org_id, state=state, limit=limit
        )
        return [DeliveryOut.of(d) for d in found]

    @r.get("/v1/webhook-deliveries/{delivery_id}")
    async def get_delivery(delivery_id: str) -> DeliveryDetail:
        delivery, attempts = await service.get_delivery(delivery_id)
        return DeliveryDetail(
            **DeliveryOut.of(delivery).model_dump(),
            payload=delivery.payload,
            attempt_log=[AttemptOut.of(a) for a in attempts],
        )

    @r.post("/v1/webhook-deliveries/{delivery_id}/replay", status_code=202)
    async def replay(delivery_id: str) -> DeliveryOut:
        return DeliveryOut.of(await service.replay(delivery_id))

    return r


__all__ = ["webhook_routes"]
