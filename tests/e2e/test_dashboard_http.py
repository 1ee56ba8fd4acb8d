"""The dashboard over plain HTTP (no browser): the session guard turns requests away before
their body is read, the login form's own CSRF token, the security headers, the `/v1` twins of
what the pages do, and the chart history surviving a restart."""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

from exitgate.admin.dashboard.auth import CSP
from tests.support.gateway import TOKEN, GatewayThread
from tests.support.origin import Origin

BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def dgw(tmp_path: Path) -> Iterator[GatewayThread]:
    gw = GatewayThread(tmp_path, dashboard={"sample_interval": 0.2})
    with contextlib.ExitStack() as clients:
        gw.clients = clients  # type: ignore[attr-defined]
        yield gw
    gw.stop()


def client(gw: GatewayThread, **kw: Any) -> httpx.Client:
    """A client closed with the gateway (an unclosed one is a ResourceWarning: an error)."""
    c = httpx.Client(base_url=gw.bound.admin_url, timeout=20, **kw)
    return gw.clients.enter_context(c)  # type: ignore[attr-defined, no-any-return]


def logged_in(gw: GatewayThread) -> httpx.Client:
    c = client(gw)
    nonce = re.search(r'name="nonce" value="([^"]+)"', c.get("/login").text)
    assert nonce is not None
    done = c.post("/login", data={"nonce": nonce.group(1), "token": TOKEN})
    assert done.status_code == 303 and done.headers["location"] == "/"
    return c


def test_a_post_without_a_session_is_refused_before_its_body_is_read(
    dgw: GatewayThread,
) -> None:
    host, port = dgw.bound.admin
    with socket.create_connection((host, port), timeout=15) as sock:
        # A promised 10 MB form that never comes: a server reading the body first would
        # never answer (recv would time out); the guard answers from the head alone.
        sock.sendall(
            b"POST /packages/pkg_x/status HTTP/1.1\r\nHost: a\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 10000000\r\n\r\nstatus=paused"
        )
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 403")
    assert b"login required" in head


def test_pages_and_data_need_a_session_and_the_api_its_token(dgw: GatewayThread) -> None:
    base = dgw.bound.admin_url
    for path in ("/", "/packages", "/nodes", "/data/history", "/fragments/cards", "/nope"):
        r = httpx.get(base + path)
        assert (r.status_code, r.headers.get("location")) == (303, "/login"), path
    r = httpx.get(base + "/", cookies={"eg_session": "forged"})
    assert r.status_code == 303
    assert httpx.get(base + "/v1/stats").status_code == 401
    assert httpx.get(base + "/v1/stats", headers=BEARER).status_code == 200
    assert httpx.get(base + "/healthz").status_code == 200  # not the dashboard's
    assert httpx.get(base + "/static/dashboard.js").status_code == 200  # open


def test_login_needs_its_csrf_nonce_and_the_right_token(dgw: GatewayThread) -> None:
    c = client(dgw)
    c.get("/login")
    r = c.post("/login", data={"token": TOKEN})  # right token, no nonce
    assert r.status_code == 403 and "eg_session" not in r.cookies
    nonce = re.search(r'name="nonce" value="([^"]+)"', c.get("/login").text)
    assert nonce is not None
    r = c.post("/login", data={"nonce": nonce.group(1), "token": TOKEN + "x"})
    assert r.status_code == 401 and "eg_session" not in r.cookies
    nonce = re.search(r'name="nonce" value="([^"]+)"', r.text)  # a fresh one after a failure
    assert nonce is not None
    done = c.post("/login", data={"nonce": nonce.group(1), "token": TOKEN})
    set_cookie = ",".join(done.headers.get_list("set-cookie"))
    assert "HttpOnly" in set_cookie and "SameSite=strict" in set_cookie
    assert "Secure" not in set_cookie  # plain HTTP here; over TLS it is Secure


def test_security_headers_on_every_dashboard_answer(dgw: GatewayThread) -> None:
    c = logged_in(dgw)
    for path in ("/login", "/", "/tester", "/static/dashboard.css", "/data/history"):
        h = c.get(path).headers
        assert h["content-security-policy"] == CSP, path
        assert h["x-content-type-options"] == "nosniff"
        assert h["referrer-policy"] == "no-referrer"
    assert "unsafe-inline" not in CSP and "frame-ancestors 'none'" in CSP
    assert c.get("/").headers["cache-control"] == "no-store"
    c.post("/logout", data={"csrf": _csrf(c)})
    assert c.get("/").status_code == 303


def _csrf(c: httpx.Client) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', c.get("/orgs").text)
    assert found is not None
    return found.group(1)


def test_ui_forms_and_their_api_twins_change_the_same_things(dgw: GatewayThread) -> None:
    c = logged_in(dgw)
    csrf = _csrf(c)
    assert c.post("/orgs", data={"csrf": csrf, "name": "ui-org", "credits": "5"}).status_code == 303
    org = next(o for o in dgw.call(dgw.service.list_orgs()) if o.name == "ui-org")
    c.post(f"/orgs/{org.id}/credits", data={"csrf": csrf, "delta": "2.5"})
    api = client(dgw, headers=BEARER)
    assert api.post(f"/v1/orgs/{org.id}/credits", json={"delta": 1.5}).json()["credits"] == 9.0
    assert api.post(f"/v1/orgs/{org.id}/credits", json={"delta": "x"}).status_code == 422
    # a bad value in a form is a message naming the field, not a 500
    r = c.post("/orgs", data={"csrf": csrf, "name": "", "credits": "lots"}, follow_redirects=True)
    assert r.status_code == 200 and "credits: a number" in r.text
    for bad, message in ({"asn": "x"}, "asn: a whole number"), ({"country": "zz"}, "country"):
        form = {"csrf": csrf, "kind": "direct", "bind_address": "127.0.0.9"} | bad
        r = c.post("/nodes", data=form, follow_redirects=True)
        assert r.status_code == 200 and message in r.text
    assert dgw.call(dgw.service.list_nodes()) == []
    gone = c.post("/packages/pkg_nope/status", data={"csrf": csrf, "status": "paused"})
    assert gone.status_code == 404
    package, _ = dgw.package(org.id)
    c.post(f"/packages/{package.id}/limits", data={"csrf": csrf, "rps_limit": "7"})
    assert dgw.call(dgw.service.get_package(package.id)).limits.rps == 7
    r = c.post(f"/packages/{package.id}/key", data={"csrf": csrf})
    key = re.search(r'id="new-key">([^<]+)<', r.text)
    assert key is not None and r.headers["cache-control"] == "no-store"
    assert key.group(1) not in c.get(f"/packages/{package.id}").text  # shown once


def test_tester_api_reports_the_exit_and_the_exact_code(dgw: GatewayThread, origin: Origin) -> None:
    node = dgw.direct_node(bind="127.0.0.2", country="us")
    _, key = dgw.package()
    api = client(dgw, headers=BEARER)
    url = f"{origin.url}/ip"
    got = api.post("/v1/tester", json={"url": url, "rules": "country-us", "key": key}).json()
    assert (got["exit_ip"], got["node_id"], got["status"]) == ("127.0.0.2", node.id, 200)
    health = api.get(f"/v1/nodes/{node.id}/health").json()
    assert health["breaker"] == "closed"
    assert health["connects"] == 1 and 0 < health["connect_ms_avg"] == health["connect_ms_last"]
    got = api.post("/v1/tester", json={"url": url, "rules": "country-us", "key": "bad"}).json()
    assert got["status"] == 407 and got["error_code"] == "AUTH_FAILED"
    assert api.post("/v1/tester", json={"url": "ftp://x", "key": key}).status_code == 422


def test_chart_history_survives_a_restart(tmp_path: Path, origin: Origin) -> None:
    gw = GatewayThread(tmp_path, dashboard={"sample_interval": 0.2})
    try:
        gw.direct_node(bind="127.0.0.2", country="us")
        _, key = gw.package()
        proxy = gw.proxy_url("country-us", key)
        for _ in range(3):
            assert requests.get(f"{origin.url}/ip", proxies={"http": proxy}).status_code == 200
        time.sleep(0.5)
    finally:
        gw.stop()
    again = GatewayThread(tmp_path, dashboard={"sample_interval": 0.2})
    try:
        with httpx.Client(base_url=again.bound.admin_url, headers=BEARER) as api:
            data = api.get("/v1/stats/history", params={"range": "day"}).json()
            assert sum(data["requests"]) > 0 and sum(data["bytes_down"]) > 0
            assert api.get("/v1/stats/history", params={"range": "year"}).status_code == 422
    finally:
        again.stop()
