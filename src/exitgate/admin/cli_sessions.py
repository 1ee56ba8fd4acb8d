"""CLI group `session` over the admin API (mounted on `exitgate` by cli.py).

    exitgate session list --package ID [--json]
    exitgate session end PACKAGE_ID SESSION_ID

`list` shows a package's live sessions, oldest first: the node each is on, its locked rules,
its age, the requests that reached a node, and when it expires if left idle. `end` forgets a
session at once: its open tunnels go on, and its next request starts it afresh (with any
rules). Tables show times as UTC ISO 8601; `--json` prints what the API answered.
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

session_app = typer.Typer(help="Sticky sessions: list the live ones, end one.", **SETTINGS)

SESSION_COLUMNS = ("session", "node_id", "rules", "requests", "age", "last_used", "expires")

PackageId = Annotated[str, typer.Argument(help="The package id.", show_default=False)]
SessionId = Annotated[str, typer.Argument(help="The session id (the `session-` rule's value).")]
PackageOpt = Annotated[
    str, typer.Option("--package", help="The package id.", show_default=False)
]


@session_app.command("list")
def session_list(
    *,
    package: PackageOpt,
    admin: Admin = DEFAULT_ADMIN_URL,
    token: Token = None,
    data_dir: DataDir = Path("."),
    as_json: Json = False,
) -> None:
    """A package's live sessions, oldest first: node, rules, requests, age, expiry."""
    with connect(admin, token, data_dir) as client:
        found = client.list_sessions(package)
    if as_json:
        emit(found, True)
        return
    emit([_readable(s) for s in found], False, SESSION_COLUMNS)


@session_app.command("end")
def session_end(
    package_id: PackageId,
    session_id: SessionId,
    *,
    admin: Admin = DEFAULT_ADMIN_URL,
    token: Token = None,
    data_dir: DataDir = Path("."),
) -> None:
    """End a session now: its next request starts it afresh; open tunnels go on."""
    with connect(admin, token, data_dir) as client:
        client.end_session(package_id, session_id)
    typer.echo(f"session {session_id} of package {package_id} ended")


def _readable(session: dict[str, Any]) -> dict[str, Any]:
    shown = dict(session)
    for name in ("last_used", "expires"):
        when = shown.get(name)
        if isinstance(when, int | float):
            stamp = datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds")
            shown[name] = stamp.replace("+00:00", "Z")
    age = shown.get("age")
    if isinstance(age, int | float):
        shown["age"] = f"{age:.1f}s"
    return shown
