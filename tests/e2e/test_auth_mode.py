"""Issue 12 hole 7: a package's `auth_mode`. Clients that send credentials only after a 407
(urllib, Chromium, Java's HttpClient) get their rules from an allowlisted address once the
package asks for the key (`key`); `key_or_ip` stays SPEC 4's default; `ip` takes no key."""

from __future__ import annotations

import ipaddress
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from exitgate.model import AuthMode
from exitgate.store import migrate
from exitgate.store.sql import SqlStore
from exitgate.store.sql_schema import engine_for
from tests.e2e.test_admin_api import TOKEN as ADMIN_TOKEN
from tests.e2e.test_admin_api import serve_admin
from tests.support.cli import AdminCli
from tests.support.gateway import TOKEN, GatewayThread
from tests.support.origin import Origin
from tests.support.socks import socks5_connect

LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)
RULES = "country-de-session-mode1"


def _urllib_get(
    gw: GatewayThread, url: str, user: str, key: str
) -> tuple[int, Any, dict[str, str]]:
    """urllib as applications use it: credentials in a password manager, sent on a 407."""
    proxy = f"http://{gw.proxy_host}:{gw.proxy_port}"
    passwords = urllib.request.HTTPPasswordMgrWithDefaultRealm()
    passwords.add_password(None, proxy, user, key)
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": proxy}),
        urllib.request.ProxyBasicAuthHandler(passwords),
    )
    try:
        with opener.open(url, timeout=10) as answer:
            return answer.status, json.loads(answer.read()), dict(answer.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(), dict(err.headers)


@pytest.fixture
def two_exits(gw: GatewayThread) -> GatewayThread:
    gw.direct_node(bind="127.0.0.2", country="us")
    gw.direct_node(bind="127.0.0.3", country="de")
    return gw


def test_key_mode_gets_urllib_rules_applied_from_an_allowlisted_address(
    two_exits: GatewayThread, origin: Origin
) -> None:
    gw = two_exits
    _, key = gw.package(ip_allowlist=LOOPBACK, auth_mode=AuthMode.KEY)
    for _ in range(4):
        status, body, headers = _urllib_get(gw, f"{origin.url}/ip", RULES, key)
        assert status == 200, body
        assert body["ip"] == "127.0.0.3"  # the rules' exit, not country-any's
        assert headers.get("X-Exitgate-Session") in ("new", "kept")  # the session rule seen
    # no credentials at all: asked for them, even from the allowlisted address
    r = httpx.get(f"{origin.url}/ip", proxy=f"http://{gw.proxy_host}:{gw.proxy_port}")
    assert r.status_code == 407 and r.headers["x-soax-error"] == "ERR_AUTH_REQUIRED"
    # SOCKS5 "no authentication" from the allowlist: refused too
    assert socks5_connect((gw.proxy_host, gw.proxy_port), "127.0.0.1", origin.port).status != 0


def test_key_mode_allowlist_still_restricts_where_from(two_exits: GatewayThread,
                                                       origin: Origin) -> None:
    gw = two_exits
    elsewhere = (ipaddress.ip_network("10.9.9.9/32"),)
    _, key = gw.package(ip_allowlist=elsewhere, auth_mode=AuthMode.KEY)
    status, _, headers = _urllib_get(gw, f"{origin.url}/ip", RULES, key)
    assert status == 407 and headers["X-SOAX-Error"] == "IP_NOT_ALLOWED"


def test_default_mode_is_spec_4(two_exits: GatewayThread, origin: Origin) -> None:
    """key_or_ip: the allowlisted address alone is enough (urllib then never sends its key)."""
    gw = two_exits
    _, key = gw.package(ip_allowlist=LOOPBACK)
    status, _, headers = _urllib_get(gw, f"{origin.url}/ip", RULES, key)
    assert status == 200 and "X-Exitgate-Session" not in headers  # served as country-any
    r = httpx.get(f"{origin.url}/ip", proxy=gw.proxy_url(RULES, key))
    assert r.status_code == 200 and r.json()["ip"] == "127.0.0.3"


def test_ip_mode_takes_the_address_not_the_key(two_exits: GatewayThread,
                                               origin: Origin) -> None:
    gw = two_exits
    _, key = gw.package(ip_allowlist=LOOPBACK, auth_mode=AuthMode.IP)
    r = httpx.get(f"{origin.url}/ip", proxy=f"http://{gw.proxy_host}:{gw.proxy_port}")
    assert r.status_code == 200
    r = httpx.get(f"{origin.url}/ip", proxy=gw.proxy_url(RULES, ""))  # rules, empty key
    assert r.status_code == 200 and r.json()["ip"] == "127.0.0.3"
    r = httpx.get(f"{origin.url}/ip", proxy=gw.proxy_url(RULES, key))
    assert r.status_code == 407 and r.headers["x-soax-error"] == "AUTH_FAILED"


def test_admin_api_and_cli_field(gw: GatewayThread) -> None:
    base = gw.bound.admin_url
    headers = {"Authorization": f"Bearer {TOKEN}"}
    org = httpx.post(f"{base}/v1/orgs", json={"name": "a"}, headers=headers).json()
    r = httpx.post(f"{base}/v1/packages", headers=headers,
                   json={"org_id": org["id"], "auth_mode": "key", "ip_allowlist": ["10.0.0.1"]})
    assert r.status_code == 201 and r.json()["auth_mode"] == "key"
    pid = r.json()["id"]
    r = httpx.patch(f"{base}/v1/packages/{pid}", headers=headers, json={"auth_mode": "ip"})
    assert r.status_code == 200 and r.json()["auth_mode"] == "ip"
    assert gw.gateway.registry.package(pid).auth_mode is AuthMode.IP  # type: ignore[union-attr]
    for bad in ({"auth_mode": "password"}, {"auth_mode": None}):
        r = httpx.patch(f"{base}/v1/packages/{pid}", headers=headers, json=bad)
        assert r.status_code == 422
    r = httpx.post(f"{base}/v1/packages", headers=headers,
                   json={"org_id": org["id"], "auth_mode": "ip"})
    assert r.status_code == 422 and "ip_allowlist" in r.text


def test_an_older_database_gets_the_column(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = engine_for(url)
    migrate.upgrade(engine, "0001")  # the schema before issue 12, with a package in it
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO orgs (id, name, credits, created_at) VALUES ('org_old', 'a', NULL, 0)"))
        conn.execute(sa.text(
            "INSERT INTO packages (id, org_id, name, key_hash, status, ip_allowlist, protocols,"
            " networks, created_at) VALUES ('pkg_old', 'org_old', 'old', 'h', 'active', '[]',"
            " '[]', '[]', 0)"))
    engine.dispose()
    store = SqlStore(url)  # upgrades in place
    try:
        assert store.get_package("pkg_old").auth_mode is AuthMode.KEY_OR_IP
    finally:
        store.close()


def test_cli_auth_mode(tmp_path: Path) -> None:
    for api in serve_admin(tmp_path / "cli.db"):
        cli = AdminCli(api.url, ADMIN_TOKEN)
        org = cli.json("org", "create", "acme")
        pkg = cli.json("package", "create", "--org", org["id"], "--auth-mode", "key")
        assert pkg["auth_mode"] == "key"
        pkg = cli.json("package", "update", pkg["id"], "--auth-mode", "key_or_ip")
        assert pkg["auth_mode"] == "key_or_ip"
        bad = cli.run("package", "update", pkg["id"], "--auth-mode", "password")
        assert bad.exit_code != 0 and "password" in bad.stderr
