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

from typing import Annotated, Any

import typer

from exitgate.admin.cli_common import SETTINGS, Conn, admin_options, utc_times

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
@admin_options()
def webhook_add(
    conn: Conn,
    url: Annotated[str, typer.Argument(help="Where deliveries are POSTed (http or https).")],
    *,
    org: OrgOpt = None,
    event: Annotated[
        list[str] | None,
        typer.Option("--event", help="An event type to send (repeat); default: all (*).",
                     show_default=False),
    ] = None,
    description: Annotated[str, typer.Option("--description", help="A note.")] = "",
) -> None:
    """Add an endpoint; prints its signing secret, once."""
    body: dict[str, Any] = {"url": url, "org_id": org, "description": description}
    if event:
        body["events"] = event
    with conn.client() as client:
        created = client.request("POST", "/v1/webhooks", json=body)
    if conn.as_json:
        conn.emit(created)
        return
    typer.echo(f"webhook {created['id']} -> {created['url']}")
    typer.echo(f"secret: {created['secret']}")
    typer.echo("(shown once: give it to the receiver to verify signatures)")


@webhook_app.command("list")
@admin_options()
def webhook_list(conn: Conn, *, org: OrgOpt = None) -> None:
    """List endpoints (never their secrets)."""
    params = {"org_id": org} if org else None
    with conn.client() as client:
        found = client.request("GET", "/v1/webhooks", params=params)
    conn.emit(found, ENDPOINT_COLUMNS)


def _set_enabled(conn: Conn, endpoint_id: str, enabled: bool) -> None:
    with conn.client() as client:
        client.request("PATCH", f"/v1/webhooks/{endpoint_id}", json={"enabled": enabled})
    typer.echo(f"webhook {endpoint_id} {'enabled' if enabled else 'disabled'}")


@webhook_app.command("enable")
@admin_options(with_json=False)
def webhook_enable(conn: Conn, endpoint_id: EndpointId) -> None:
    """Enable an endpoint (after a 410 Gone disabled it, say)."""
    _set_enabled(conn, endpoint_id, True)


@webhook_app.command("disable")
@admin_options(with_json=False)
def webhook_disable(conn: Conn, endpoint_id: EndpointId) -> None:
    """Disable an endpoint: nothing more is queued or sent to it."""
    _set_enabled(conn, endpoint_id, False)


@webhook_app.command("delete")
@admin_options(with_json=False)
def webhook_delete(conn: Conn, endpoint_id: EndpointId) -> None:
    """Delete an endpoint; its pending deliveries end (the log stays)."""
    with conn.client() as client:
        client.request("DELETE", f"/v1/webhooks/{endpoint_id}")
    typer.echo(f"webhook {endpoint_id} deleted")


@webhook_app.command("deliveries")
@admin_options()
def webhook_deliveries(
    conn: Conn,
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
) -> None:
    """The delivery log, newest first."""
    wanted = {"endpoint_id": endpoint, "org_id": org, "state": state}
    params: dict[str, Any] = {"limit": limit} | {k: v for k, v in wanted.items() if v}
    with conn.client() as client:
        found = client.request("GET", "/v1/webhook-deliveries", params=params)
    conn.emit_rows(found, DELIVERY_COLUMNS, _readable)


@webhook_app.command("show")
@admin_options()
def webhook_show(conn: Conn, delivery_id: DeliveryId) -> None:
    """One delivery and its attempts."""
    with conn.client() as client:
        found = client.request("GET", f"/v1/webhook-deliveries/{delivery_id}")
    if conn.as_json:
        conn.emit(found)
        return
    attempts = found.pop("attempt_log", [])
    conn.emit(_readable(found))
    typer.echo("")
    conn.emit_rows(attempts, ATTEMPT_COLUMNS, _readable)


@webhook_app.command("replay")
@admin_options()
def webhook_replay(conn: Conn, delivery_id: DeliveryId) -> None:
    """Send a delivery's message again (same webhook-id and body), as a new delivery."""
    with conn.client() as client:
        found = client.request("POST", f"/v1/webhook-deliveries/{delivery_id}/replay")
    if conn.as_json:
        conn.emit(found)
        return
    typer.echo(f"delivery {found['id']} queued (replay of {delivery_id})")


def _readable(item: dict[str, Any]) -> dict[str, Any]:
    return utc_times(item, ("at", "created_at", "updated_at", "next_at"))
