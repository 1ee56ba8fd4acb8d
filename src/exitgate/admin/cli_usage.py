"""CLI commands `usage` and `errors` over the admin API (mounted on `exitgate` by cli.py).

    exitgate usage PACKAGE_ID [--since ISO] [--until ISO] [--limit N] [--json]
    exitgate errors PACKAGE_ID [--limit N] [--json]

`usage` prints the package's totals and its hourly buckets, newest first; `errors` its
recent-errors log, newest first (the one place a SOCKS5 user sees the exact error code).
Tables show times as UTC ISO 8601; `--json` prints what the API answered.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from exitgate.admin.cli_common import Conn, PackageId, admin_options, utc_times

USAGE_COLUMNS = ("hour", "bytes_up", "bytes_down", "requests", "errors")
ERROR_COLUMNS = ("time", "code", "detail", "protocol", "client", "target")

Since = Annotated[
    str | None, typer.Option(help="First hour, ISO 8601 (UTC without a zone).", show_default=False)
]
Until = Annotated[str | None, typer.Option(help="End (exclusive), ISO 8601.", show_default=False)]


@admin_options()
def usage_command(
    conn: Conn,
    package_id: PackageId,
    *,
    since: Since = None,
    until: Until = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most N hours.")] = None,
) -> None:
    """A package's traffic and requests: totals, then hourly buckets, newest first."""
    with conn.client() as client:
        hours = client.package_usage(package_id, since=since, until=until, limit=limit)
        totals = client.get_package(package_id).get("usage", {})
        if conn.as_json:
            conn.emit({"package_id": package_id, "totals": totals, "hours": hours})
            return
        summary = " ".join(f"{k}={v}" for k, v in totals.items())
        typer.echo(f"package {package_id} total: {summary}")
        conn.emit(hours, USAGE_COLUMNS)


@admin_options()
def errors_command(
    conn: Conn,
    package_id: PackageId,
    *,
    limit: Annotated[int | None, typer.Option(min=1, help="At most N errors.")] = None,
) -> None:
    """A package's recent errors, newest first: time, code, detail, protocol, client, target."""
    with conn.client() as client:
        found = client.package_errors(package_id)
        if limit is not None:
            found = found[:limit]
        conn.emit_rows(found, ERROR_COLUMNS, _readable)


def _readable(event: dict[str, Any]) -> dict[str, Any]:
    return utc_times(event, ("time",), timespec="milliseconds")
