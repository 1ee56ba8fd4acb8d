"""CLI group `node` over the admin API.

An upstream url is a secret: pass `--url -` to read it from stdin and keep it out of shell
history and `ps`. Answers show it redacted.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

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
    present,
)
from exitgate.model import Network, NodeState

node_app = typer.Typer(help="Exit nodes: direct and upstream.", **SETTINGS)

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
    with connect(admin, token, data_dir) as api:
        body = present(
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
        emit(api.create_node(kind, **body), as_json)


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
    with connect(admin, token, data_dir) as api:
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
        emit(found, as_json, NODE_COLUMNS)


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
    with connect(admin, token, data_dir) as api:
        emit(api.get_node(node_id), as_json)


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
    with connect(admin, token, data_dir) as api:
        body = present(
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
        emit(api.update_node(node_id, **body), as_json)


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
    with connect(admin, token, data_dir) as api:
        api.delete_node(node_id)
        emit({"id": node_id, "removed": True}, as_json)
