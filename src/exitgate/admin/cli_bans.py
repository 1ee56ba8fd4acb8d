"""CLI group `ban` over the admin API (issue 13; mounted on `exitgate` by cli.py).

    exitgate ban list --package ID [--json]
    exitgate ban add PACKAGE_ID DOMAIN NODE_ID [--ttl SECONDS]
    exitgate ban lift PACKAGE_ID [--domain DOMAIN [--node NODE_ID]]

A ban keeps one exit away from one target domain for one package until it expires. Clients
ban with the `X-Exitgate-Ban` request header, packages with `autoban` ban on statuses; this
group shows and lifts them (and bans by hand). Tables show times as UTC ISO 8601.
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

ban_app = typer.Typer(help="Per-domain exit bans: list, add, lift.", **SETTINGS)

BAN_COLUMNS = ("domain", "node_id", "reason", "until", "expires_in")

PackageId = Annotated[str, typer.Argument(help="The package id.", show_default=False)]
PackageOpt = Annotated[
    str, typer.Option("--package", help="The package id.", show_default=False)
]


@ban_app.command("list")
def ban_list(
    *,
    package: PackageOpt,
    admin: Admin = DEFAULT_ADMIN_URL,
    token: Token = None,
    data_dir: DataDir = Path("."),
    as_json: Json = False,
) -> None:
    """A package's live bans by domain: the exit, why, and until when."""
    with connect(admin, token, data_dir) as client:
        found = client.list_bans(package)
    if as_json:
        emit(found, True)
        return
    emit([_readable(b) for b in found], False, BAN_COLUMNS)


@ban_app.command("add")
def ban_add(
    package_id: PackageId,
    domain: Annotated[str, typer.Argument(help="The target host, e.g. www.example.com.")],
    node_id: Annotated[str, typer.Argument(help="The exit's node id.")],
    *,
    ttl: Annotated[int, typer.Option("--ttl", min=1, help="Seconds.")] = 600,
    admin: Admin = DEFAULT_ADMIN_URL,
    token: Token = None,
    data_dir: DataDir = Path("."),
) -> None:
    """Ban an exit for a domain of a package for TTL seconds."""
    with connect(admin, token, data_dir) as client:
        ban = client.add_ban(package_id, domain, node_id, ttl)
    typer.echo(f"exit {ban['node_id']} banned for {ban['domain']} for {ttl}s")


@ban_app.command("lift")
def ban_lift(
    package_id: PackageId,
    *,
    domain: Annotated[str | None, typer.Option("--domain", help="Only this domain.")] = None,
    node: Annotated[
        str | None, typer.Option("--node", help="Only this exit (needs --domain).")
    ] = None,
    admin: Admin = DEFAULT_ADMIN_URL,
    token: Token = None,
    data_dir: DataDir = Path("."),
) -> None:
    """Lift a package's bans: all of them, a domain's, or one exit's for a domain."""
    if node is not None and domain is None:
        typer.echo("error: --node needs --domain", err=True)
        raise typer.Exit(1)
    with connect(admin, token, data_dir) as client:
        lifted = client.lift_bans(package_id, domain, node)
    typer.echo(f"{lifted} ban{'s' if lifted != 1 else ''} lifted")


def _readable(ban: dict[str, Any]) -> dict[str, Any]:
    shown = dict(ban)
    until = shown.get("until")
    if isinstance(until, int | float):
        stamp = datetime.fromtimestamp(until, UTC).isoformat(timespec="seconds")
        shown["until"] = stamp.replace("+00:00", "Z")
    left = shown.get("expires_in")
    if isinstance(left, int | float):
        shown["expires_in"] = f"{left:.0f}s"
    return shown
