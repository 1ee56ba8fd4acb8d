"""CLI groups `org` and `package` over the admin API.

Limits take an integer or `none` (no limit); list options replace the whole list.
"""

from __future__ import annotations

from typing import Annotated

import typer

from exitgate.admin.cli_common import (
    SETTINGS,
    CliError,
    Conn,
    admin_options,
    given,
    limit_value,
)
from exitgate.model import AuthMode, Network, PackageStatus
from exitgate.model import Protocol as ClientProtocol

org_app = typer.Typer(help="Organizations and their credit pools.", **SETTINGS)
package_app = typer.Typer(help="Packages: keys, status, limits, entitlements.", **SETTINGS)

# -- organizations

ORG_COLUMNS = ("id", "name", "credits")


@org_app.command("create")
@admin_options()
def org_create(
    conn: Conn,
    name: str,
    *,
    credits: Annotated[
        float | None, typer.Option(help="Credit pool; leave out for unlimited.")
    ] = None,
) -> None:
    """Create an organization."""
    with conn.client() as api:
        conn.emit(api.create_org(name, credits))


@org_app.command("list")
@admin_options()
def org_list(conn: Conn) -> None:
    """List organizations."""
    with conn.client() as api:
        conn.emit(api.list_orgs(), ORG_COLUMNS)


@org_app.command("show")
@admin_options()
def org_show(conn: Conn, org_id: str) -> None:
    """Show one organization."""
    with conn.client() as api:
        conn.emit(api.get_org(org_id))


@org_app.command("update")
@admin_options()
def org_update(
    conn: Conn,
    org_id: str,
    *,
    name: Annotated[str | None, typer.Option()] = None,
    credits: Annotated[float | None, typer.Option(help="New credit pool.")] = None,
    unlimited: Annotated[bool, typer.Option("--unlimited", help="Unlimited pool.")] = False,
) -> None:
    """Rename an organization or change its credits."""
    with conn.client() as api:
        if unlimited and credits is not None:
            raise CliError("--credits and --unlimited exclude each other")
        fields = given(
            name=... if name is None else name,
            credits=None if unlimited else (... if credits is None else credits),
        )
        conn.emit(api.update_org(org_id, **fields))


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
AuthModeOpt = Annotated[
    AuthMode | None,
    typer.Option(
        "--auth-mode",
        help="key_or_ip (default): key, or an allowlisted address alone; key: credentials on"
        " every request; ip: an allowlisted address alone.",
    ),
]


@package_app.command("create")
@admin_options()
def package_create(
    conn: Conn,
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
    auth_mode: AuthModeOpt = None,
) -> None:
    """Create a package; its key is printed this once."""
    with conn.client() as api:
        fields = given(
            name=name,
            rps_limit=limit_value("--rps", rps),
            concurrency_limit=limit_value("--concurrency", concurrency),
            traffic_limit_bytes=limit_value("--traffic", traffic),
            ip_allowlist=... if allow_ip is None else allow_ip,
            protocols=... if protocol is None else list(protocol),
            networks=... if network is None else list(network),
            rules=... if rule is None else rule,
            auth_mode=... if auth_mode is None else auth_mode.value,
        )
        created = api.create_package(org, **fields)
        conn.emit(created)
        if not conn.as_json:
            typer.echo("the key is shown only now: store it safely", err=True)


@package_app.command("list")
@admin_options()
def package_list(
    conn: Conn,
    *,
    org: Annotated[str | None, typer.Option("--org", help="Only this organization's.")] = None,
) -> None:
    """List packages."""
    with conn.client() as api:
        conn.emit(api.list_packages(org), PACKAGE_COLUMNS)


@package_app.command("show")
@admin_options()
def package_show(conn: Conn, package_id: str) -> None:
    """Show one package with its usage."""
    with conn.client() as api:
        conn.emit(api.get_package(package_id))


@package_app.command("update")
@admin_options()
def package_update(
    conn: Conn,
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
    auth_mode: AuthModeOpt = None,
) -> None:
    """Change a package; list options replace the whole list."""
    with conn.client() as api:
        if clear_allowlist and allow_ip:
            raise CliError("--allow-ip and --clear-allowlist exclude each other")
        if all_rules and rule:
            raise CliError("--rule and --all-rules exclude each other")
        fields = given(
            name=... if name is None else name,
            status=... if status is None else status,
            rps_limit=limit_value("--rps", rps),
            concurrency_limit=limit_value("--concurrency", concurrency),
            traffic_limit_bytes=limit_value("--traffic", traffic),
            ip_allowlist=[] if clear_allowlist else (... if allow_ip is None else allow_ip),
            protocols=... if protocol is None else list(protocol),
            networks=... if network is None else list(network),
            rules=None if all_rules else (... if rule is None else rule),
            auth_mode=... if auth_mode is None else auth_mode.value,
        )
        conn.emit(api.update_package(package_id, **fields))


def _status_command(name: str, status: PackageStatus, doc: str) -> None:
    """Register `package NAME ID`: a PATCH of the status alone."""

    def command(conn: Conn, package_id: str) -> None:
        with conn.client() as api:
            conn.emit(api.update_package(package_id, status=status))

    command.__doc__ = doc
    package_app.command(name)(admin_options()(command))


_status_command("pause", PackageStatus.PAUSED, "Pause a package (requests get PACKAGE_PAUSED).")
_status_command("resume", PackageStatus.ACTIVE, "Make a package active again.")
_status_command(
    "suspend", PackageStatus.SUSPENDED, "Suspend a package (requests get PACKAGE_SUSPENDED)."
)


@package_app.command("rotate-key")
@admin_options()
def package_rotate_key(conn: Conn, package_id: str) -> None:
    """Give a package a new key; the old one stops working at once."""
    with conn.client() as api:
        key = api.rotate_key(package_id)
        conn.emit({"id": package_id, "key": key})
