"""CLI group `node` over the admin API.

An upstream url is a secret: pass `--url -` to read it from stdin and keep it out of shell
history and `ps`. Answers show it redacted.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from exitgate.admin.cli_common import SETTINGS, Conn, admin_options, present
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
@admin_options()
def node_add(
    conn: Conn,
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
) -> None:
    """Register a node: `node add direct --bind ADDR` or `node add upstream --url -`."""
    with conn.client() as api:
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
        conn.emit(api.create_node(kind, **body))


@node_app.command("list")
@admin_options()
def node_list(
    conn: Conn,
    *,
    country: Country = None,
    region: Region = None,
    city: City = None,
    isp: Isp = None,
    asn: Asn = None,
    network: NetworkOpt = None,
    state: State = None,
    kind: Annotated[str | None, typer.Option()] = None,
) -> None:
    """List nodes, optionally filtered by attributes and state."""
    with conn.client() as api:
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
        conn.emit(found, NODE_COLUMNS)


@node_app.command("show")
@admin_options()
def node_show(conn: Conn, node_id: str) -> None:
    """Show one node (its url redacted)."""
    with conn.client() as api:
        conn.emit(api.get_node(node_id))


@node_app.command("update")
@admin_options()
def node_update(
    conn: Conn,
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
) -> None:
    """Change a node's state (online, offline, draining) or attributes."""
    with conn.client() as api:
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
        conn.emit(api.update_node(node_id, **body))


@node_app.command("remove")
@admin_options()
def node_remove(conn: Conn, node_id: str) -> None:
    """Remove a node."""
    with conn.client() as api:
        api.delete_node(node_id)
        conn.emit({"id": node_id, "removed": True})
