"""Sticky sessions and rotation through the real wire (issue 3, SPEC 5).

Every exit is a direct node bound to its own loopback address (127.0.0.2 ... 127.0.0.5), so the
origin's `/ip` names the exit that served a request. Requests are made three ways where the
rule applies: an absolute-form GET (requests), a CONNECT tunnel carrying a GET (raw socket),
and a SOCKS5 CONNECT carrying a GET (the raw client of tests/support/socks.py).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import typer
from typer.testing import CliRunner

from exitgate.admin.cli_sessions import session_app
from exitgate.errors import Code
from exitgate.model import Node, Protocol
from tests.support.gateway import TOKEN, GatewayThread, basic, parse_response
from tests.support.origin import EchoServer, Origin
from tests.support.socks import socks5_connect

EXITS = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
TIMEOUT = 10.0


# -- clients (shared with test_failover.py) ------------------------------------------------------


@dataclass
class Answer:
    status: int  # HTTP status; for SOCKS5 the RFC 1928 reply byte
    headers: dict[str, str]  # lowercase names; the CONNECT response's for tunnels
    ip: str | None = None  # the address the origin saw, when the request got through


def via_forward(gw: GatewayThread, user: str, key: str, origin: Origin) -> Answer:
    """An absolute-form `GET /ip` on a fresh client connection (requests)."""
    r = requests.get(f"{origin.url}/ip", proxies={"http": gw.proxy_url(user, key)},
                     timeout=TIMEOUT)
    ip = r.json()["ip"] if r.status_code == 200 else None
    return Answer(r.status_code, {k.lower(): v for k, v in r.headers.items()}, ip)


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


def get_ip_over(sock: socket.socket, early: bytes = b"") -> str:
    """`GET /ip` over an open tunnel to the origin; the address the origin saw."""
    sock.sendall(b"GET /ip HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n")
    data = early
    while chunk := sock.recv(65536):
        data += chunk
    status, _, body = parse_response(data)
    assert status == 200, data
    return str(json.loads(body)["ip"])


def open_tunnel(
    gw: GatewayThread, user: str, key: str, host: str, port: int, respond_with: str = ""
) -> tuple[Answer, socket.socket, bytes]:
    """A CONNECT; the answer, the socket (open only on 200) and bytes read past the head."""
    sock = socket.create_connection((gw.proxy_host, gw.proxy_port), timeout=TIMEOUT)
    extra = f"Respond-With: {respond_with}\r\n" if respond_with else ""
    sock.sendall(
        f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Proxy-Authorization: {basic(user, key)}\r\n{extra}\r\n".encode()
    )
    head, rest = read_head(sock)
    status, headers, _ = parse_response(head)
    if status != 200:
        sock.close()
    return Answer(status, headers), sock, rest


def via_connect(
    gw: GatewayThread, user: str, key: str, origin: Origin, respond_with: str = ""
) -> Answer:
    """A CONNECT tunnel to the origin carrying `GET /ip`."""
    answer, sock, rest = open_tunnel(gw, user, key, "127.0.0.1", origin.port, respond_with)
    if answer.status == 200:
        with sock:
            answer.ip = get_ip_over(sock, rest)
    return answer


def via_socks(gw: GatewayThread, user: str, key: str, origin: Origin) -> Answer:
    """A SOCKS5 CONNECT to the origin carrying `GET /ip`; `status` is the reply byte."""
    result = socks5_connect((gw.proxy_host, gw.proxy_port), "127.0.0.1", origin.port, user,
                            key, timeout=TIMEOUT)
    answer = Answer(result.status, {})
    if result.sock is not None:
        with result.sock:
            answer.ip = get_ip_over(result.sock)
    return answer


VIAS = {"forward": via_forward, "connect": via_connect, "socks": via_socks}


def last_error(gw: GatewayThread, package_id: str) -> dict[str, object]:
    log = gw.gateway.recorder.recent_errors(package_id)
    assert log, "nothing in the recent-errors log"
    return log[0]


def session_of(gw: GatewayThread, package_id: str, session_id: str) -> dict[str, Any] | None:
    """The session as the admin API lists it (None: not live)."""
    r = httpx.get(f"{gw.bound.admin_url}/v1/sessions", params={"package_id": package_id},
                  headers={"Authorization": f"Bearer {TOKEN}"}, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    found = [s for s in r.json() if s["session"] == session_id]
    return found[0] if found else None


# -- fixtures -------------------------------------------------------------------------------------


@dataclass
class Lab:
    gw: GatewayThread
    package_id: str
    key: str
    nodes: dict[str, Node]  # by exit address


def make_lab(gw: GatewayThread, exits: tuple[str, ...] = EXITS) -> Lab:
    pkg, key = gw.package()
    nodes = {ip: gw.direct_node(bind=ip, country="us") for ip in exits}
    return Lab(gw, pkg.id, key, nodes)


@pytest.fixture
def lab(gw: GatewayThread) -> Lab:
    return make_lab(gw)


class WideOrigin(Origin):
    """An origin whose listen backlog takes 50 connections arriving at once."""

    request_queue_size = 256


@pytest.fixture
def wide_origin() -> Iterator[Origin]:
    server = WideOrigin()
    yield server
    server.stop()


# -- 1. the same session id keeps its exit --------------------------------------------------------


def test_a_session_keeps_its_exit_over_every_protocol(lab: Lab, origin: Origin) -> None:
    gw, key = lab.gw, lab.key
    user = "country-us-session-keep1"
    first = via_forward(gw, user, key, origin)
    assert first.status == 200 and first.ip in EXITS
    assert first.headers["x-exitgate-session"] == "new"
    for via in ("connect", "socks", "forward", "connect", "socks", "forward"):
        answer = VIAS[via](gw, user, key, origin)
        assert (answer.status, answer.ip) == (0 if via == "socks" else 200, first.ip), via
        if via != "socks":
            assert answer.headers["x-exitgate-session"] == "kept", via
    # the same rules written in another order are the same rules
    again = via_forward(gw, "session-keep1-country-us", key, origin)
    assert (again.status, again.ip) == (200, first.ip)
    shown = session_of(gw, lab.package_id, "keep1")
    assert shown is not None
    assert shown["node_id"] == lab.nodes[first.ip].id and shown["requests"] == 8
    # without a session the requests spread over the pool (else the test above proves nothing)
    seen = {via_forward(gw, "country-us", key, origin).ip for _ in range(16)}
    assert len(seen) >= 2
    # and a request without a session says nothing about sessions
    assert "x-exitgate-session" not in via_forward(gw, "country-us", key, origin).headers


def test_other_rules_on_a_live_session_are_409_and_leave_it_untouched(
    lab: Lab, origin: Origin
) -> None:
    gw, key = lab.gw, lab.key
    user = "country-us-session-lock1"
    first = via_connect(gw, user, key, origin)
    assert first.status == 200
    before = session_of(gw, lab.package_id, "lock1")
    assert before is not None
    for other in ("country-us-session-lock1-onerror-fail",
                  "country-us-session-lock1-rotate-requests_2",
                  "country-any-session-lock1"):
        for via in ("forward", "connect"):
            answer = VIAS[via](gw, other, key, origin)
            assert answer.status == 409, (other, via)
            assert answer.headers["x-soax-error"] == Code.SESSION_PARAMS_MISMATCH
            assert "lock1" in answer.headers["x-soax-detail"]
            assert "x-exitgate-session" not in answer.headers
        answer = via_socks(gw, other, key, origin)
        assert answer.status == 0x02
        logged = last_error(gw, lab.package_id)
        assert logged["code"] == Code.SESSION_PARAMS_MISMATCH
        assert logged["protocol"] == Protocol.SOCKS5
    # still on its node, its rules, counters and idle clock as they were
    now = session_of(gw, lab.package_id, "lock1")
    assert now is not None and now.pop("age") >= before.pop("age")
    assert now == before
    after = via_forward(gw, user, key, origin)
    assert (after.status, after.ip) == (200, first.ip)
    assert after.headers["x-exitgate-session"] == "kept"


def test_an_idle_session_expires_and_its_id_starts_afresh(tmp_path: Path, origin: Origin) -> None:
    gw = GatewayThread(tmp_path, sessions={"idle_timeout": 1.0})
    try:
        lab = make_lab(gw)
        user, other = "country-us-session-idle1", "country-us-session-idle1-onerror-fail"
        assert via_forward(gw, user, lab.key, origin).headers["x-exitgate-session"] == "new"
        time.sleep(0.6)
        # a use within the timeout restarts the idle clock ...
        assert via_forward(gw, user, lab.key, origin).headers["x-exitgate-session"] == "kept"
        time.sleep(0.6)
        # ... so 1.2 s after creation the session still holds its rules
        assert via_forward(gw, other, lab.key, origin).status == 409
        time.sleep(1.15)
        assert session_of(gw, lab.package_id, "idle1") is None
        fresh = via_forward(gw, other, lab.key, origin)
        assert fresh.status == 200 and fresh.headers["x-exitgate-session"] == "new"
        shown = session_of(gw, lab.package_id, "idle1")
        assert shown is not None and shown["rules"] == other and shown["requests"] == 1
        # the old rules are the mismatch now
        assert via_forward(gw, user, lab.key, origin).status == 409
    finally:
        gw.stop()


# -- 2. rotation ----------------------------------------------------------------------------------


def test_rotate_requests_moves_after_n_requests_of_any_kind(lab: Lab, origin: Origin) -> None:
    gw, key = lab.gw, lab.key
    user = "country-us-session-rot1-rotate-requests_3"
    plan = ["forward", "connect", "socks"] * 3 + ["forward"]
    answers = [VIAS[via](gw, user, key, origin) for via in plan]
    ips = [a.ip for a in answers]
    assert all(a.status in (0, 200) for a in answers)
    # three requests per node: a forwarded request, a tunnel and a SOCKS connection each count
    assert ips[0] == ips[1] == ips[2] != ips[3]
    assert ips[3] == ips[4] == ips[5] != ips[6]
    assert ips[6] == ips[7] == ips[8] != ips[9]
    marks = [a.headers.get("x-exitgate-session") for a in answers]
    assert marks == ["new", "kept", None, "rotated", "kept", None, "rotated", "kept", None,
                     "rotated"]
    # requests on one kept-alive client connection count one each too
    proxies = {"http": gw.proxy_url("country-us-session-rot2-rotate-requests_2", key)}
    with requests.Session() as client:
        replies = [client.get(f"{origin.url}/ip", proxies=proxies, timeout=TIMEOUT)
                   for _ in range(5)]
    ips = [r.json()["ip"] for r in replies]
    assert ips[0] == ips[1] != ips[2] == ips[3] != ips[4]
    assert [r.headers["x-exitgate-session"] for r in replies] == ["new", "kept", "rotated",
                                                                  "kept", "rotated"]


def test_rotation_with_a_single_matching_node_keeps_it(gw: GatewayThread, origin: Origin) -> None:
    lab = make_lab(gw, ("127.0.0.4",))
    user = "country-us-session-solo-rotate-requests_1"
    for i in range(4):
        answer = via_forward(gw, user, lab.key, origin)
        assert (answer.status, answer.ip) == (200, "127.0.0.4")
        assert answer.headers["x-exitgate-session"] == ("new" if i == 0 else "kept")
    # a second node appears: the rotation that stayed due happens at once
    gw.direct_node(bind="127.0.0.5", country="us")
    moved = via_forward(gw, user, lab.key, origin)
    assert (moved.ip, moved.headers["x-exitgate-session"]) == ("127.0.0.5", "rotated")


def test_rotate_timed_moves_after_n_seconds(lab: Lab, origin: Origin) -> None:
    gw, key = lab.gw, lab.key
    user = "country-us-session-tim1-rotate-timed_1"
    first = via_connect(gw, user, key, origin)
    assert first.headers["x-exitgate-session"] == "new"
    soon = via_forward(gw, user, key, origin)
    assert (soon.ip, soon.headers["x-exitgate-session"]) == (first.ip, "kept")
    time.sleep(1.1)
    later = via_connect(gw, user, key, origin)
    assert later.status == 200 and later.ip != first.ip
    assert later.headers["x-exitgate-session"] == "rotated"
    # the clock restarts with the new node
    again = via_socks(gw, user, key, origin)
    assert (again.status, again.ip) == (0, later.ip)


def test_an_open_tunnel_survives_rotations(lab: Lab, origin: Origin, echo: EchoServer) -> None:
    gw, key = lab.gw, lab.key
    user = "country-us-session-hold-rotate-requests_1"
    answer, tunnel, _ = open_tunnel(gw, user, key, "127.0.0.1", echo.port, "ip")
    assert answer.status == 200 and answer.headers["x-exitgate-session"] == "new"
    with tunnel:
        tunnel.sendall(b"ping-1")
        assert tunnel.recv(100) == b"ping-1"
        seen = [answer.headers["node-ip"]]
        for _ in range(3):  # every request rotates the session away from the last node
            moved = via_forward(gw, user, key, origin)
            assert moved.headers["x-exitgate-session"] == "rotated"
            assert moved.ip != seen[-1]
            seen.append(str(moved.ip))
            tunnel.sendall(b"still-there")
            assert tunnel.recv(100) == b"still-there"
        tunnel.shutdown(socket.SHUT_WR)
        assert tunnel.recv(100) == b""  # the echo's half-close came through: a clean end


# -- 6. racing first requests --------------------------------------------------------------------


def test_fifty_racing_first_requests_land_on_one_exit(lab: Lab, wide_origin: Origin) -> None:
    gw, key = lab.gw, lab.key
    user = "country-us-session-race1"
    clients = 50
    barrier = threading.Barrier(clients)
    results: list[Answer | BaseException] = [RuntimeError("not run")] * clients

    def client(i: int) -> None:
        via = ("forward", "connect", "socks")[i % 3]
        try:
            barrier.wait(TIMEOUT)
            results[i] = VIAS[via](gw, user, key, wide_origin)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    answers = [r for r in results if isinstance(r, Answer)]
    ips = {a.ip for a in answers}
    assert len(ips) == 1 and ips <= set(EXITS), ips
    assert {a.headers.get("x-exitgate-session") for a in answers} <= {"new", "kept", None}
    shown = session_of(gw, lab.package_id, "race1")
    assert shown is not None and shown["requests"] == clients
    assert shown["node_id"] == lab.nodes[ips.pop() or ""].id


# -- 7. Respond-With on CONNECT within a session -------------------------------------------------


def test_respond_with_names_the_session_node_and_follows_a_rotation(
    lab: Lab, origin: Origin
) -> None:
    gw, key = lab.gw, lab.key
    fields = "ip,country,region,city,isp,asn,uid"
    user = "country-us-session-rw1-rotate-requests_2"
    answers = [via_connect(gw, user, key, origin, fields) for _ in range(4)]
    for a in answers:
        assert a.status == 200
        node = lab.nodes[str(a.ip)]
        assert a.headers["node-uid"] == node.id
        assert a.headers["node-ip"] == a.ip  # the address the target saw
        assert a.headers["node-country"] == "us"
        assert {"node-region", "node-city", "node-isp", "node-asn"} <= set(a.headers)
    uids = [a.headers["node-uid"] for a in answers]
    assert uids[0] == uids[1] != uids[2] == uids[3]
    assert [a.headers["x-exitgate-session"] for a in answers] == ["new", "kept", "rotated",
                                                                  "kept"]
    # only the fields asked for
    some = via_connect(gw, user, key, origin, "uid, country")
    assert {k for k in some.headers if k.startswith("node-")} == {"node-uid", "node-country"}


# -- 8. the admin API and the CLI ----------------------------------------------------------------


def admin(gw: GatewayThread) -> httpx.Client:
    return httpx.Client(base_url=gw.bound.admin_url, timeout=TIMEOUT,
                        headers={"Authorization": f"Bearer {TOKEN}"})


def test_admin_api_lists_and_ends_sessions(lab: Lab, origin: Origin, echo: EchoServer) -> None:
    gw, key, pid = lab.gw, lab.key, lab.package_id
    a = via_forward(gw, "country-us-session-adm_a", key, origin)
    for _ in range(2):
        via_connect(gw, "country-us-session-adm_b-rotate-requests_9", key, origin)
    b = via_socks(gw, "country-us-session-adm_b-rotate-requests_9", key, origin)
    with admin(gw) as api:
        listed = api.get("/v1/sessions", params={"package_id": pid}).json()
        by_id = {s["session"]: s for s in listed}
        assert set(by_id) == {"adm_a", "adm_b"}
        assert by_id["adm_a"]["node_id"] == lab.nodes[str(a.ip)].id
        assert by_id["adm_b"]["node_id"] == lab.nodes[str(b.ip)].id
        assert by_id["adm_a"]["rules"] == "country-us-session-adm_a"
        assert by_id["adm_b"]["rules"] == "country-us-session-adm_b-rotate-requests_9"
        assert (by_id["adm_a"]["requests"], by_id["adm_b"]["requests"]) == (1, 3)
        for s in listed:
            assert s["package_id"] == pid and 0 <= s["age"] < 30
        # ending one: the next request with other rules is accepted and starts it afresh,
        # and a tunnel the session opened goes on
        other = "country-us-session-adm_a-onerror-fail"
        assert via_forward(gw, other, key, origin).status == 409
        answer, tunnel, _ = open_tunnel(gw, "country-us-session-adm_a", key, "127.0.0.1",
                                        echo.port)
        with tunnel:
            assert answer.status == 200
            assert api.delete(f"/v1/sessions/{pid}/adm_a").status_code == 204
            fresh = via_forward(gw, other, key, origin)
            assert fresh.status == 200 and fresh.headers["x-exitgate-session"] == "new"
            tunnel.sendall(b"after the end")
            assert tunnel.recv(100) == b"after the end"
        listed = api.get("/v1/sessions", params={"package_id": pid}).json()
        assert {s["session"]: s["rules"] for s in listed}["adm_a"] == other
        # unknown session, unknown package, no token
        assert api.delete(f"/v1/sessions/{pid}/nope").status_code == 404
        assert api.delete("/v1/sessions/pkg_nope/adm_a").status_code == 404
        assert api.get("/v1/sessions", params={"package_id": "pkg_nope"}).status_code == 404
    assert httpx.get(f"{gw.bound.admin_url}/v1/sessions", params={"package_id": pid},
                     timeout=TIMEOUT).status_code == 401


CLEAN_ENV = {"EXITGATE_ADMIN_TOKEN": None, "EXITGATE_ADMIN_URL": None, "EXITGATE_DATA_DIR": None}
cli_root = typer.Typer()
cli_root.add_typer(session_app, name="session")


def run_cli(gw: GatewayThread, *args: str) -> Any:
    argv = ["session", *args, "--admin", gw.bound.admin_url, "--token", TOKEN]
    return CliRunner().invoke(cli_root, argv, env=CLEAN_ENV)


def test_session_cli_lists_and_ends(lab: Lab, origin: Origin) -> None:
    gw, key, pid = lab.gw, lab.key, lab.package_id
    first = via_forward(gw, "country-us-session-cli1", key, origin)
    via_forward(gw, "country-us-session-cli1", key, origin)
    node_id = lab.nodes[str(first.ip)].id

    shown = run_cli(gw, "list", "--package", pid, "--json")
    assert shown.exit_code == 0, shown.stderr
    listed = json.loads(shown.stdout)
    assert [(s["session"], s["node_id"], s["requests"]) for s in listed] == [("cli1", node_id, 2)]

    table = run_cli(gw, "list", "--package", pid)
    assert table.exit_code == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[:4] == ["session", "node_id", "rules", "requests"]
    assert len(rows) == 1 and rows[0].split()[:4] == ["cli1", node_id, "country-us-session-cli1",
                                                      "2"]

    ended = run_cli(gw, "end", pid, "cli1")
    assert ended.exit_code == 0, ended.stderr
    assert "cli1" in ended.stdout
    assert json.loads(run_cli(gw, "list", "--package", pid, "--json").stdout) == []
    assert via_forward(gw, "country-us-session-cli1-onerror-fail", key, origin).status == 200

    again = run_cli(gw, "end", pid, "cli2")
    assert again.exit_code == 1 and again.stdout == ""
    assert again.stderr.strip() == "error: 404: session not found: cli2"
    nope = run_cli(gw, "list", "--package", "pkg_nope")
    assert nope.exit_code == 1
    assert nope.stderr.strip() == "error: 404: package not found: pkg_nope"
    missing = run_cli(gw, "list")
    assert missing.exit_code == 2  # --package is required
