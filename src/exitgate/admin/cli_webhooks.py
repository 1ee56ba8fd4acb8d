"""CLI group `webhook` over the admin API (mounted on `exitgate` by cli.py).

    exitgate webhook add URL [--org ORG_ID] [--event TYPE ...] [--description TEXT]
    exitgate webhook list [--org ORG_ID]
    exitgate webhook enable|disable ENDPOINT_ID
    exitgate webhook delete ENDPOINT_ID
    exitgate webhook deliveries [--endpoint ID] [--org ID] [--state pending|delivered|failed]
    exitgate webhook show DELIVERY_ID
    exitgate webhook replay DELIVERY_ID

`add` prints the signing secret (`whsec_...`) once: store it with the receiver. Without
`--org` the endpoint is the gateway's (every organization's events, and system events);
without `--event` it takes every event of its scope (`*`). `show` prints one delivery with its
attempt log; `replay` sends its message again as a new delivery.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from exitgate.admin.cli_common import (
    DEFAULT_ADMIN_URL,
    SETTINGS,
    Admin,
    DataDir,
    Json,
    Token,
    connect,
    emit,
)

webhook_app = typer.Typer(
    help="Webhooks: endpoints, their delivery log, replays.", **SETTINGS
)

ENDPOINT_COLUMNS = ("id", "org_id", "url", "events", "enabled", "disabled_reason")
DELIVERY_COLUMNS = (
    "id", "type", "endpoint_id", "state", "attempts", "last_status", "last_error", "created_at",
)
ATTEMPT_COLUMNS = ("n", "at", "status", "latency_ms", "error")

EndpointId = Annotated[str, typer.Argument(help="The webhook endpoint id (whe_...).")]
DeliveryId = Annotated[str, typer.Argument(help="The delivery id (whd_...).")]
OrgOpt = Annotated[
    str | None, typer.Option("--org", help="The organization id.", show_default=False)
]


@webhook_app.command("add")
def webhook_add(
    url: Annotated[str, typer.Argument(help="Where deliveries are POSTed (http or https).")],
    *,
    org: OrgOpt = None,
    event: Annotated[
        list[str] | None,
        typer.Option("--event", help="An event type to send (repeat); default: all (*).",
                     show_default=False),
    ] = None,
    description: Annotated[str, typer.Option("--description", help="A note.")] = "",
    admin: Admin = DEFAULT_ADMIN_URL,
    token: Token = None,
    data_dir: DataDir = Path("."),
    as_json: Json = False,
) -> None:
    """Add an endpoint; prints its signing secret, once."""
    body: dict[str, Any] = {"url": url, "org_id": org, "description": description}
    if event:
        body["events"] = event
    with connect(admin, token, data_dir) as client:
        created = client.request("POST", "/v1/webhooks", json=body)
    if as_json:
        emit(created, True)
        return
    typer.echo(f"webhook {created['id']} -> {created['url']}")
    typer.echo(f"secret: {created['secret']}")
    typer.echo("(shown once: give it to the receiver to verify signatures)")


@webhook_app.command("list")
def webhook_list(
    *,
    org: OrgOpt = None,
    admin: Admin = DEFAULT_ADMIN_URL,
    token: Token = None,
    data_dir: DataDir = Path("."),
    as_json: Json = False,
) -> None:
    """List endpoints (never their secrets)."""
    params = {"org_id": org} if org else None
    with connect(admin, token, data_dir) as client:
        found = client.request("GET", "/v1/webhooks", params=params)
    emit(found, as_json, ENDPOINT_COLUMNS)


def _set_enabled(endpoint_id: str, enabled: bool, admin: str, token: str | None,
                 data_dir: Path) -> None:
    with connect(admin, token, data_dir) as client:
        client.request("PATCH", f"/v1/webhooks/{endpoint_id}", json={"enabled": enabled})
    typer.echo(f"webhook {endpoint_id} {'enabled' if enabled else 'disabled'}")


@webhook_app.command("enable")
def webhook_enable(
    endpoint_id: EndpointId,
    *,
    admin: Admin = DEFAULT_ADMIN_URL,
    token: Token = None,
    data_dir: DataDir = Path("."),
) -> None:
    """Enable an endpoint (after a 410 Gone disabled it, say)."""
    _set_enabled(endpoint_id, True, admin, token, data_dir)


@webhook_app.command("disable")
def webhook_disable(
    endpoint_id: EndpointId,
    *,
    admin: Admin = DEFAULT_ADMIN_URL,
    token: Token = None,
    data_dir: DataDir = Path("."),
) -> None:
    """Disable an endpoint: nothing more is queued or sent to it."""
    _set_enabled(endpoint_id, False, admin, token, data_dir)


@webhook_app.command("delete")
def webhook_delete(
    endpoint_id: EndpointId,
    *,
    admin: Admin = DEFAULT_ADMIN_URL,
    token: Token = None,
    data_dir: DataDir = Path("."),
) -> None:
    """Delete an endpoint; its pending deliveries end (the log stays)."""
    with connect(admin, token, data_dir) as client:
        client.request("DELETE", f"/v1/webhooks/{endpoint_id}")
    typer.echo(f"webhook {endpoint_id} deleted")


@webhook_app.command("deliveries")
def webhook_deliveries(
    *,
    endpoint: Annotated[
        str | None, typer.Option("--endpoint", help="Only this endpoint's.", show_default=False)
    ] = None,
    org: OrgOpt = None,
    state: Annotated[
        str | None,
        typer.Option("--state", help="pending, delivered or failed.", show_default=False),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
    admin: Admin = DEFAULT_ADMIN_URL,
    token: Token = None,
    data_dir: DataDir = Path("."),
    as_json: Json = False,
) -> None:
    """The delivery log, newest first."""
    wanted = {"endpoint_id": endpoint, "org_id": org, "state": state}
    params: dict[str, Any] = {"limit": limit} | {k: v for k, v in wanted.items() if v}
    with connect(admin, token, data_dir) as client:
        found = client.request("GET", "/v1/webhook-deliveries", params=params)
    if as_json:
        emit(found, True)
        return
    emit([_readable(d) for d in found], False, DELIVERY_COLUMNS)


@webhook_app.command("show")
def webhook_show(
    delivery_id: DeliveryId,
    *,
    admin: Admin = DEFAULT_ADMIN_URL,
    token: Token = None,
    data_dir: DataDir = Path("."),
    as_json: Json = False,
) -> None:
    """One delivery and its attempts."""
    with connect(admin, token, data_dir) as client:
        found = client.request("GET", f"/v1/webhook-deliveries/{delivery_id}")
    if as_json:
        emit(found, True)
        return
    attempts = found.pop("attempt_log", [])
    emit(_readable(found), False)
    typer.echo("")
    emit([_readable(a) for a in attempts], False, ATTEMPT_COLUMNS)


@webhook_app.command("replay")
def webhook_replay(
    delivery_id: DeliveryId,
    *,
    admin: Admin = DEFAULT_ADMIN_URL,
    token: Token = None,
    data_dir: DataDir = Path("."),
    as_json: Json = False,
) -> None:
    """Send a delivery's message again (same webhook-id and body), as a new delivery."""
    with connect(admin, token, data_dir) as client:
        found = client.request("POST", f"/v1/webhook-deliveries/{delivery_id}/replay")
    if as_json:
        emit(found, True)
        return
    typer.echo(f"delivery {found['id']} queued (replay of {delivery_id})")


def _readable(item: dict[str, Any]) -> dict[str, Any]:
    shown = dict(item)
    for name in ("at", "created_at", "updated_at", "next_at"):
        when = shown.get(name)
        if isinstance(when, int | float):
            stamp = datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds")
            shown[name] = stamp.replace("+00:00", "Z")
    return shown
