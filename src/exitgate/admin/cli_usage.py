"""CLI commands `usage` and `errors` over the admin API (mounted on `exitgate` by cli.py).

    exitgate usage PACKAGE_ID [--since ISO] [--until ISO] [--limit N] [--json]
    exitgate errors PACKAGE_ID [--limit N] [--json]

`usage` prints the package's totals and its hourly buckets, newest first; `errors` its
recent-errors log, newest first (the one place a SOCKS5 user sees the exact error code).
Tables show times as UTC ISO 8601; `--json` prints what the API answered.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from exitgate.admin.cli_common import (
    DEFAULT_ADMIN_URL,
    Admin,
    DataDir,
    Json,
    Token,
    connect,
    emit,
)

USAGE_COLUMNS = ("hour", "bytes_up", "bytes_down", "requests", "errors")
ERROR_COLUMNS = ("time", "code", "detail", "protocol", "client", "target")

PackageId = Annotated[str, typer.Argument(help="The package id.", show_default=False)]
Since = Annotated[
    str | None, typer.Option(help="First hour, ISO 8601 (UTC without a zone).", show_default=False)
]
Until = Annotated[str | None, typer.Option(help="End (exclusive), ISO 8601.", show_default=False)]


def usage_command(
    package_id: PackageId,
    *,
    since: Since = None,
    until: Until = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most N hours.")] = None,
    admin: Admin = DEFAULT_ADMIN_URL,
    token: Token = None,
    data_dir: DataDir = Path("."),
    as_json: Json = False,
) -> None:
    """A package's traffic and requests: totals, then hourly buckets, newest first."""
    with connect(admin, token, data_dir) as client:
        hours = client.package_usage(package_id, since=since, until=until, limit=limit)
        totals = client.get_package(package_id).get("usage", {})
        if as_json:
            emit({"package_id": package_id, "totals": totals, "hours": hours}, True)
            return
        summary = " ".join(f"{k}={v}" for k, v in totals.items())
        typer.echo(f"package {package_id} total: {summary}")
        emit(hours, False, USAGE_COLUMNS)


def errors_command(
    package_id: PackageId,
    *,
    limit: Annotated[int | None, typer.Option(min=1, help="At most N errors.")] = None,
    admin: Admin = DEFAULT_ADMIN_URL,
    token: Token = None,
    data_dir: DataDir = Path("."),
    as_json: Json = False,
) -> None:
    """A package's recent errors, newest first: time, code, detail, protocol, client, target."""
    with connect(admin, token, data_dir) as client:
        found = client.package_errors(package_id)
        if limit is not None:
            found = found[:limit]
        if as_json:
            emit(found, True)
            return
        emit([_readable(e) for e in found], False, ERROR_COLUMNS)


def _readable(event: dict[str, Any]) -> dict[str, Any]:
    when = event.get("time")
    if isinstance(when, int | float):
        stamp = datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")
        event = {**event, "time": stamp.replace("+00:00", "Z")}
    return event
