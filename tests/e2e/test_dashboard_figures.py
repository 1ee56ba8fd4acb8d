"""Figures the dashboard shows that come from the data path and the hub (issue 11): each
agent's version (from its hello) on the Agents page and `/v1/agents`, and the bytes each node
relayed on the Nodes page and `/v1/nodes/{id}/health`."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import requests

from exitgate import __version__
from exitgate.agent.identity import Flags
from exitgate.hub.protocol import MAGIC
from tests.support.agents import ThreadAgent, attach_hub, wait_until
from tests.support.gateway import TOKEN, GatewayThread, basic
from tests.support.origin import EchoServer, Origin

BEARER = {"Authorization": f"Bearer {TOKEN}"}
HUB_TOKEN = "test-hub-token"  # GatewayThread's hub


@pytest.fixture
def dgw(tmp_path: Path) -> Iterator[GatewayThread]:
    gw = GatewayThread(tmp_path)
    yield gw
    gw.stop()


@pytest.fixture
def ui(dgw: GatewayThread) -> Iterator[httpx.Client]:
    """A logged-in dashboard client."""
    with httpx.Client(base_url=dgw.bound.admin_url, timeout=20) as c:
        nonce = re.search(r'name="nonce" value="([^"]+)"', c.get("/login").text)
        assert nonce is not None
        assert c.post("/login", data={"nonce": nonce.group(1), "token": TOKEN}).status_code == 303
        yield c


def agents_api(gw: GatewayThread) -> dict[str, dict[str, object]]:
    answer = httpx.get(gw.bound.admin_url + "/v1/agents", headers=BEARER, timeout=10)
    assert answer.status_code == 200, answer.text
    return {a["agent_id"]: a for a in answer.json()}


def version_cell(page: str, agent_id: str) -> str:
    row = re.search(rf'<tr data-agent="{re.escape(agent_id)}">(.*?)</tr>', page, re.S)
    assert row is not None, agent_id
    cell = re.search(r'<td class="version">([^<]*)</td>', row.group(1))
    assert cell is not None
    return cell.group(1)


def test_agents_show_their_version_and_an_old_agent_shows_a_dash(
    dgw: GatewayThread, ui: httpx.Client, request: pytest.FixtureRequest
) -> None:
    hub = attach_hub(dgw)
    agent = ThreadAgent(hub, "agent-new", token=HUB_TOKEN, flags=Flags(country="nl"))
    request.addfinalizer(agent.stop)
    wait_until(lambda: "agent-new" in hub.live)
    # An agent from before the version field: the same hello line, without "version".
    old_hello = {"token": HUB_TOKEN, "id": "agent-old", "ip": "", "attrs": {"country": "de"}}
    with socket.create_connection(hub.address, timeout=10) as old:
        old.sendall(MAGIC + json.dumps(old_hello).encode() + b"\n")
        assert old.recv(200).startswith(b"OK ")  # registered, version or not
        wait_until(lambda: "agent-old" in hub.live)
        listed = agents_api(dgw)
        assert listed["agent-new"]["version"] == __version__
        assert listed["agent-old"]["version"] == ""
        page = ui.get("/agents")
        assert page.status_code == 200
        assert version_cell(page.text, "agent-new") == __version__
        assert version_cell(page.text, "agent-old") == "-"
    # A version that is not a short printable string: the hello is refused, naming it.
    bad = dict(old_hello, id="agent-bad", version="1.0 <script>")
    with socket.create_connection(hub.address, timeout=10) as conn:
        conn.sendall(MAGIC + json.dumps(bad).encode() + b"\n")
        reply = conn.recv(300)
    assert reply.startswith(b"NO ") and b'"invalid"' in reply and b"version" in reply
    assert "agent-bad" not in hub.live


def node_bytes(gw: GatewayThread, node_id: str) -> tuple[int, int]:
    answer = httpx.get(f"{gw.bound.admin_url}/v1/nodes/{node_id}/health", headers=BEARER)
    assert answer.status_code == 200, answer.text
    return answer.json()["bytes_up"], answer.json()["bytes_down"]


def test_nodes_show_the_bytes_they_relayed(
    dgw: GatewayThread, ui: httpx.Client, origin: Origin, echo: EchoServer
) -> None:
    busy = dgw.direct_node(bind="127.0.0.2", country="us")
    idle = dgw.direct_node(bind="127.0.0.3", country="fr")
    _, key = dgw.package()
    proxy = dgw.proxy_url("country-us", key)
    answer = requests.get(f"{origin.url}/bytes/30000", proxies={"http": proxy}, timeout=10)
    assert answer.status_code == 200 and len(answer.content) == 30_000
    up, down = node_bytes(dgw, busy.id)
    assert down >= 30_000 and up > 0  # the forwarded request: its head up, the body down
    # A CONNECT tunnel counts too, once it ends.
    with socket.create_connection((dgw.proxy_host, dgw.proxy_port), timeout=10) as s:
        s.sendall(
            f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\nHost: x\r\n"
            f"Proxy-Authorization: {basic('country-us', key)}\r\n\r\n".encode()
        )
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        s.sendall(b"x" * 5000)
        got = b""
        while len(got) < 5000:
            got += s.recv(65536)
    wait_until(lambda: node_bytes(dgw, busy.id)[0] >= up + 5000)
    assert node_bytes(dgw, busy.id)[1] >= down + 5000
    assert node_bytes(dgw, idle.id) == (0, 0)
    # the Nodes page shows them (and "-" for the node that relayed nothing)
    page = ui.get("/nodes").text
    rows = dict(re.findall(r'<tr data-node="([^"]+)">(.*?)</tr>', page, re.S))
    assert re.search(r"\d+(\.\d)? kB / \d+(\.\d)? kB", rows[busy.id])
    assert "kB" not in rows[idle.id]
    # a deleted node's figures go with it: the dict stays as small as the node table
    assert busy.id in dgw.gateway.node_bytes
    dgw.call(dgw.service.delete_node(busy.id))
    wait_until(lambda: busy.id not in dgw.gateway.node_bytes)


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None
    return found.group(1)


PUBLIC = "https://8.8.8.8/x"  # passes the destination check; never dialled (never stored)


def test_the_webhooks_page_refuses_bad_input_by_name(dgw: GatewayThread, ui: httpx.Client) -> None:
    """The add form goes through the API's own checks: each refusal names the field, keeps
    what was typed, and stores nothing. (This gateway keeps `allow_private` off.) The URLs
    hold literal addresses: no name lookup, and nothing is ever sent (nothing is stored)."""
    csrf = csrf_of(ui.get("/webhooks").text)
    org = dgw.org("hooks-http")
    cases = [
        ({"url": "ftp://192.0.2.1/x"}, "http"),
        ({"url": "http://127.0.0.1:9/hook"}, "private"),
        ({"url": PUBLIC, "events": "no.such.event"}, "unknown event type"),
        ({"url": PUBLIC, "org_id": "org_missing"}, "unknown organization"),
        ({"url": PUBLIC + "x" * 2000}, "url"),
    ]
    for given, words in cases:
        answer = ui.post("/webhooks", data={"csrf": csrf, "org_id": org} | given)
        assert answer.status_code == 422, given
        flash = re.search(r'<div class="flash error" role="status">([^<]*)</div>', answer.text)
        assert flash is not None and words in flash.group(1), (given, answer.text[:300])
        assert 'id="new-secret"' not in answer.text
    listed = httpx.get(dgw.bound.admin_url + "/v1/webhooks", headers=BEARER).json()
    assert listed == []
    # an unknown endpoint or delivery: 404, not a traceback
    for path in ("/webhooks/whe_nope/test", "/webhook-deliveries/whd_nope/replay"):
        assert ui.post(path, data={"csrf": csrf}).status_code == 404
