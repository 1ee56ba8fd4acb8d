"""CLI group `session` over the admin API (mounted on `exitgate` by cli.py).

    exitgate session list --package ID [--json]
    exitgate session end PACKAGE_ID SESSION_ID

`list` shows a package's live sessions, oldest first: the node each is on, its locked rules,
its age, the requests that reached a node, and when it expires if left idle. `end` forgets a
session at once: its open tunnels go on, and its next request starts it afresh (with any
rules). Tables show times as UTC ISO 8601; `--json` prints what the API answered.
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

session_app = typer.Typer(help="Sticky sessions: list the live ones, end one.", **SETTINGS)

SESSION_COLUMNS = ("session", "node_id", "rules", "requests", "age", "last_used", "expires")

SessionId = Annotated[str, typer.Argument(help="The session id (the `session-` rule's value).")]


@session_app.command("list")
@admin_options()
def session_list(conn: Conn, *, package: PackageOpt) -> None:
    """A package's live sessions, oldest first: node, rules, requests, age, expiry."""
    with conn.client() as client:
        found = client.list_sessions(package)
    conn.emit_rows(found, SESSION_COLUMNS, _readable)


@session_app.command("end")
@admin_options(with_json=False)
def session_end(conn: Conn, package_id: PackageId, session_id: SessionId) -> None:
    """End a session now: its next request starts it afresh; open tunnels go on."""
    with conn.client() as client:
        client.end_session(package_id, session_id)
    typer.echo(f"session {session_id} of package {package_id} ended")


def _readable(session: dict[str, Any]) -> dict[str, Any]:
    shown = utc_times(session, ("last_used", "expires"))
    age = shown.get("age")
    if isinstance(age, int | float):
        shown["age"] = f"{age:.1f}s"
    return shown
