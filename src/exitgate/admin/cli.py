"""CLI groups `org`, `package` and `node` over the admin API (mounted on `exitgate` by cli.py).

Every command takes `--admin URL` (env EXITGATE_ADMIN_URL, default http://127.0.0.1:8090),
`--token` (env EXITGATE_ADMIN_TOKEN; else the `admin.token` file in `--data-dir`, env
EXITGATE_DATA_DIR, default ".") and `--json` (machine output; default a table).
Failures print one line `error: ...` on stderr and exit 1: no traceback, no secret.

Limits take an integer or `none` (no limit). An upstream url is a secret: pass `--url -` to
read it from stdin and keep it out of shell history and `ps`.
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
from exitgate.model import Network, NodeState, PackageStatus
from exitgate.model import Protocol as ClientProtocol
from exitgate.store.keys import read_admin_token

_settings: dict[str, Any] = {"no_args_is_help": True, "pretty_exceptions_show_locals": False}
org_app = typer.Typer(help="Organizations and their credit pools.", **_settings)
package_app = typer.Typer(help="Packages: keys, status, limits, entitlements.", **_settings)
node_app = typer.Typer(help="Exit nodes: direct and upstream.", **_settings)

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


class _Fail(Exception):
    """A CLI-side mistake, reported like an API error."""


@contextlib.contextmanager
def _api(admin: str, token: str | None, data_dir: Path) -> Iterator[AdminClient]:
    """The client, with every failure turned into one stderr line and exit status 1."""
    try:
        secret = token or read_admin_token(data_dir)
        if not secret:
            raise _Fail(
                "no admin token: pass --token, set EXITGATE_ADMIN_TOKEN, or point --data-dir "
                "at the folder holding admin.token"
            )
        with AdminClient(admin, secret) as client:
            yield client
    except (AdminError, _Fail, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


# -- output


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def _emit(data: Any, as_json: bool, columns: Sequence[str] = ()) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    if isinstance(data, list):
        rows = [[_cell(item.get(c)) for c in columns] for item in data]
        _table(list(columns), rows)
    else:
        _table(["field", "value"], [[k, _cell(v)] for k, v in data.items()])


def _table(header: list[str], rows: list[list[str]]) -> None:
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


def _limit(flag: str, text: str | None) -> Any:
    """`--rps 10` → 10, `--rps none` → None (no limit), absent → the sentinel `...`."""
    if text is None:
        return ...
    if text.lower() in ("none", "unlimited"):
        return None
    try:
        return int(text)
    except ValueError:
        raise _Fail(f"{flag}: expected an integer or 'none'") from None


def _present(**fields: Any) -> dict[str, Any]:
    """Fields that were given (not None): a node body. Enums go as their str values."""
    return {k: v for k, v in fields.items() if v is not None}


def _given(**fields: Any) -> dict[str, Any]:
    """Fields whose value is not the `...` sentinel: what a PATCH should change."""
    return {k: v for k, v in fields.items() if v is not ...}


# -- organizations

ORG_COLUMNS = ("id", "name", "credits")


@org_app.command("create")
def org_create(
    name: str,
    *,
    credits: Annotated[
        float | None, typer.Option(help="Credit pool; leave out for unlimited.")
    ] = None,
    admin: Admin = DEFAULT_ADMIN_URL,
    token: Token = None,
    data_dir: DataDir = Path("."),
    as_json: Json = False,
) -> None:
    """Create an organization."""
    with _api(admin, token, data_dir) as api:
        _emit(api.create_org(name, credits), as_json)


@org_app.command("list")
def org_list(
    *,
    admin: Admin = DEFAULT_ADMIN_URL,
    token: Token = None,
    data_dir: DataDir = Path("."),
    as_json: Json = False,
) -> None:
    """List organizations."""
    with _api(admin, token, data_dir) as api:
        _emit(api.list_orgs(), as_json, ORG_COLUMNS)


@org_app.command("show")
def org_show(
    org_id: str,
    *,
    admin: Admin = DEFAULT_ADMIN_URL,
    token: Token = None,
    data_dir: DataDir = Path("."),
    as_json: Json = False,
) -> None:
    """Show one organization."""
    with _api(admin, token, data_dir) as api:
        _emit(api.get_org(org_id), as_json)


@org_app.command("update")
def org_update(
    org_id: str,
    *,
    name: Annotated[str | None, typer.Option()] = None,
    credits: Annotated[float | None, typer.Option(help="New credit pool.")] = None,
    unlimited: Annotated[bool, typer.Option("--unlimited", help="Unlimited pool.")] = False,
    admin: Admin = DEFAULT_ADMIN_URL,
    token: Token = None,
    data_dir: DataDir = Path("."),
    as_json: Json = False,
) -> None:
    """Rename an organization or change its credits."""
    with _api(admin, token, data_dir) as api:
        if unlimited and credits is not None:
            raise _Fail("--credits and --unlimited exclude each other")
        fields = _given(
            name=... if name is None else name,
            credits=None if unlimited else (... if credits is None else credits),
        )
        _emit(api.update_org(org_id, **fields), as_json)


# -- packages

PACKAGE_COLUMNS = (
    "id",
    "org_id",
    "name",
    "status",
    "rps_limit",
    "concurrency_limit",
    "traffic_limit_bytes",
    "protocols",
    "networks",
)
Rps = Annotated[str | None, typer.Option("--rps", help="Requests per second, or 'none'.")]
Conc = Annotated[
    str | None, typer.Option("--concurrency", help="Concurrent connections, or 'none'.")
]
Traffic = Annotated[str | None, typer.Option("--traffic", help="Traffic cap in bytes, or 'none'.")]
AllowIp = Annotated[
    list[str] | None, typer.Option("--allow-ip", help="Allowlisted IP or CIDR (repeatable).")
]
Protocols = Annotated[
    list[ClientProtocol] | None, typer.Option("--protocol", help="Allowed protocol (repeatable).")
]
Networks = Annotated[
    list[Network] | None, typer.Option("--network", help="Allowed network (repeatable).")
]
Rules = Annotated[list[str] | None, typer.Option("--rule", help="Allowed rule name (repeatable).")]


@package_app.command("create")
def package_create(
    *,
    org: Annotated[str, typer.Option("--org", help="Owning organization id.")],
    name: Annotated[str, typer.Option()] = "",
    rps: Rps = None,
    concurrency: Conc = None,
    traffic: Traffic = None,
    allow_ip: AllowIp = None,
    protocol: Protocols = None,
    network: Networks = None,
    rule: Rules = None,
    admin: Admin = DEFAULT_ADMIN_URL,
    token: Token = None,
    data_dir: DataDir = Path("."),
    as_json: Json = False,
) -> None:
    """Create a package; its key is printed this once."""
    with _api(admin, token, data_dir) as api:
        fields = _given(
            name=name,
            rps_limit=_limit("--rps", rps),
            concurrency_limit=_limit("--concurrency", concurrency),
            traffic_limit_bytes=_limit("--traffic", traffic),
            ip_allowlist=... if allow_ip is None else allow_ip,
            protocols=... if protocol is None else list(protocol),
            networks=... if network is None else list(network),
            rules=... if rule is None else rule,
        )
        created = api.create_package(org, **fields)
        _emit(created, as_json)
        if not as_json:
            typer.echo("the key is shown only now: store it safely", err=True)


@package_app.command("list")
def package_list(
    *,
    org: Annotated[str | None, typer.Option("--org", help="Only this organization's.")] = None,
    admin: Admin = DEFAULT_ADMIN_URL,
    token: Token = None,
    data_dir: DataDir = Path("."),
    as_json: Json = False,
) -> None:
    """List packages."""
    with _api(admin, token, data_dir) as api:
        _emit(api.list_packages(org), as_json, PACKAGE_COLUMNS)


@package_app.command("show")
def package_show(
    package_id: str,
    *,
    admin: Admin = DEFAULT_ADMIN_URL,
    token: Token = None,
    data_dir: DataDir = Path("."),
    as_json: Json = False,
) -> None:
    """Show one package with its usage."""
    with _api(admin, token, data_dir) as api:
        _emit(api.get_package(package_id), as_json)


@package_app.command("update")
def package_update(
    package_id: str,
    *,
    name: Annotated[str | None, typer.Option()] = None,
    status: Annotated[PackageStatus | None, typer.Option()] = None,
    rps: Rps = None,
    concurrency: Conc = None,
    traffic: Traffic = None,
    allow_ip: AllowIp = None,
    clear_allowlist: Annotated[
        bool, typer.Option("--clear-allowlist", help="Empty the IP allowlist.")
    ] = False,
    protocol: Protocols = None,
    network: Networks = None,
    rule: Rules = None,
    all_rules: Annotated[bool, typer.Option("--all-rules", help="Allow every rule.")] = False,
    admin: Admin = DEFAULT_ADMIN_URL,
    token: Token = None,
    data_dir: DataDir = Path("."),
    as_json: Json = False,
) -> None:
    """Change a package; list options replace the whole list."""
    with _api(admin, token, data_dir) as api:
        if clear_allowlist and allow_ip:
            raise _Fail("--allow-ip and --clear-allowlist exclude each other")
        if all_rules and rule:
            raise _Fail("--rule and --all-rules exclude each other")
        fields = _given(
            name=... if name is None else name,
            status=... if status is None else status,
            rps_limit=_limit("--rps", rps),
            concurrency_limit=_limit("--concurrency", concurrency),
            traffic_limit_bytes=_limit("--traffic", traffic),
            ip_allowlist=[] if clear_allowlist else (... if allow_ip is None else allow_ip),
            protocols=... if protocol is None else list(protocol),
            networks=... if network is None else list(network),
            rules=None if all_rules else (... if rule is None else rule),
        )
        _emit(api.update_package(package_id, **fields), as_json)


def _status_command(name: str, status: PackageStatus, doc: str) -> None:
    """Register `package NAME ID`: a PATCH of the status alone."""

    def command(
        package_id: str,
        *,
        admin: Admin = DEFAULT_ADMIN_URL,
        token: Token = None,
        data_dir: DataDir = Path("."),
        as_json: Json = False,
    ) -> None:
        with _api(admin, token, data_dir) as api:
            _emit(api.update_package(package_id, status=status), as_json)

    command.__doc__ = doc
    package_app.command(name)(command)


_status_command("pause", PackageStatus.PAUSED, "Pause a package (requests get PACKAGE_PAUSED).")
_status_command("resume", PackageStatus.ACTIVE, "Make a package active again.")
_status_command(
    "suspend", PackageStatus.SUSPENDED, "Suspend a package (requests get PACKAGE_SUSPENDED)."
)


@package_app.command("rotate-key")
def package_rotate_key(
    package_id: str,
    *,
    admin: Admin = DEFAULT_ADMIN_URL,
    token: Token = None,
    data_dir: DataDir = Path("."),
    as_json: Json = False,
) -> None:
    """Give a package a new key; the old one stops working at once."""
    with _api(admin, token, data_dir) as api:
        key = api.rotate_key(package_id)
        _emit({"id": package_id, "key": key}, as_json)


# -- nodes

NODE_COLUMNS = (
    "id",
    "kind",
    "state",
    "country",
    "region",
    "city",
    "isp",
    "asn",
    "network",
    "url",
    "bind_address",
)
Country = Annotated[str | None, typer.Option(help="ISO 3166-1 alpha-2 code.")]
Region = Annotated[str | None, typer.Option()]
City = Annotated[str | None, typer.Option()]
Isp = Annotated[str | None, typer.Option()]
Asn = Annotated[int | None, typer.Option()]
NetworkOpt = Annotated[Network | None, typer.Option("--network")]
State = Annotated[NodeState | None, typer.Option()]
Url = Annotated[
    str | None,
    typer.Option(help="Upstream proxy URL with credentials; '-' reads it from stdin."),
]
Bind = Annotated[str | None, typer.Option("--bind", help="Direct: local source address.")]
Ip = Annotated[str | None, typer.Option("--ip", help="Public address targets see.")]


def _read_url(url: str | None) -> str | None:
    if url != "-":
        return url
    return sys.stdin.readline().strip()


@node_app.command("add")
def node_add(
    kind: Annotated[str, typer.Argument(help="direct or upstream")],
    *,
    url: Url = None,
    bind: Bind = None,
    ip: Ip = None,
    country: Country = None,
    region: Region = None,
    city: City = None,
    isp: Isp = None,
    asn: Asn = None,
    network: NetworkOpt = None,
    state: State = None,
    admin: Admin = DEFAULT_ADMIN_URL,
    token: Token = None,
    data_dir: DataDir = Path("."),
    as_json: Json = False,
) -> None:
    """Register a node: `node add direct --bind ADDR` or `node add upstream --url -`."""
    with _api(admin, token, data_dir) as api:
        body = _present(
            url=_read_url(url),
            bind_address=bind,
            ip=ip,
            country=country,
            region=region,
            city=city,
            isp=isp,
            asn=asn,
            network=network,
            state=state,
        )
        _emit(api.create_node(kind, **body), as_json)


@node_app.command("list")
def node_list(
    *,
    country: Country = None,
    region: Region = None,
    city: City = None,
    isp: Isp = None,
    asn: Asn = None,
    network: NetworkOpt = None,
    state: State = None,
    kind: Annotated[str | None, typer.Option()] = None,
    admin: Admin = DEFAULT_ADMIN_URL,
    token: Token = None,
    data_dir: DataDir = Path("."),
    as_json: Json = False,
) -> None:
    """List nodes, optionally filtered by attributes and state."""
    with _api(admin, token, data_dir) as api:
        found = api.list_nodes(
            country=country,
            region=region,
            city=city,
            isp=isp,
            asn=asn,
            network=network,
            state=state,
            kind=kind,
        )
        _emit(found, as_json, NODE_COLUMNS)


@node_app.command("show")
def node_show(
    node_id: str,
    *,
    admin: Admin = DEFAULT_ADMIN_URL,
    token: Token = None,
    data_dir: DataDir = Path("."),
    as_json: Json = False,
) -> None:
    """Show one node (its url redacted)."""
    with _api(admin, token, data_dir) as api:
        _emit(api.get_node(node_id), as_json)


@node_app.command("update")
def node_update(
    node_id: str,
    *,
    state: State = None,
    country: Country = None,
    region: Region = None,
    city: City = None,
    isp: Isp = None,
    asn: Asn = None,
    network: NetworkOpt = None,
    url: Url = None,
    bind: Bind = None,
    ip: Ip = None,
    admin: Admin = DEFAULT_ADMIN_URL,
    token: Token = None,
    data_dir: DataDir = Path("."),
    as_json: Json = False,
) -> None:
    """Change a node's state (online, offline, draining) or attributes."""
    with _api(admin, token, data_dir) as api:
        body = _present(
            state=state,
            country=country,
            region=region,
            city=city,
            isp=isp,
            asn=asn,
            network=network,
            url=_read_url(url),
            bind_address=bind,
            ip=ip,
        )
        _emit(api.update_node(node_id, **body), as_json)


@node_app.command("remove")
def node_remove(
    node_id: str,
    *,
    admin: Admin = DEFAULT_ADMIN_URL,
    token: Token = None,
    data_dir: DataDir = Path("."),
    as_json: Json = False,
) -> None:
    """Remove a node."""
    with _api(admin, token, data_dir) as api:
        api.delete_node(node_id)
        _emit({"id": node_id, "removed": True}, as_json)
