"""CLI group `ban` over the admin API (issue 13; mounted on `exitgate` by cli.py).

    exitgate ban list --package ID [--json]
    exitgate ban add PACKAGE_ID DOMAIN NODE_ID [--ttl SECONDS]
    exitgate ban lift PACKAGE_ID [--domain DOMAIN [--node NODE_ID]]

A ban keeps one exit away from one target domain for one package until it expires. Clients
ban with the `X-Exitgate-Ban` request header, packages with `autoban` ban on statuses; this
group shows and lifts them (and bans by hand). Tables show times as UTC ISO 8601.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from exitgate.admin.cli_common import (
    SETTINGS,
    Conn,
    PackageId,
    PackageOpt,
    admin_options,
    utc_times,
)

ban_app = typer.Typer(help="Per-domain exit bans: list, add, lift.", **SETTINGS)

BAN_COLUMNS = ("domain", "node_id", "reason", "until", "expires_in")


@ban_app.command("list")
@admin_options()
def ban_list(conn: Conn, *, package: PackageOpt) -> None:
    """A package's live bans by domain: the exit, why, and until when."""
    with conn.client() as client:
        found = client.list_bans(package)
    conn.emit_rows(found, BAN_COLUMNS, _readable)


@ban_app.command("add")
@admin_options(with_json=False)
def ban_add(
    conn: Conn,
    package_id: PackageId,
    domain: Annotated[str, typer.Argument(help="The target host, e.g. www.example.com.")],
    node_id: Annotated[str, typer.Argument(help="The exit's node id.")],
    *,
    ttl: Annotated[int, typer.Option("--ttl", min=1, help="Seconds.")] = 600,
) -> None:
    """Ban an exit for a domain of a package for TTL seconds."""
    with conn.client() as client:
        ban = client.add_ban(package_id, domain, node_id, ttl)
    typer.echo(f"exit {ban['node_id']} banned for {ban['domain']} for {ttl}s")


@ban_app.command("lift")
@admin_options(with_json=False)
def ban_lift(
    conn: Conn,
    package_id: PackageId,
    *,
    domain: Annotated[str | None, typer.Option("--domain", help="Only this domain.")] = None,
    node: Annotated[
        str | None, typer.Option("--node", help="Only this exit (needs --domain).")
    ] = None,
) -> None:
    """Lift a package's bans: all of them, a domain's, or one exit's for a domain."""
    if node is not None and domain is None:
        typer.echo("error: --node needs --domain", err=True)
        raise typer.Exit(1)
    with conn.client() as client:
        lifted = client.lift_bans(package_id, domain, node)
    typer.echo(f"{lifted} ban{'s' if lifted != 1 else ''} lifted")


def _readable(ban: dict[str, Any]) -> dict[str, Any]:
    shown = utc_times(ban, ("until",))
    left = shown.get("expires_in")
    if isinstance(left, int | float):
        shown["expires_in"] = f"{left:.0f}s"
    return shown
