"""The admin API over a real uvicorn server on a loopback port, with a real httpx client."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from exitgate.admin.api import create_admin_app
from exitgate.model import NodeKind, NodeState, PackageStatus
from exitgate.registry import Registry
from exitgate.services import AccountService
from exitgate.store.base import open_store
from tests.support.asgi import serve_asgi

TOKEN = "admin-test-token"


@dataclass
class AdminServer:
    url: str
    registry: Registry
    service: AccountService
    http: httpx.Client
    usage: dict[str, dict[str, int]]  # what the usage provider answers, by package id


def serve_admin(db: Path) -> Iterator[AdminServer]:
    """Run the admin app in a thread; yield a client; stop the server."""
    store = open_store(f"sqlite:///{db}")
    registry = Registry()
    registry.load(store)
    service = AccountService(store, registry)
    usage: dict[str, dict[str, int]] = {}
    app = create_admin_app(service, TOKEN, usage_provider=lambda pid: usage.get(pid, {}))
    try:
        with serve_asgi(app) as url:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            with httpx.Client(base_url=url, headers=headers, trust_env=False) as http:
                yield AdminServer(url, registry, service, http, usage)
    finally:
        store.close()


USAGE = {"bytes_up": 11, "bytes_down": 22, "requests": 3}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[AdminServer]:
    yield from serve_admin(tmp_path / "admin.db")


def _org(api: AdminServer, **body: Any) -> dict[str, Any]:
    r = api.http.post("/v1/orgs", json={"name": "acme", **body})
    assert r.status_code == 201, r.text
    return dict(r.json())


def _package(api: AdminServer, org_id: str, **body: Any) -> dict[str, Any]:
    r = api.http.post("/v1/packages", json={"org_id": org_id, **body})
    assert r.status_code == 201, r.text
    return dict(r.json())


def _fields(r: httpx.Response) -> list[str]:
    assert r.status_code == 422, r.text
    return [".".join(str(x) for x in e["loc"][1:]) for e in r.json()["detail"]]


# -- auth and plumbing


def test_auth_required_everywhere_but_healthz(api: AdminServer) -> None:
    assert httpx.get(api.url + "/healthz").json() == {"status": "ok"}
    for method, path in [
        ("GET", "/v1/orgs"),
        ("POST", "/v1/orgs"),
        ("GET", "/v1/packages/pkg_x"),
        ("PATCH", "/v1/nodes/node_x"),
        ("DELETE", "/v1/nodes/node_x"),
        ("GET", "/openapi.json"),
    ]:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": TOKEN},
            {"Authorization": f"Basic {TOKEN}"},
        ):
            r = httpx.request(method, api.url + path, headers=headers, json={})
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.json() == {"detail": "missing or invalid admin token"}
            assert r.headers["www-authenticate"] == "Bearer"


def test_openapi_lists_the_endpoints(api: AdminServer) -> None:
    doc = api.http.get("/openapi.json").json()
    paths = doc["paths"]
    for path in [
        "/v1/orgs",
        "/v1/orgs/{org_id}",
        "/v1/packages",
        "/v1/packages/{package_id}",
        "/v1/packages/{package_id}/key",
        "/v1/nodes",
        "/v1/nodes/{node_id}",
    ]:
        assert path in paths, path
    assert api.http.get("/docs").status_code == 404


# -- organizations


def test_orgs(api: AdminServer) -> None:
    org = _org(api, credits=12.5)
    assert org["id"].startswith("org_") and org == {
        "id": org["id"],
        "name": "acme",
        "credits": 12.5,
    }
    unlimited = _org(api, name="free")
    assert unlimited["credits"] is None
    assert api.http.get(f"/v1/orgs/{org['id']}").json() == org
    assert [o["id"] for o in api.http.get("/v1/orgs").json()] == [org["id"], unlimited["id"]]

    r = api.http.patch(f"/v1/orgs/{org['id']}", json={"name": "acme2"})
    assert r.json() == {**org, "name": "acme2"}
    r = api.http.patch(f"/v1/orgs/{org['id']}", json={"credits": None})
    assert r.json()["credits"] is None and r.json()["name"] == "acme2"
    assert api.registry.org(org["id"]).credits is None  # type: ignore[union-attr]

    assert api.http.get("/v1/orgs/org_nope").status_code == 404
    r = api.http.patch("/v1/orgs/org_nope", json={"name": "x"})
    assert r.status_code == 404 and r.json() == {"detail": "org not found: org_nope"}
    assert _fields(api.http.post("/v1/orgs", json={})) == ["name"]
    assert _fields(api.http.post("/v1/orgs", json={"name": "x", "credits": "5"})) == ["credits"]
    assert _fields(api.http.post("/v1/orgs", json={"name": "x", "owner": "me"})) == ["owner"]
    assert _fields(api.http.patch(f"/v1/orgs/{org['id']}", json={"name": None})) == ["name"]


# -- packages


def test_package_create_defaults_and_key_only_once(api: AdminServer) -> None:
    org = _org(api)
    created = _package(api, org["id"])
    key = created.pop("key")
    assert len(key) == 32
    assert created == {
        "id": created["id"],
        "org_id": org["id"],
        "name": "",
        "status": "active",
        "rps_limit": None,
        "concurrency_limit": None,
        "traffic_limit_bytes": None,
        "ip_allowlist": [],
        "protocols": ["http", "https", "socks5", "udp"],
        "networks": ["dc", "mob", "res"],
        "rules": None,
        "auth_mode": "key_or_ip",
        "autoban": None,
    }
    shown = api.http.get(f"/v1/packages/{created['id']}")
    assert shown.json() == {**created, "usage": {"bytes_up": 0, "bytes_down": 0, "requests": 0}}
    listed = api.http.get("/v1/packages")
    for text in (shown.text, listed.text):
        # neither the key nor a key or key_hash field (auth_mode's value may say "key")
        assert key not in text and '"key"' not in text and '"key_hash"' not in text
    assert api.registry.package_by_key(key).id == created["id"]  # type: ignore[union-attr]


def test_package_fields_and_patch(api: AdminServer) -> None:
    org = _org(api)
    other = _org(api, name="other")
    body = {
        "name": "scraper",
        "rps_limit": 5,
        "concurrency_limit": 0,
        "traffic_limit_bytes": 10**12,
        "ip_allowlist": ["203.0.113.7", "10.0.0.9/24", "2001:db8::1", "10.0.0.0/24"],
        "protocols": ["socks5", "http"],
        "networks": ["res"],
        "rules": ["country", "session"],
        "status": "paused",
    }
    pkg = _package(api, org["id"], **body)
    assert pkg["ip_allowlist"] == ["203.0.113.7/32", "10.0.0.0/24", "2001:db8::1/128"]
    assert (pkg["protocols"], pkg["networks"], pkg["rules"]) == (
        ["http", "socks5"],
        ["res"],
        ["country", "session"],
    )
    assert pkg["status"] == "paused" and pkg["traffic_limit_bytes"] == 10**12
    _package(api, other["id"])
    only = api.http.get("/v1/packages", params={"org_id": org["id"]}).json()
    assert [p["id"] for p in only] == [pkg["id"]]
    assert len(api.http.get("/v1/packages").json()) == 2

    path = f"/v1/packages/{pkg['id']}"
    r = api.http.patch(path, json={"status": "active", "rps_limit": None, "rules": None})
    assert r.status_code == 200, r.text
    patched = r.json()
    assert (patched["status"], patched["rps_limit"], patched["rules"]) == ("active", None, None)
    assert patched["concurrency_limit"] == 0 and patched["name"] == "scraper"
    assert "key" not in patched
    in_registry = api.registry.package(pkg["id"])
    assert in_registry is not None and in_registry.status is PackageStatus.ACTIVE
    r = api.http.patch(path, json={"ip_allowlist": [], "status": "suspended"})
    assert r.json()["ip_allowlist"] == [] and r.json()["status"] == "suspended"
    assert api.registry.packages_for_ip("203.0.113.7") == []
    assert api.registry.package(pkg["id"]).status is PackageStatus.SUSPENDED  # type: ignore[union-attr]


def test_package_usage_comes_from_the_provider(api: AdminServer) -> None:
    pkg = _package(api, _org(api)["id"])
    api.usage[pkg["id"]] = USAGE
    assert api.http.get(f"/v1/packages/{pkg['id']}").json()["usage"] == USAGE


def test_package_validation_names_the_field(api: AdminServer) -> None:
    org_id = _org(api)["id"]

    def create(**body: Any) -> list[str]:
        return _fields(api.http.post("/v1/packages", json={"org_id": org_id, **body}))

    assert create(rps_limit=-1) == ["rps_limit"]
    assert create(concurrency_limit=1.5) == ["concurrency_limit"]
    assert create(traffic_limit_bytes="10") == ["traffic_limit_bytes"]
    assert create(rps_limit=True) == ["rps_limit"]
    assert create(ip_allowlist=["10.0.0.0/33"]) == ["ip_allowlist.0"]
    assert create(ip_allowlist=["1.2.3.4", "nope"]) == ["ip_allowlist.1"]
    assert create(status="deleted") == ["status"]
    assert create(protocols=["ftp"]) == ["protocols.0"]
    assert create(networks=["wifi"]) == ["networks.0"]
    assert create(rules=["country", "colour"]) == ["rules.1"]
    assert create(key="mine") == ["key"]
    assert create(rps_limit=-1, status="x") == ["status", "rps_limit"]
    assert _fields(api.http.post("/v1/packages", json={})) == ["org_id"]
    r = api.http.post("/v1/packages", json={"org_id": "org_nope"})
    assert _fields(r) == ["org_id"] and r.json()["detail"][0]["msg"] == "unknown organization"
    r = api.http.post(
        "/v1/packages", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422

    pkg = _package(api, org_id)
    path = f"/v1/packages/{pkg['id']}"
    assert _fields(api.http.patch(path, json={"status": "gone"})) == ["status"]
    assert _fields(api.http.patch(path, json={"status": None})) == ["status"]
    assert _fields(api.http.patch(path, json={"rps_limit": -5})) == ["rps_limit"]
    assert _fields(api.http.patch(path, json={"org_id": org_id})) == ["org_id"]
    assert _fields(api.http.patch(path, json={"ip_allowlist": ["x"]})) == ["ip_allowlist.0"]
    assert api.http.patch("/v1/packages/pkg_nope", json={"name": "x"}).status_code == 404
    assert api.http.get("/v1/packages/pkg_nope").status_code == 404
    assert api.http.post("/v1/packages/pkg_nope/key").status_code == 404


def test_rotation_invalidates_the_old_key_at_once(api: AdminServer) -> None:
    pkg = _package(api, _org(api)["id"])
    old = pkg["key"]
    assert api.registry.package_by_key(old) is not None
    r = api.http.post(f"/v1/packages/{pkg['id']}/key")
    assert r.status_code == 200
    new = r.json()["key"]
    assert r.json() == {"id": pkg["id"], "key": new} and new != old
    assert api.registry.package_by_key(old) is None
    assert api.registry.package_by_key(new).id == pkg["id"]  # type: ignore[union-attr]
    text = api.http.get(f"/v1/packages/{pkg['id']}").text + api.http.get("/v1/packages").text
    assert new not in text and old not in text


# -- nodes


UPSTREAM = {
    "kind": "upstream",
    "url": "socks5://alice:s3cret-pw@127.0.0.1:1080",
    "country": "US",
    "region": "New York",
    "city": "New York",
    "isp": "AT&T Wireless",
    "asn": 7018,
    "network": "mob",
}


def test_node_create_normalises_and_hides_the_secret(api: AdminServer) -> None:
    r = api.http.post("/v1/nodes", json=UPSTREAM)
    assert r.status_code == 201, r.text
    node = r.json()
    assert node == {
        "id": node["id"],
        "kind": "upstream",
        "state": "online",
        "url": "socks5://alice:***@127.0.0.1:1080",
        "bind_address": "",
        "ip": "",
        "country": "us",
        "region": "new_york",
        "city": "new_york",
        "isp": "at_t_wireless",
        "asn": 7018,
        "network": "mob",
    }
    stored = api.registry.node(node["id"])
    assert stored is not None and stored.url == UPSTREAM["url"]  # the proxy gets the real url
    assert stored.kind is NodeKind.UPSTREAM
    assert "new_york" in api.registry.catalogue_names()[1]
    for text in (api.http.get("/v1/nodes").text, api.http.get(f"/v1/nodes/{node['id']}").text):
        assert "s3cret" not in text

    direct = api.http.post(
        "/v1/nodes",
        json={
            "kind": "direct",
            "bind_address": "127.0.0.2",
            "country": "de",
            "city": "São Paulo",
            "ip": "127.0.0.2",
            "state": "offline",
        },
    ).json()
    assert (direct["bind_address"], direct["city"], direct["url"], direct["network"]) == (
        "127.0.0.2",
        "sao_paulo",
        "",
        "dc",
    )
    assert direct["state"] == "offline"


def test_node_validation_names_the_field(api: AdminServer) -> None:
    def create(**body: Any) -> list[str]:
        r = api.http.post("/v1/nodes", json=body)
        assert "s3cret" not in r.text  # messages never echo the url
        return _fields(r)

    assert create(kind="upstream") == ["url"]
    assert create(kind="upstream", url="ftp://u:s3cret@h:21") == ["url"]
    assert create(kind="upstream", url="http://u:s3cret@h") == ["url"]
    assert create(kind="upstream", url="http://u:s3cret@h:99999") == ["url"]
    assert create(kind="upstream", url="http://u:s3cret@:80") == ["url"]
    assert create(kind="direct", url="http://u:s3cret@h:80") == ["url"]
    assert create(kind="upstream", url="http://h:80", bind_address="127.0.0.1") == ["bind_address"]
    assert create(kind="direct", bind_address="eth0") == ["bind_address"]
    assert create(kind="agent") == ["kind"]
    assert create(kind="direct", country="zz") == ["country"]
    assert create(kind="direct", country="usa") == ["country"]
    assert create(kind="direct", network="wifi") == ["network"]
    assert create(kind="direct", asn=-1) == ["asn"]
    assert create(kind="direct", asn=4294967296) == ["asn"]
    assert create(kind="direct", asn="7018") == ["asn"]
    assert create(kind="direct", city="!!!") == ["city"]
    assert create(kind="direct", state="dead") == ["state"]
    assert create(kind="direct", colour="red") == ["colour"]


def test_node_list_filters_patch_delete(api: AdminServer) -> None:
    up = api.http.post("/v1/nodes", json=UPSTREAM).json()
    d1 = api.http.post(
        "/v1/nodes",
        json={"kind": "direct", "country": "us", "city": "Boston", "network": "res", "asn": 1},
    ).json()
    d2 = api.http.post("/v1/nodes", json={"kind": "direct", "country": "de"}).json()

    def ids(**params: Any) -> list[str]:
        r = api.http.get("/v1/nodes", params=params)
        assert r.status_code == 200, r.text
        return [n["id"] for n in r.json()]

    assert ids() == [up["id"], d1["id"], d2["id"]]
    assert ids(country="us") == [up["id"], d1["id"]]
    assert ids(country="US", city="New York") == [up["id"]]
    assert ids(network="res") == [d1["id"]]
    assert ids(kind="direct") == [d1["id"], d2["id"]]
    assert ids(asn=7018) == [up["id"]]
    assert ids(isp="at&t wireless") == [up["id"]]
    assert ids(region="nowhere") == []
    assert api.http.get("/v1/nodes", params={"network": "wifi"}).status_code == 422
    assert api.http.get("/v1/nodes", params={"country": "zz"}).status_code == 422

    changes: list[tuple[str, str | None]] = []
    api.registry.on_node_change(lambda n, i: changes.append((i, None if n is None else n.state)))
    r = api.http.patch(f"/v1/nodes/{d1['id']}", json={"state": "draining", "city": "Salem"})
    assert r.status_code == 200, r.text
    assert (r.json()["state"], r.json()["city"], r.json()["country"]) == ("draining", "salem", "us")
    assert changes == [(d1["id"], NodeState.DRAINING)]
    assert ids(state="draining") == [d1["id"]]
    assert ids(state="online") == [up["id"], d2["id"]]

    r = api.http.patch(f"/v1/nodes/{up['id']}", json={"url": "http://bob:n3w@127.0.0.1:3128"})
    assert r.json()["url"] == "http://bob:***@127.0.0.1:3128"
    assert api.registry.node(up["id"]).url == "http://bob:n3w@127.0.0.1:3128"  # type: ignore[union-attr]
    assert _fields(api.http.patch(f"/v1/nodes/{d1['id']}", json={"url": "http://h:1"})) == ["url"]
    assert _fields(api.http.patch(f"/v1/nodes/{up['id']}", json={"bind_address": "127.0.0.1"})) == [
        "bind_address"
    ]
    assert _fields(api.http.patch(f"/v1/nodes/{d1['id']}", json={"state": "gone"})) == ["state"]
    assert _fields(api.http.patch(f"/v1/nodes/{d1['id']}", json={"kind": "upstream"})) == ["kind"]
    assert api.http.patch("/v1/nodes/node_nope", json={"state": "online"}).status_code == 404

    assert api.http.delete(f"/v1/nodes/{d2['id']}").status_code == 204
    assert changes[-1] == (d2["id"], None)
    assert api.registry.node(d2["id"]) is None
    assert api.http.get(f"/v1/nodes/{d2['id']}").status_code == 404
    assert api.http.delete(f"/v1/nodes/{d2['id']}").status_code == 404


def test_restart_keeps_everything(tmp_path: Path) -> None:
    db = tmp_path / "admin.db"
    gen = serve_admin(db)
    first = next(gen)
    org = _org(first)
    pkg = _package(first, org["id"], rps_limit=3)
    node = first.http.post("/v1/nodes", json=UPSTREAM).json()
    gen.close()

    gen = serve_admin(db)
    second = next(gen)
    try:
        assert second.registry.package_by_key(pkg["key"]) is not None
        assert second.http.get(f"/v1/packages/{pkg['id']}").json()["rps_limit"] == 3
        assert second.registry.node(node["id"]) is not None
        assert "at_t_wireless" in second.registry.catalogue_names()[2]
    finally:
        gen.close()
