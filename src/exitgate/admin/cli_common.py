"""What every admin CLI command shares: the connection options, the client, the output.

Every command takes `--admin URL` (env EXITGATE_ADMIN_URL, default http://127.0.0.1:8090),
`--token` (env EXITGATE_ADMIN_TOKEN; else the `admin.token` file in `--data-dir`, env
EXITGATE_DATA_DIR, default ".") and `--json` (machine output; default a table).
Failures print one line `error: ...` on stderr and exit 1: no traceback, no secret.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from exitgate.admin.client import DEFAULT_ADMIN_URL, AdminClient, AdminError
from exitgate.store.keys import read_admin_token

SETTINGS: dict[str, Any] = {"no_args_is_help": True, "pretty_exceptions_show_locals": False}


Admin = Annotated[
    str, typer.Option("--admin", envvar="EXITGATE_ADMIN_URL", help="Admin API base URL.")
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="EXITGATE_ADMIN_TOKEN",
        help="Admin token (default: the admin.token file in --data-dir).",
        show_default=False,
    ),
]
DataDir = Annotated[
    Path, typer.Option("--data-dir", envvar="EXITGATE_DATA_DIR", help="Holds admin.token.")
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


class CliError(Exception):
    """A CLI-side mistake, reported like an API error."""


@contextlib.contextmanager
def connect(admin: str, token: str | None, data_dir: Path) -> Iterator[AdminClient]:
    """The client, with every failure turned into one stderr line and exit status 1."""
    try:
        secret = token or read_admin_token(data_dir)
        if not secret:
            raise CliError(
                "no admin token: pass --token, set EXITGATE_ADMIN_TOKEN, or point --data-dir "
                "at the folder holding admin.token"
            )
        with AdminClient(admin, secret) as client:
            yield client
    except (AdminError, CliError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


# -- output


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def emit(data: Any, as_json: bool, columns: Sequence[str] = ()) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    if isinstance(data, list):
        rows = [[cell(item.get(c)) for c in columns] for item in data]
        table(list(columns), rows)
    else:
        table(["field", "value"], [[k, cell(v)] for k, v in data.items()])


def table(header: list[str], rows: list[list[str]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # rich is optional: plain aligned columns
        widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=False)]
        for line in [header, *rows]:
            typer.echo("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=False)).rstrip())
        return
    table = Table(box=None, show_edge=False, pad_edge=False)
    for name in header:
        table.add_column(name, overflow="fold")  # ids are copied by hand: never cut with "…"
    for row in rows:
        table.add_row(*row)
    # Piped output gets the table's natural width: scripts and logs see whole lines.
    width = None if sys.stdout.isatty() else 100_000
    Console(highlight=False, width=width).print(table)


def limit_value(flag: str, text: str | None) -> Any:
    """`--rps 10` → 10, `--rps none` → None (no limit), absent → the sentinel `...`."""
    if text is None:
        return ...
    if text.lower() in ("none", "unlimited"):
        return None
    try:
        return int(text)
    except ValueError:
        raise CliError(f"{flag}: expected an integer or 'none'") from None


def present(**fields: Any) -> dict[str, Any]:
    """Fields that were given (not None): a node body. Enums go as their str values."""
    return {k: v for k, v in fields.items() if v is not None}


def given(**fields: Any) -> dict[str, Any]:
    """Fields whose value is not the `...` sentinel: what a PATCH should change."""
    return {k: v for k, v in fields.items() if v is not ...}


__all__ = [
    "DEFAULT_ADMIN_URL",
    "SETTINGS",
    "Admin",
    "CliError",
    "DataDir",
    "Json",
    "Token",
    "connect",
    "cell",
    "emit",
    "given",
    "limit_value",
    "present",
    "table",
]
