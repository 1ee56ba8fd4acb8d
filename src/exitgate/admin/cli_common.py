"""What every admin CLI command shares: the connection options, the client, the output.

Every command takes `--admin URL` (env EXITGATE_ADMIN_URL, default http://127.0.0.1:8090),
`--token` (env EXITGATE_ADMIN_TOKEN; else the `admin.token` file in `--data-dir`, env
EXITGATE_DATA_DIR, default ".") and, where it prints data, `--json` (machine output; default
a table). They are declared here once: a command is written as `fn(conn: Conn, ...)` under
`@admin_options()`, which adds the options to its signature (after its own, as typer reads
it) and hands it one `Conn`. They stay options of each command, not of its group, so
`exitgate org list --json` keeps working (a group callback would want `org --json list`).
Failures print one line `error: ...` on stderr and exit 1: no traceback, no secret.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Concatenate, ParamSpec, TypeVar

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
# The package a command is about: an argument (`usage ID`) or an option (`ban list --package`).
PackageId = Annotated[str, typer.Argument(help="The package id.", show_default=False)]
PackageOpt = Annotated[
    str, typer.Option("--package", help="The package id.", show_default=False)
]

P = ParamSpec("P")
R = TypeVar("R")
_KW = inspect.Parameter.KEYWORD_ONLY
# The shared options in the order --help lists them, after each command's own.
_CONNECTION = (
    inspect.Parameter("admin", _KW, default=DEFAULT_ADMIN_URL, annotation=Admin),
    inspect.Parameter("token", _KW, default=None, annotation=Token),
    inspect.Parameter("data_dir", _KW, default=Path("."), annotation=DataDir),
)
_JSON = inspect.Parameter("as_json", _KW, default=False, annotation=Json)


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


@dataclass(frozen=True, slots=True)
class Conn:
    """What the shared options said: where the admin API is, which token, which output."""

    admin: str = DEFAULT_ADMIN_URL
    token: str | None = None
    data_dir: Path = Path(".")
    as_json: bool = False

    def client(self) -> contextlib.AbstractContextManager[AdminClient]:
        """`connect` with these options: failures end the command with one stderr line."""
        return connect(self.admin, self.token, self.data_dir)

    def emit(self, data: Any, columns: Sequence[str] = ()) -> None:
        """`emit` in the form `--json` chose."""
        emit(data, self.as_json, columns)

    def emit_rows(
        self,
        rows: list[dict[str, Any]],
        columns: Sequence[str],
        readable: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> None:
        """Rows as the API answered them with `--json`, else a table of `readable(row)`."""
        if self.as_json:
            emit(rows, True)
        else:
            emit([readable(row) for row in rows], False, columns)


def admin_options(
    *, with_json: bool = True
) -> Callable[[Callable[Concatenate[Conn, P], R]], Callable[..., R]]:
    """Give a command `fn(conn, ...)` the shared options (`--json` only `with_json`).

    The command typer sees has `fn`'s own parameters, then `--admin`, `--token`,
    `--data-dir` (and `--json`): the interface each command always had, declared once.
    """
    shared = (*_CONNECTION, _JSON) if with_json else _CONNECTION
    names = tuple(p.name for p in shared)

    def decorate(fn: Callable[Concatenate[Conn, P], R]) -> Callable[..., R]:
        signature = inspect.signature(fn, eval_str=True)
        _conn, *own = signature.parameters.values()

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> R:
            conn = Conn(**{name: kwargs.pop(name) for name in names if name in kwargs})
            return fn(conn, *args, **kwargs)

        params = [*own, *shared]
        # typer reads the signature and the (resolved) annotations of what it registers.
        command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__annotations__["return"] = signature.return_annotation
        return command

    return decorate


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


def utc_times(
    item: dict[str, Any], names: Iterable[str], timespec: str = "seconds"
) -> dict[str, Any]:
    """A copy of `item` with its epoch-second fields `names` as UTC ISO 8601 (`...Z`)."""
    shown = dict(item)
    for name in names:
        when = shown.get(name)
        if isinstance(when, int | float):
            stamp = datetime.fromtimestamp(when, UTC).isoformat(timespec=timespec)
            shown[name] = stamp.replace("+00:00", "Z")
    return shown


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
    "Conn",
    "DataDir",
    "Json",
    "PackageId",
    "PackageOpt",
    "Token",
    "admin_options",
    "connect",
    "cell",
    "emit",
    "given",
    "limit_value",
    "present",
    "table",
    "utc_times",
]
