"""Node agents end to end: real agent processes (or agents on their own loop) dial the test
gateway's hub; clients go through the gateway's proxy port with the real splice.

Loopback only: agents bind 127.0.0.x so the origin's /ip tells which agent carried a request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from exitgate.model import NodeKind, NodeState
from tests.support.agents import (
    HUB_TOKEN,
    AgentProcess,
    RawAgent,
    ThreadAgent,
    attach_hub,
    detach_hub,
    hello_for,
    node_state,
    raw_agent,
    wait_online,
    wait_until,
)
from tests.support.gateway import TOKEN, GatewayThread, basic, parse_response, raw_exchange
from tests.support.origin import EchoServer, Origin, closed_port, free_port


@pytest.fixture
def agw(tmp_path: Path) -> Iterator[GatewayThread]:
    gateway = GatewayThread(tmp_path, hub={"token": HUB_TOKEN})
    attach_hub(gateway)
    yield gateway
    detach_hub(gateway)
    gateway.stop()


@pytest.fixture
def key(agw: GatewayThread) -> str:
    return agw.package()[1]


@pytest.fixture
async def raws(agw: GatewayThread) -> AsyncIterator[Callable[..., Awaitable[RawAgent]]]:
    """Raw agents on the test's loop, closed at the end."""
    made: list[RawAgent] = []

    async def make(hello: bytes, *, answer: bool = False) -> RawAgent:
        agent = await raw_agent(hub_of(agw), hello, answer=answer)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        if agent.transport is not None:
            agent.transport.close()
    await asyncio.gather(*(asyncio.wait_for(a.closed, 5) for a in made), return_exceptions=True)


def hub_of(gw: GatewayThread):  # type: ignore[no-untyped-def]
    return attach_hub(gw)


def get(gw: GatewayThread, user: str, key: str, url: str) -> tuple[int, dict[str, str], bytes]:
    host = url.split("/")[2]
    raw = raw_exchange(
        gw.proxy_host,
        gw.proxy_port,
        f"GET {url} HTTP/1.1\r\nHost: {host}\r\nProxy-Authorization: {basic(user, key)}\r\n"
        "Connection: close\r\n\r\n".encode(),
    )
    return parse_response(raw)


class Tunnel(socket.socket):
    head = b""


def tunnel(gw: GatewayThread, user: str, key: str, port: int, extra: str = "") -> Tunnel:
    sock = Tunnel(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect((gw.proxy_host, gw.proxy_port))
    sock.sendall(
        f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Proxy-Authorization: {basic(user, key)}\r\n{extra}\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            break
        head += chunk
    sock.head = head
    return sock


def ip_through_tunnel(gw: GatewayThread, user: str, key: str, origin: Origin) -> str:
    with tunnel(gw, user, key, origin.port) as sock:
        assert sock.head.startswith(b"HTTP/1.1 200"), sock.head
        sock.sendall(b"GET /ip HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return str(json.loads(data.partition(b"\r\n\r\n")[2])["ip"])


# -- registration and targeting -----------------------------------------------------------------


def test_agents_register_and_serve_targeted_requests(
    agw: GatewayThread, key: str, origin: Origin, tmp_path: Path
) -> None:
    hub = hub_of(agw)
    ny = AgentProcess(hub, "ny-1", "--country", "us", "--city", "new_york", "--isp", "verizon",
                      "--asn", "701", "--network", "mob", "--bind", "127.0.0.5", tmp=tmp_path)
    de = AgentProcess(hub, "de-1", "--country", "de", "--bind", "127.0.0.6", tmp=tmp_path)
    try:
        node = wait_online(agw, "ny-1")
        wait_online(agw, "de-1")
        assert node.kind is NodeKind.AGENT
        assert (node.attrs.city, node.attrs.isp, node.attrs.asn) == ("new_york", "verizon", 701)
        assert node.ip == "127.0.0.5"  # its bind address: what targets see

        # visible in the admin API, with its state
        answer = httpx.get(f"{agw.bound.admin_url}/v1/nodes",
                           headers={"Authorization": f"Bearer {TOKEN}"})
        listed = {n["id"]: n for n in answer.json()}
        assert listed["ny-1"]["kind"] == "agent" and listed["ny-1"]["state"] == "online"
        assert listed["de-1"]["country"] == "de"

        for _ in range(3):  # every request lands on the agent the rules name
            assert ip_through_tunnel(agw, "country-us-city-new_york", key, origin) == "127.0.0.5"
            assert ip_through_tunnel(agw, "country-de", key, origin) == "127.0.0.6"
        status, _, body = get(agw, "isp-verizon-network-mob", key, f"{origin.url}/ip")
        assert status == 200 and json.loads(body)["ip"] == "127.0.0.5"

        # Respond-With describes the agent node
        with tunnel(agw, "country-de", key, origin.port, "Respond-With: uid,ip,country\r\n") as s:
            head = s.head.decode()
        assert "Node-Uid: de-1" in head and "Node-Country: de" in head
    finally:
        ny.stop()
        de.stop()
    wait_until(lambda: node_state(agw, "ny-1") is NodeState.OFFLINE, 5)


def test_socks5_through_an_agent(agw: GatewayThread, key: str, origin: Origin) -> None:
    from tests.support.socks import socks5_connect

    agent = ThreadAgent(hub_of(agw), "socks-1", bind="127.0.0.7")
    try:
        wait_online(agw, "socks-1")
        result = socks5_connect((agw.proxy_host, agw.proxy_port), "127.0.0.1", origin.port,
                                "country-us", key)
        assert result.status == 0 and result.sock is not None
        sock = result.sock
        sock.sendall(b"GET /ip HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        sock.close()
        assert json.loads(data.partition(b"\r\n\r\n")[2])["ip"] == "127.0.0.7"
    finally:
        agent.stop()


def test_twenty_megabytes_through_one_agent_stream_are_byte_exact(
    agw: GatewayThread, key: str, echo: EchoServer, tmp_path: Path
) -> None:
    agent = AgentProcess(hub_of(agw), "bulk-1", "--country", "us", tmp=tmp_path)
    try:
        wait_online(agw, "bulk-1")
        payload = os.urandom(20 * 1024 * 1024)
        with tunnel(agw, "country-us", key, echo.port) as sock:
            assert sock.head.startswith(b"HTTP/1.1 200")

            def send() -> None:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)

            sender = threading.Thread(target=send)
            started = time.monotonic()
            sender.start()
            digest = hashlib.sha256()
            received = 0
            while chunk := sock.recv(1 << 20):
                digest.update(chunk)
                received += len(chunk)
            sender.join()
            elapsed = time.monotonic() - started
        assert received == len(payload)
        assert digest.digest() == hashlib.sha256(payload).digest()
        print(f"20 MiB echoed through one agent stream in {elapsed:.2f} s")
    finally:
        agent.stop()


def test_stale_online_agent_nodes_are_swept_offline(agw: GatewayThread) -> None:
    from exitgate.model import NodeAttrs
    from exitgate.store.base import NewNode

    agw.call(agw.service.create_node(
        NewNode(kind=NodeKind.AGENT, id="stale-1", attrs=NodeAttrs(country="us"))
    ))
    assert node_state(agw, "stale-1") is NodeState.ONLINE  # left over by a crashed run
    hub = hub_of(agw)

    async def sweep() -> None:
        hub.book.sweep()
        await hub.book.settle()

    agw.call(sweep())
    assert node_state(agw, "stale-1") is NodeState.OFFLINE


def test_an_admins_draining_outlives_reconnects(agw: GatewayThread) -> None:
    from exitgate.store.base import NodeUpdate

    hub = hub_of(agw)
    first = ThreadAgent(hub, "keep-1")
    wait_online(agw, "keep-1")
    agw.call(agw.service.update_node("keep-1", NodeUpdate(state=NodeState.DRAINING)))
    first.stop()
    wait_until(lambda: "keep-1" not in hub.live, 5)
    second = ThreadAgent(hub, "keep-1")
    try:
        wait_until(lambda: "keep-1" in hub.live, 5)
        agw.call(hub.book.settle())
        assert node_state(agw, "keep-1") is NodeState.DRAINING
    finally:
        second.stop()


# -- target errors are not node failures ---------------------------------------------------------


def test_target_refused_is_target_unreachable_and_the_agent_stays(
    agw: GatewayThread, key: str
) -> None:
    agent = ThreadAgent(hub_of(agw), "t-1")
    try:
        wait_online(agw, "t-1")
        with tunnel(agw, "country-us", key, closed_port()) as sock:
            head = sock.head.decode()
        assert head.startswith("HTTP/1.1 502")
        assert "X-SOAX-Error: TARGET_UNREACHABLE" in head
        assert "refused" in head
        assert node_state(agw, "t-1") is NodeState.ONLINE
    finally:
        agent.stop()


def test_private_destination_named_by_dns_is_denied_by_default(tmp_path: Path) -> None:
    """A gateway without allow_private tells agents to deny names resolving to loopback."""
    gw = GatewayThread(tmp_path, hub={"token": HUB_TOKEN}, exit={"allow_private": False})
    hub = attach_hub(gw)
    hub.allow_private = False
    agent = ThreadAgent(hub, "p-1")
    try:
        wait_online(gw, "p-1")
        _, key = gw.package()
        with tunnel(gw, "country-us", key, 80) as sock:  # 127.0.0.1 literal: admission says no
            assert b"403" in sock.head.split(b"\r\n")[0]
        # A name the gateway cannot judge (it does not resolve it): the agent resolves it
        # (from /etc/hosts, no DNS traffic), sees loopback, and answers "denied".
        name = _loopback_hosts_name()
        if name is None:
            pytest.skip("no non-localhost loopback name in /etc/hosts")
        sock = socket.create_connection((gw.proxy_host, gw.proxy_port), timeout=10)
        sock.sendall(f"CONNECT {name}:9 HTTP/1.1\r\nProxy-Authorization: "
                     f"{basic('country-us', key)}\r\n\r\n".encode())
        head = sock.recv(4096).decode()
        sock.close()
        assert head.startswith("HTTP/1.1 403") and "X-SOAX-Error: DISALLOWED" in head
        assert node_state(gw, "p-1") is NodeState.ONLINE  # the target's fault, not the node's
    finally:
        agent.stop()
        detach_hub(gw)
        gw.stop()


def _loopback_hosts_name() -> str | None:
    try:
        lines = Path("/etc/hosts").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and fields[0].startswith("127."):
            for name in fields[1:]:
                if name != "localhost" and not name.endswith(".localhost") and "." not in name:
                    return name
    return None


# -- failures, liveness, failover ----------------------------------------------------------------


def test_killed_agent_fails_over_within_five_seconds(
    agw: GatewayThread, key: str, origin: Origin, tmp_path: Path
) -> None:
    hub = hub_of(agw)
    a = AgentProcess(hub, "fo-a", "--country", "us", "--bind", "127.0.0.8", tmp=tmp_path)
    b = AgentProcess(hub, "fo-b", "--country", "us", "--bind", "127.0.0.9", tmp=tmp_path)
    try:
        wait_online(agw, "fo-a")
        wait_online(agw, "fo-b")
        a.signal(signal.SIGKILL)
        killed = time.monotonic()
        seen = set()
        while time.monotonic() - killed < 5:
            seen.add(ip_through_tunnel(agw, "country-us", key, origin))
            if node_state(agw, "fo-a") is NodeState.OFFLINE and len(seen) >= 1:
                break
        assert node_state(agw, "fo-a") is NodeState.OFFLINE
        assert time.monotonic() - killed < 5
        assert {ip_through_tunnel(agw, "country-us", key, origin) for _ in range(5)} == {
            "127.0.0.9"
        }
    finally:
        a.stop()
        b.stop()


def test_silent_agent_is_offline_within_the_keepalive_timeout_then_reconnects(
    agw: GatewayThread, key: str, origin: Origin, tmp_path: Path
) -> None:
    """The keepalive bound: a silent agent is dead `keepalive_timeout` after its last frame
    (2 s here; 20 s by default), whether or not a tunnel is waiting on it."""
    hub = hub_of(agw)
    default = hub.limits
    hub.limits = dataclasses.replace(default, ping_interval=0.5, silence_timeout=2.0)
    a = AgentProcess(hub, "sil-a", "--country", "us", "--bind", "127.0.0.10", tmp=tmp_path)
    b = AgentProcess(hub, "sil-b", "--country", "us", "--bind", "127.0.0.11", tmp=tmp_path)
    try:
        wait_online(agw, "sil-a")
        wait_online(agw, "sil-b")
        a.signal(signal.SIGSTOP)  # alive socket, silent process
        stopped = time.monotonic()
        # requests keep working meanwhile: a tunnel opened on the silent agent fails as a node
        # failure when the hub declares it dead, and routing takes the other agent
        served = ip_through_tunnel(agw, "country-us", key, origin)
        assert served in ("127.0.0.11", "127.0.0.10")
        wait_until(lambda: node_state(agw, "sil-a") is NodeState.OFFLINE, 5.5, 0.02)
        detected = time.monotonic() - stopped
        print(f"silent agent offline after {detected:.2f} s")
        assert detected < 2.0 + 1.0  # the timeout, plus the node write and polling
        assert ip_through_tunnel(agw, "country-us", key, origin) == "127.0.0.11"
        a.signal(signal.SIGCONT)
        wait_online(agw, "sil-a", timeout=15)  # it notices, backs off, comes back
    finally:
        hub.limits = default
        a.stop()
        b.stop()


def test_a_tunnel_to_a_silently_dead_agent_fails_over_within_the_probe_timeout(
    agw: GatewayThread, key: str, origin: Origin, tmp_path: Path
) -> None:
    """Default keepalive (dead after 20 s of silence), but a tunnel opened on a link quiet for
    over a second PINGs it first: unanswered within 3 s, the agent is dead and the request
    goes to the other agent."""
    hub = hub_of(agw)
    assert hub.limits.silence_timeout == 20.0
    a = AgentProcess(hub, "pr-a", "--country", "fr", "--bind", "127.0.0.12", tmp=tmp_path)
    b = AgentProcess(hub, "pr-b", "--country", "fr", "--bind", "127.0.0.13", tmp=tmp_path)
    try:
        wait_online(agw, "pr-a")
        wait_online(agw, "pr-b")
        time.sleep(1.2)  # both links quiet for more than PROBE_AFTER
        a.signal(signal.SIGSTOP)
        stopped = time.monotonic()
        served = set()
        while node_state(agw, "pr-a") is not NodeState.OFFLINE:
            assert time.monotonic() - stopped < 8, "not found dead by the probe"
            started = time.monotonic()
            served.add(ip_through_tunnel(agw, "country-fr", key, origin))
            assert time.monotonic() - started < 3.0 + 2.0  # probe timeout, then failover
        assert time.monotonic() - stopped < 3.0 + 2.0
        assert ip_through_tunnel(agw, "country-fr", key, origin) == "127.0.0.13"
        a.signal(signal.SIGCONT)
    finally:
        a.stop()
        b.stop()


def test_sigterm_drains_open_tunnels_then_exits(
    agw: GatewayThread, key: str, echo: EchoServer, tmp_path: Path
) -> None:
    hub = hub_of(agw)
    a = AgentProcess(hub, "dr-a", "--country", "us", tmp=tmp_path)
    try:
        wait_online(agw, "dr-a")
        sock = tunnel(agw, "country-us", key, echo.port)
        assert sock.head.startswith(b"HTTP/1.1 200")
        a.signal(signal.SIGTERM)
        wait_until(lambda: node_state(agw, "dr-a") is NodeState.OFFLINE, 3)
        # no new tunnels through it...
        with tunnel(agw, "country-us", key, echo.port) as other:
            assert b"502" in other.head.split(b"\r\n")[0]
        # ...but the open one still carries bytes both ways
        sock.sendall(b"still here")
        assert sock.recv(100) == b"still here"
        assert a.proc.poll() is None
        sock.close()
        assert a.wait(10) == 0
    finally:
        a.stop()


def test_wrong_token_is_refused_and_not_logged(
    agw: GatewayThread, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="exitgate.hub")
    secret = "wrong-token-Zq81xK"
    agent = AgentProcess(hub_of(agw), "bad-1", "--country", "us", tmp=tmp_path, token=secret)
    try:
        assert agent.wait(10) == 1  # a permanent refusal: no retry loop
        assert "wrong token" in agent.output()
        assert agw.gateway.registry.node("bad-1") is None
        wait_until(lambda: any("wrong token" in r.getMessage() for r in caplog.records), 5)
        assert all(secret not in r.getMessage() for r in caplog.records)
        assert secret not in caplog.text
    finally:
        agent.stop()


def test_bad_flags_stop_the_agent_with_a_hint(agw: GatewayThread, tmp_path: Path) -> None:
    agent = AgentProcess(hub_of(agw), "flag-1", "--city", "New York", tmp=tmp_path)
    try:
        assert agent.wait(10) == 2
        assert "did you mean new_york?" in agent.output()
    finally:
        agent.stop()


def test_tls_hub(tmp_path: Path, origin: Origin) -> None:
    cert, key_file = tmp_path / "hub.pem", tmp_path / "hub.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key_file), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    gw = GatewayThread(tmp_path, hub={"token": HUB_TOKEN, "tls_cert": str(cert),
                                      "tls_key": str(key_file)})
    own = getattr(gw.gateway, "hub", None)
    if own is None:  # until app.py builds the hub from settings: start one with TLS here
        from exitgate.hub.server import build_hub

        async def start():  # type: ignore[no-untyped-def]
            hub = build_hub(gw.settings.hub.model_copy(update={"listen": "127.0.0.1:0"}),
                            gw.service, gw.gateway.registry, allow_private=True)
            await hub.start()
            gw.gateway.proxy.ctx.connector.dialer.agent_dialer = hub.dial  # type: ignore[union-attr]
            return hub

        own = gw.call(start())
        gw.hub = own
    agent = AgentProcess(own, "tls-1", "--country", "us", "--tls", "--ca", str(cert),
                         "--bind", "127.0.0.12", tmp=tmp_path)
    plain = AgentProcess(own, "plain-1", "--country", "us", tmp=tmp_path)
    try:
        wait_online(gw, "tls-1")
        _, key = gw.package()
        assert ip_through_tunnel(gw, "country-us", key, origin) == "127.0.0.12"
        assert gw.gateway.registry.node("plain-1") is None  # no TLS: never registers
    finally:
        agent.stop()
        plain.stop()
        detach_hub(gw)
        gw.stop()


def test_attributes_learned_from_the_checker(agw: GatewayThread, tmp_path: Path) -> None:
    mmdb_writer = pytest.importorskip("mmdb_writer")
    netaddr = pytest.importorskip("netaddr")
    db = tmp_path / "geo.mmdb"
    writer = mmdb_writer.MMDBWriter(ip_version=4, database_type="GeoIP2-City")
    writer.insert_network(netaddr.IPSet(["127.0.0.0/8"]), {
        "country": {"iso_code": "US", "names": {"en": "United States"}},
        "subdivisions": [{"names": {"en": "California"}}],
        "city": {"names": {"en": "Los Angeles"}},
        "isp": "Verizon Wireless",
        "mobile_network_code": "004",
    })
    writer.to_db_file(str(db))
    port = free_port()
    checker = subprocess.Popen(
        [sys.executable, "-c", "from exitgate.cli import main; main()", "checker",
         "--listen", f"127.0.0.1:{port}", "--mmdb", str(db)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    agent = None
    try:
        wait_until(lambda: _listening(port), 15)
        agent = AgentProcess(hub_of(agw), "geo-1", "--checker", f"http://127.0.0.1:{port}",
                             "--bind", "127.0.0.13", "--asn", "701", tmp=tmp_path)
        node = wait_online(agw, "geo-1", timeout=15)
        a = node.attrs
        assert (a.country, a.region, a.city, a.isp, a.asn, a.network.value) == (
            "us", "california", "los_angeles", "verizon_wireless", 701, "mob"
        )
        assert node.ip == "127.0.0.13"  # measured: the checker saw the bind address
    finally:
        if agent is not None:
            agent.stop()
        checker.terminate()
        checker.wait(10)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


# -- hostile agents ------------------------------------------------------------------------------


def frame(kind: int, flags: int, stream: int, payload: bytes, length: int | None = None) -> bytes:
    size = len(payload) if length is None else length
    return struct.pack(">I", size)[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


HOSTILE = {
    "garbage instead of hello": (b"\x16\x03\x01" + os.urandom(200), False),
    "hello line too long": (b"EXITGATE-AGENT/1 " + b"x" * 10_000, False),
    "garbage after hello": (os.urandom(256), True),
    "oversized frame": (frame(0x0, 0, 1, b"", length=1 << 20), True),
    "ping flood": (b"".join(frame(0x6, 0, 0, b"12345678") for _ in range(2000)), True),
    "reset flood": (b"".join(frame(0x3, 0, 2 * i + 101, b"\0\0\0\x08") for i in range(2000)),
                    True),
    "settings flood": (b"".join(frame(0x4, 0, 0, b"") for _ in range(2000)), True),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_hostile_agent_is_cut_off_alone(
    agw: GatewayThread, raws: Any, key: str, origin: Origin, case: str
) -> None:
    hub = hub_of(agw)
    good = ThreadAgent(hub, "good-1", bind="127.0.0.14")
    try:
        await asyncio.to_thread(wait_online, agw, "good-1")
        payload, after_hello = HOSTILE[case]
        bad = await raws(hello_for("evil-1") if after_hello else b"")
        if after_hello:
            assert (await asyncio.wait_for(bad.reply, 5)).startswith(b"OK")
        assert bad.transport is not None
        bad.transport.write(payload)
        await asyncio.wait_for(bad.closed, 3)
        if after_hello:
            await asyncio.to_thread(
                wait_until, lambda: node_state(agw, "evil-1") is NodeState.OFFLINE, 3
            )
        assert node_state(agw, "good-1") is NodeState.ONLINE
        ip = await asyncio.to_thread(ip_through_tunnel, agw, "country-us", key, origin)
        assert ip == "127.0.0.14"
    finally:
        good.stop()


async def test_invalid_attributes_are_refused_with_the_reason(
    agw: GatewayThread, raws: Any
) -> None:
    bad = await raws(hello_for("x-1", city="New York"))
    reply = await asyncio.wait_for(bad.reply, 5)
    assert reply.startswith(b"NO ")
    assert json.loads(reply[3:]) == {
        "error": "invalid",
        "reason": "city 'New York' is not a rule value (lowercase a-z 0-9, '_' for spaces, "
                  "at most 100 characters)",
    }
    await asyncio.wait_for(bad.closed, 3)
    assert agw.gateway.registry.node("x-1") is None


async def test_an_agent_cannot_take_over_a_direct_node(agw: GatewayThread, raws: Any) -> None:
    node = agw.direct_node(bind="127.0.0.2")
    bad = await raws(hello_for(node.id))
    reply = await asyncio.wait_for(bad.reply, 5)
    assert reply.startswith(b"NO ") and b"direct node" in reply


async def test_silent_hello_is_dropped(agw: GatewayThread, raws: Any) -> None:
    hub = hub_of(agw)
    assert hub.hello_timeout == 5.0
    hub.hello_timeout = 1.0  # the default is 5 s; the deadline is what is tested
    bad = await raws(b"EXITGATE-AGENT/1 {")  # never finishes its line
    started = time.monotonic()
    await asyncio.wait_for(bad.closed, 4)
    assert 0.9 <= time.monotonic() - started < 2.5


async def test_stalled_reader_is_cut_off_with_bounded_buffers(
    agw: GatewayThread, raws: Any, key: str
) -> None:
    """An agent that accepts a tunnel and then stops reading: the client is held back by flow
    control (its sends block), the hub's buffers stay small, and the agent is dropped when its
    PING answers stop."""
    hub = hub_of(agw)
    # this link only: a PING every 0.5 s while it has a tunnel, unanswered after 1 s ends it
    default = hub.limits
    hub.limits = dataclasses.replace(default, ping_interval=0.5, silence_timeout=1.5)
    bad = await raws(hello_for("stall-1"), answer=True)
    try:  # the hub (another thread) takes its limits when it accepts: after the OK, surely
        assert (await asyncio.wait_for(bad.reply, 5)).startswith(b"OK")
    finally:
        hub.limits = default
    await asyncio.to_thread(wait_online, agw, "stall-1")
    sock = await asyncio.to_thread(tunnel, agw, "country-us", key, 443)
    try:
        await _stall_and_push(agw, hub, bad, sock)
    finally:
        sock.close()  # a failure must not leave the socket to the next test's warnings


async def _stall_and_push(agw: GatewayThread, hub: Any, bad: Any, sock: Any) -> None:
    assert sock.head.startswith(b"HTTP/1.1 200")
    assert bad.transport is not None
    bad.transport.pause_reading()  # the stall
    sock.settimeout(0.5)
    chunk = b"z" * 65536
    accepted = 0

    def push() -> None:
        nonlocal accepted
        try:
            while accepted < 200 * 1024 * 1024:
                accepted += sock.send(chunk)
        except (TimeoutError, OSError):
            return

    await asyncio.to_thread(push)
    link = hub.live.get("stall-1")
    if link is not None:  # still connected: its buffers are bounded
        assert link.transport is not None
        assert link.transport.get_write_buffer_size() <= hub.limits.max_write_buffer
        assert all(s.pending_out <= 1024 * 1024 for s in list(link.streams.values()))
    assert accepted < 64 * 1024 * 1024  # the client was held back, not buffered for
    # PINGed every 0.5 s while busy, dead 1 s after an unanswered one: ~1.5 s; the bound
    # leaves room for a loaded machine's late timers
    await asyncio.to_thread(
        wait_until, lambda: node_state(agw, "stall-1") is NodeState.OFFLINE, 10
    )


# -- scale -----------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_thousand_idle_agents(agw: GatewayThread, raws: Any) -> None:
    hub = hub_of(agw)
    agents = []
    started = time.monotonic()
    for batch in range(10):
        created = await asyncio.gather(
            *(raws(hello_for(f"idle-{batch}-{i}")) for i in range(100))
        )
        agents.extend(created)
    replies = await asyncio.wait_for(asyncio.gather(*(a.reply for a in agents)), 30)
    assert all(r.startswith(b"OK") for r in replies)

    def all_online() -> bool:
        nodes = agw.gateway.registry.nodes.values()
        return sum(1 for n in nodes if n.state is NodeState.ONLINE) >= 1000

    await asyncio.to_thread(wait_until, all_online, 60, 0.2)
    registered = time.monotonic() - started
    await asyncio.sleep(2.5)  # PING rounds (every 1 s): everyone answers and stays up
    assert len(hub.live) == 1000
    assert not any(a.closed.done() for a in agents)
    print(f"1000 agents registered in {registered:.1f} s")
    for agent in agents:
        assert agent.transport is not None
        agent.transport.close()
    await asyncio.to_thread(
        wait_until,
        lambda: not any(n.state is NodeState.ONLINE for n in agw.gateway.registry.nodes.values()),
        30,
        0.2,
    )
