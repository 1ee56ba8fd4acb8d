"""Rows to model values and back: the JSON shapes of structured column values
(`packages.autoban`) and the records read from a row (`org_from`, `package_from`, ...), shared
by sql.py and sql_usage.py."""

from __future__ import annotations

import ipaddress
from typing import Any

from sqlalchemy.engine import RowMapping

from exitgate.model import (
    AuthMode,
    AutoBan,
    IPNetwork,
    Limits,
    Network,
    Node,
    NodeAttrs,
    NodeKind,
    NodeState,
    Org,
    Package,
    PackageStatus,
    Protocol,
)
from exitgate.store.base import UsageTotals


def autoban_to(autoban: AutoBan | None) -> dict[str, Any] | None:
    if autoban is None:
        return None
    return {"statuses": sorted(autoban.statuses), "ttl": autoban.ttl}


def autoban_from(value: Any) -> AutoBan | None:
    if not value:
        return None
    return AutoBan(frozenset(int(s) for s in value["statuses"]), int(value["ttl"]))


def nets_to(nets: tuple[IPNetwork, ...]) -> list[str]:
    return [str(n) for n in nets]


def org_from(row: RowMapping) -> Org:
    credits = row["credits"]
    return Org(id=row["id"], name=row["name"], credits=None if credits is None else float(credits))


def package_from(row: RowMapping) -> Package:
    rules = row["rules"]
    return Package(
        id=row["id"],
        org_id=row["org_id"],
        name=row["name"],
        key_hash=row["key_hash"],
        status=PackageStatus(row["status"]),
        limits=Limits(
            rps=row["rps_limit"],
            concurrency=row["concurrency_limit"],
            traffic_bytes=row["traffic_limit_bytes"],
        ),
        ip_allowlist=tuple(ipaddress.ip_network(n) for n in row["ip_allowlist"]),
        protocols=frozenset(Protocol(p) for p in row["protocols"]),
        networks=frozenset(Network(n) for n in row["networks"]),
        rules=None if rules is None else frozenset(rules),
        auth_mode=AuthMode(row["auth_mode"] or AuthMode.KEY_OR_IP),
        autoban=autoban_from(row["autoban"]),
    )


def node_from(row: RowMapping) -> Node:
    return Node(
        id=row["id"],
        kind=NodeKind(row["kind"]),
        state=NodeState(row["state"]),
        url=row["url"],
        bind_address=row["bind_address"],
        ip=row["ip"],
        attrs=NodeAttrs(
            country=row["country"],
            region=row["region"],
            city=row["city"],
            isp=row["isp"],
            asn=int(row["asn"]),
            network=Network(row["network"]),
        ),
    )


def totals_from(row: RowMapping) -> UsageTotals:
    return UsageTotals(
        bytes_up=int(row["bytes_up"]),
        bytes_down=int(row["bytes_down"]),
        requests=int(row["requests"]),
    )
