"""CLI groups `org` and `package` over the admin API.

Limits take an integer or `none` (no limit); list options replace the whole list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from exitgate.admin.cli_common import (
    DEFAULT_ADMIN_URL,
    SETTINGS,
    Admin,
    CliError,
    DataDir,
    Json,
    Token,
    connect,
    emit,
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
    with connect(admin, token, data_dir) as api:
        emit(api.create_org(name, credits), as_json)


@org_app.command("list")
def org_list(
    *,
    admin: Admin = DEFAULT_ADMIN_URL,
    token: Token = None,
    data_dir: DataDir = Path("."),
    as_json: Json = False,
) -> None:
    """List organizations."""
    with connect(admin, token, data_dir) as api:
        emit(api.list_orgs(), as_json, ORG_COLUMNS)


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
    with connect(admin, token, data_dir) as api:
        emit(api.get_org(org_id), as_json)


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
    with connect(admin, token, data_dir) as api:
        if unlimited and credits is not None:
            raise CliError("--credits and --unlimited exclude each other")
        fields = given(
            name=... if name is None else name,
            credits=None if unlimited else (... if credits is None else credits),
        )
        emit(api.update_org(org_id, **fields), as_json)


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
    auth_mode: AuthModeOpt = None,
    admin: Admin = DEFAULT_ADMIN_URL,
    token: Token = None,
    data_dir: DataDir = Path("."),
    as_json: Json = False,
) -> None:
    """Create a package; its key is printed this once."""
    with connect(admin, token, data_dir) as api:
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
        emit(created, as_json)
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
    with connect(admin, token, data_dir) as api:
        emit(api.list_packages(org), as_json, PACKAGE_COLUMNS)


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
    with connect(admin, token, data_dir) as api:
        emit(api.get_package(package_id), as_json)


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
    auth_mode: AuthModeOpt = None,
    admin: Admin = DEFAULT_ADMIN_URL,
    token: Token = None,
    data_dir: DataDir = Path("."),
    as_json: Json = False,
) -> None:
    """Change a package; list options replace the whole list."""
    with connect(admin, token, data_dir) as api:
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
        emit(api.update_package(package_id, **fields), as_json)


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
        with connect(admin, token, data_dir) as api:
            emit(api.update_package(package_id, status=status), as_json)

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
    with connect(admin, token, data_dir) as api:
        key = api.rotate_key(package_id)
        emit({"id": package_id, "key": key}, as_json)
