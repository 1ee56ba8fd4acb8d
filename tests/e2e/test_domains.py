"""Per-domain exit choice and bans through the real wire (issue 13).

Exits are direct nodes bound to 127.0.0.2-4, so the origin's `/ip` names the exit that served.
Two target domains reach the same origin: `127.0.0.1` and `localhost`. Clients: requests
(absolute-form, keep-alive sessions included) and curl (CONNECT tunnels).
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import httpx
import pytest
import requests
import typer
from typer.testing import CliRunner

from exitgate.admin.cli_bans import ban_app
from exitgate.errors import Code
from exitgate.model import AutoBan, Node
from tests.support.gateway import TOKEN, GatewayThread
from tests.support.origin import Origin

EXITS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
TIMEOUT = 10.0
cli_root = typer.Typer()
cli_root.add_typer(ban_app, name="ban")


class Lab:
    def __init__(self, gw: GatewayThread, **package: Any) -> None:
        self.gw = gw
        pkg, self.key = gw.package(**package)
        self.package_id = pkg.id
        self.nodes: dict[str, Node] = {ip: gw.direct_node(bind=ip, country="us") for ip in EXITS}
        self.by_id = {node.id: ip for ip, node in self.nodes.items()}

    def proxies(self, user: str = "country-us") -> dict[str, str]:
        url = self.gw.proxy_url(user, self.key)
        return {"http": url, "https": url}

    def get(
        self, origin: Origin, path: str = "/ip", *, host: str = "127.0.0.1",
        user: str = "country-us", headers: dict[str, str] | None = None,
        session: requests.Session | None = None,
    ) -> requests.Response:
        url = f"http://{host}:{origin.port}{path}"
        client: Any = session or requests
        return client.get(url, proxies=self.proxies(user), headers=headers, timeout=TIMEOUT)

    def curl(self, origin: Origin, *args: str, host: str = "127.0.0.1",
             user: str = "country-us") -> tuple[dict[str, str], str]:
        """A GET /ip through a CONNECT tunnel (curl -p); the CONNECT answer's headers and the
        address the origin saw."""
        done = subprocess.run(
            ["curl", "-sS", "-p", "-i", "--max-time", "10", "-x",
             f"http://{self.gw.proxy_host}:{self.gw.proxy_port}", "-U", f"{user}:{self.key}",
             *args, f"http://{host}:{origin.port}/ip"],
            capture_output=True, check=False,
        )
        assert done.returncode == 0, done.stderr
        out = done.stdout.decode("latin-1")
        connect_head = out.split("\r\n\r\n", 1)[0]
        headers = {}
        for line in connect_head.splitlines()[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = out.rsplit("\r\n\r\n", 1)[1]
        return headers, str(json.loads(body)["ip"])

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.gw.bound.admin_url,
                            headers={"Authorization": f"Bearer {TOKEN}"}, timeout=TIMEOUT)


@pytest.fixture
def lab(gw: GatewayThread) -> Lab:
    return Lab(gw)


def ip_of(r: requests.Response) -> str:
    assert r.status_code == 200, (r.status_code, r.headers, r.text)
    return str(r.json()["ip"])


# -- spreading ---------------------------------------------------------------------------------


def test_a_domain_is_spread_over_every_exit_before_one_is_reused(lab: Lab, origin: Origin) -> None:
    seen = [ip_of(lab.get(origin)) for _ in range(9)]
    assert set(seen[:3]) == set(EXITS), seen  # each exit once before any is reused
    assert seen[3:6] == seen[:3] and seen[6:9] == seen[:3], seen  # then least recent first
    # a kept-alive client connection is spread too (the router chooses, not the open conn)
    with requests.Session() as s:
        kept = [ip_of(lab.get(origin, session=s)) for _ in range(3)]
    assert set(kept) == set(EXITS), kept
    # another domain has its own memory: its first three requests also cover every exit
    other = [ip_of(lab.get(origin, host="localhost")) for _ in range(3)]
    assert set(other) == set(EXITS), other


def test_the_response_names_the_exit(lab: Lab, origin: Origin) -> None:
    r = lab.get(origin)
    assert lab.by_id[r.headers["X-Exitgate-Node"]] == ip_of(r)
    headers, ip = lab.curl(origin)
    assert lab.by_id[headers["x-exitgate-node"]] == ip


# -- bans by header ------------------------------------------------------------------------------


def test_a_ban_header_moves_traffic_off_the_exit_for_that_domain(
    lab: Lab, origin: Origin
) -> None:
    first = lab.get(origin)
    burned = first.headers["X-Exitgate-Node"]
    banned = lab.get(origin, headers={"X-Exitgate-Ban": f"{burned}; ttl=60"})
    assert ip_of(banned) != lab.by_id[burned]
    later = {ip_of(lab.get(origin)) for _ in range(8)}
    assert later == set(EXITS) - {lab.by_id[burned]}
    # the header never reaches the target
    echoed = lab.get(origin, "/headers", headers={"X-Exitgate-Ban": f"{burned}; ttl=60"})
    assert echoed.status_code == 200 and "X-Exitgate-Ban" not in echoed.json()
    # only that domain: localhost still uses the exit
    assert lab.by_id[burned] in {ip_of(lab.get(origin, host="localhost")) for _ in range(3)}
    # and only that package
    other = Lab.__new__(Lab)
    other.gw, other.nodes, other.by_id = lab.gw, lab.nodes, lab.by_id
    _, other.key = lab.gw.package()
    assert lab.by_id[burned] in {ip_of(other.get(origin)) for _ in range(3)}


def test_ban_last_over_a_connect_tunnel_with_curl(lab: Lab, origin: Origin) -> None:
    headers, first_ip = lab.curl(origin)
    assert lab.by_id[headers["x-exitgate-node"]] == first_ip
    headers, ip = lab.curl(origin, "--proxy-header", "X-Exitgate-Ban: last; ttl=60")
    assert ip != first_ip
    assert all(lab.curl(origin)[1] != first_ip for _ in range(4))
    with lab.api() as api:
        listed = api.get(f"/v1/packages/{lab.package_id}/bans").json()
    assert [(b["domain"], lab.by_id[b["node_id"]], b["reason"]) for b in listed] == [
        ("127.0.0.1", first_ip, "header")
    ]
    assert 55 < listed[0]["expires_in"] <= 60


def test_every_exit_banned_answers_node_not_found(lab: Lab, origin: Origin) -> None:
    for node in lab.nodes.values():
        lab.get(origin, headers={"X-Exitgate-Ban": node.id})
    r = lab.get(origin)
    assert r.status_code == 502
    assert r.headers["X-Soax-Error"] == Code.NODE_NOT_FOUND
    assert "banned for 127.0.0.1" in r.text


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ("node_nope", "unknown exit node_nope"),
        ("x; ttl=0", "ttl must be"),
        ("x; ttl=9999999", "ttl must be"),
        ("x; for=5", "unknown 'for'"),
        ("bad exit!", "bad exit"),
    ],
)
def test_a_bad_ban_header_is_a_400(lab: Lab, origin: Origin, value: str, detail: str) -> None:
    r = lab.get(origin, headers={"X-Exitgate-Ban": value})
    assert r.status_code == 400
    assert r.headers["X-Soax-Error"] == Code.ERR_INVALID_VALUE
    assert detail in r.text


def test_a_session_moves_off_a_banned_exit_for_that_domain(lab: Lab, origin: Origin) -> None:
    user = "country-us-session-ban1"
    first = lab.get(origin, user=user)
    node = first.headers["X-Exitgate-Node"]
    assert ip_of(lab.get(origin, user=user)) == lab.by_id[node]
    # banned for localhost only (by a sessionless request): requests to 127.0.0.1 keep it
    lab.get(origin, host="localhost", headers={"X-Exitgate-Ban": node})
    same = lab.get(origin, user=user)
    assert ip_of(same) == lab.by_id[node] and same.headers["X-Exitgate-Session"] == "kept"
    # the session's next request for localhost moves it (a session has one exit)
    moved = lab.get(origin, host="localhost", user=user)
    assert ip_of(moved) != lab.by_id[node]
    assert moved.headers["X-Exitgate-Session"] == "rotated"
    new_ip = ip_of(moved)
    kept = [ip_of(lab.get(origin, user=user)) for _ in range(3)]
    assert kept == [new_ip] * 3


def test_a_bound_session_on_a_banned_exit_fails(lab: Lab, origin: Origin) -> None:
    user = "country-us-session-bound1-bind-node"
    node = lab.get(origin, user=user).headers["X-Exitgate-Node"]
    r = lab.get(origin, user=user, headers={"X-Exitgate-Ban": node})
    assert r.headers["X-Soax-Error"] == Code.BOUND_NODE_FAILED
    assert "banned for 127.0.0.1" in r.text


def test_rotation_avoids_banned_exits(lab: Lab, origin: Origin) -> None:
    user = "country-us-session-rot1-rotate-requests_1"
    banned = lab.nodes[EXITS[0]].id
    lab.get(origin, headers={"X-Exitgate-Ban": banned})
    seen = [ip_of(lab.get(origin, user=user)) for _ in range(6)]
    assert EXITS[0] not in seen and len(set(seen)) == 2, seen


# -- automatic bans ----------------------------------------------------------------------------


def test_auto_ban_on_403_and_lift_by_api_and_cli(gw: GatewayThread, origin: Origin) -> None:
    lab = Lab(gw, autoban=AutoBan(frozenset({403, 429}), ttl=120))
    r = lab.get(origin, "/status/403")
    assert r.status_code == 403
    burned = r.headers["X-Exitgate-Node"]
    assert lab.get(origin, "/status/404").status_code == 404  # not configured: no ban
    assert all(ip_of(lab.get(origin)) != lab.by_id[burned] for _ in range(6))
    with lab.api() as api:
        check_bans_api_and_cli(lab, api, origin, burned)


def check_bans_api_and_cli(lab: Lab, api: httpx.Client, origin: Origin, burned: str) -> None:
    listed = api.get(f"/v1/packages/{lab.package_id}/bans").json()
    assert [(b["node_id"], b["reason"]) for b in listed] == [(burned, "status 403")]

    shown = run_cli(lab, "list", "--package", lab.package_id, "--json")
    assert shown.exit_code == 0, shown.stderr
    assert [b["node_id"] for b in json.loads(shown.stdout)] == [burned]
    table = run_cli(lab, "list", "--package", lab.package_id)
    assert table.stdout.splitlines()[0].split() == [
        "domain", "node_id", "reason", "until", "expires_in"
    ]
    lifted = run_cli(lab, "lift", lab.package_id, "--domain", "127.0.0.1", "--node", burned)
    assert lifted.exit_code == 0 and lifted.stdout.strip() == "1 ban lifted"
    assert api.get(f"/v1/packages/{lab.package_id}/bans").json() == []
    assert lab.by_id[burned] in {ip_of(lab.get(origin)) for _ in range(3)}

    # by hand through the API, lifted by domain through the API
    added = api.post(f"/v1/packages/{lab.package_id}/bans",
                     json={"domain": "LocalHost.", "node_id": burned, "ttl": 30})
    assert added.status_code == 201 and added.json()["domain"] == "localhost"
    assert api.delete(f"/v1/packages/{lab.package_id}/bans/localhost").json() == {"lifted": 1}
    assert api.delete(f"/v1/packages/{lab.package_id}/bans").json() == {"lifted": 0}
    assert api.get("/v1/packages/pkg_nope/bans").status_code == 404
    bad = api.post(f"/v1/packages/{lab.package_id}/bans",
                   json={"domain": "x", "node_id": "node_nope"})
    assert bad.status_code == 422
    nope = run_cli(lab, "list", "--package", "pkg_nope")
    assert nope.exit_code == 1 and "package not found" in nope.stderr


def test_autoban_is_a_package_setting_in_the_admin_api(gw: GatewayThread) -> None:
    lab = Lab(gw)
    with lab.api() as api:
        check_autoban_setting(api, f"/v1/packages/{lab.package_id}")


def check_autoban_setting(api: httpx.Client, path: str) -> None:
    assert api.get(path).json()["autoban"] is None
    set_ = api.patch(path, json={"autoban": {"statuses": [429, 403], "ttl": 90}})
    assert set_.status_code == 200 and set_.json()["autoban"] == {"statuses": [403, 429],
                                                                   "ttl": 90}
    assert api.patch(path, json={"autoban": {"statuses": [99]}}).status_code == 422
    assert api.patch(path, json={"autoban": {"statuses": []}}).status_code == 422
    assert api.patch(path, json={"autoban": None}).json()["autoban"] is None


def test_bans_expire(lab: Lab, origin: Origin) -> None:
    node = lab.nodes[EXITS[0]].id
    lab.get(origin, headers={"X-Exitgate-Ban": f"{node}; ttl=1"})
    assert all(ip_of(lab.get(origin)) != EXITS[0] for _ in range(4))
    time.sleep(1.1)
    assert EXITS[0] in {ip_of(lab.get(origin)) for _ in range(3)}


def run_cli(lab: Lab, *args: str) -> Any:
    argv = ["ban", *args, "--admin", lab.gw.bound.admin_url, "--token", TOKEN]
    env = {"EXITGATE_ADMIN_TOKEN": None, "EXITGATE_ADMIN_URL": None, "EXITGATE_DATA_DIR": None}
    return CliRunner().invoke(cli_root, argv, env=env)
