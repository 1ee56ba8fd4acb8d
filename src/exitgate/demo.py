"""`exitgate serve --demo`: a working lab on one machine, with nothing to set up.

Seeds (once) an organization, a package and two direct exits bound to loopback aliases
(127.0.0.2 "us / new_york / res", 127.0.0.3 "de / berlin / mob"), starts the ipinfo checker on
loopback as a target, and prints a `curl` line that goes through the gateway and shows which
exit served it. A second run keeps the data and gives the demo package a fresh key (the old
one was shown once and is not stored in clear). Loopback targets are allowed in the demo only.
"""

from __future__ import annotations

from dataclasses import dataclass

from exitgate.model import Network, NodeAttrs, NodeKind
from exitgate.services import AccountService
from exitgate.store.base import NewNode, NewPackage

DEMO_ORG = "demo"
DEMO_NODES = (
    NodeAttrs("us", "new_york", "new_york", "exitgate_lab", 64500, Network.RES),
    NodeAttrs("de", "berlin", "berlin", "exitgate_lab", 64501, Network.MOB),
)
DEMO_BINDS = ("127.0.0.2", "127.0.0.3")


@dataclass(frozen=True, slots=True)
class DemoAccess:
    package_id: str
    key: str
    fresh: bool


async def seed(service: AccountService) -> DemoAccess:
    orgs = [org for org in await service.list_orgs() if org.name == DEMO_ORG]
    if orgs:
        packages = await service.list_packages(orgs[0].id)
        if packages:
            key = await service.rotate_key(packages[0].id)
            return DemoAccess(packages[0].id, key, fresh=False)
        org = orgs[0]
    else:
        org = await service.create_org(DEMO_ORG, None)
    package, key = await service.create_package(NewPackage(org_id=org.id, name="demo"))
    existing = {node.bind_address for node in await service.list_nodes()}
    for attrs, bind in zip(DEMO_NODES, DEMO_BINDS, strict=True):
        if bind not in existing:
            await service.create_node(
                NewNode(kind=NodeKind.DIRECT, attrs=attrs, bind_address=bind, ip=bind)
            )
    return DemoAccess(package.id, key, fresh=True)


def banner(access: DemoAccess, proxy: str, admin: str, checker: str, token: str | None) -> str:
    target = f"http://{checker}/api/ipinfo"
    lines = [
        "",
        "exitgate demo is running.",
        f"  proxy    {proxy}   (HTTP, CONNECT and SOCKS5 on one port)",
        f"  admin    {admin}   (OpenAPI at {admin}/openapi.json, with the admin token)",
        f"  checker  http://{checker}/api/ipinfo   (a loopback target that shows your exit)",
        f"  package  {access.package_id}   key {access.key}   (shown once; stored hashed)",
    ]
    if token:
        lines.append(f"  admin token {token}   (shown once; kept in admin.token, mode 0600)")
    lines += [
        "",
        "Try it:",
        f"  curl -x http://country-us-city-new_york:{access.key}@{proxy} {target}",
        f"  curl --socks5-hostname 'country-de:{access.key}@{proxy}' {target}",
        f"  curl -x http://city-paris:{access.key}@{proxy} {target}   # an error, on purpose",
        "",
    ]
    return "\n".join(lines)
