"""CLI command `catalog` over the admin API (mounted on `exitgate` by cli.py).

    exitgate catalog [--country CC] [--network res|mob|dc] [--json]

What can be targeted now, with counts of online nodes: one table with a row per network,
country, region, city, ISP and ASN (`rule`, `value`, `country`, `nodes`), largest first
within each rule; `--json` prints what `GET /v1/catalog` answered.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from exitgate.admin.cli_common import Conn, admin_options
from exitgate.model import Network

CATALOG_COLUMNS = ("rule", "value", "country", "nodes")
# (section of the answer, rule name, the field holding the value)
_SECTIONS = (
    ("networks", "network", "network"),
    ("countries", "country", "country"),
    ("regions", "region", "region"),
    ("cities", "city", "city"),
    ("isps", "isp", "isp"),
    ("asns", "asn", "asn"),
)


@admin_options()
def catalog_command(
    conn: Conn,
    *,
    country: Annotated[
        str | None, typer.Option(help="Only nodes of this country (ISO 3166-1 alpha-2).")
    ] = None,
    network: Annotated[Network | None, typer.Option(help="Only nodes of this network.")] = None,
) -> None:
    """Countries, regions, cities, ISPs and ASNs that can be targeted now, with node counts."""
    params: dict[str, Any] = {}
    if country is not None:
        params["country"] = country
    if network is not None:
        params["network"] = str(network)
    with conn.client() as client:
        found = client.request("GET", "/v1/catalog", params=params)
    if conn.as_json:
        conn.emit(found)
        return
    typer.echo(f"online nodes: {found.get('nodes', 0)}")
    conn.emit(catalog_rows(found), CATALOG_COLUMNS)


def catalog_rows(found: dict[str, Any]) -> list[dict[str, Any]]:
    """The catalogue answer as flat table rows."""
    rows = []
    for section, rule, name in _SECTIONS:
        for item in found.get(section, []):
            country = item.get("country") if rule in ("region", "city") else None
            rows.append(
                {"rule": rule, "value": item.get(name), "country": country,
                 "nodes": item.get("nodes")}
            )
    return rows
