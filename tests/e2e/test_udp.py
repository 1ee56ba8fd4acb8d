"""SOCKS5 UDP ASSOCIATE end to end: PySocks + dnspython through every exit kind, to a DNS
server on loopback that answers with the source address it saw (so it names the exit)."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exitgate.model import Limits, Network, Protocol
from exitgate.net.udp_stats import UdpStats
from tests.support.agents import HUB_TOKEN, ThreadAgent, attach_hub, detach_hub, wait_online
from tests.support.gateway import GatewayThread
from tests.support.origin import Origin
from tests.support.socks import socks5_connect
from tests.support.udp import DnsServer, Socks5UdpUpstream, ask, query, udp_client

RES = Network.RES


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    server = DnsServer()
    yield server
    server.stop()


@pytest.fixture
def ugw(tmp_path: Path) -> Iterator[GatewayThread]:
    gateway = GatewayThread(tmp_path, hub={"token": HUB_TOKEN})
    yield gateway
    detach_hub(gateway)
    gateway.stop()


def stats(gw: GatewayThread) -> UdpStats:
    proxy = gw.gateway.proxy
    assert proxy is not None and proxy.ctx.udp is not None
    return proxy.ctx.udp.stats


def proxy_of(gw: GatewayThread) -> tuple[str, int]:
    return gw.proxy_host, gw.proxy_port


def wait_for(check, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def associate_raw(gw: GatewayThread, user: str, key: str) -> tuple[int, socket.socket]:
    """UDP ASSOCIATE by hand: (reply byte, control socket)."""
    sock = socket.create_connection(proxy_of(gw), timeout=5)
    sock.sendall(b"\x05\x01\x02")
    assert sock.recv(2) == b"\x05\x02"
    sock.sendall(bytes((1, len(user))) + user.encode() + bytes((len(key),)) + key.encode())
    assert sock.recv(2) == b"\x01\x00"
    sock.sendall(b"\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00")
    reply = b""
    while len(reply) < 10:
        chunk = sock.recv(10 - len(reply))
        if not chunk:
            break
        reply += chunk
    return reply[1], sock


# -- direct exits ----------------------------------------------------------------------------


def test_dns_through_direct_exits_leaves_from_the_bind_address(
    ugw: GatewayThread, dns_server: DnsServer
) -> None:
    ugw.direct_node(bind="127.0.0.2", country="us", network=RES)
    ugw.direct_node(bind="127.0.0.3", country="gb", network=Network.MOB)
    _, key = ugw.package()
    for user, ip in (("country-us", "127.0.0.2"), ("country-gb", "127.0.0.3")):
        with udp_client(proxy_of(ugw), user, key) as sock:
            seen, _, _ = ask(sock, dns_server)
            assert seen.split(":")[0] == ip


def test_one_exit_per_association_and_exact_bytes(
    ugw: GatewayThread, dns_server: DnsServer
) -> None:
    for bind in ("127.0.0.2", "127.0.0.3"):
        ugw.direct_node(bind=bind, country="us", network=RES)
    pkg, key = ugw.package()
    up = down = 0
    with udp_client(proxy_of(ugw), "country-us", key) as sock:
        sources = set()
        for i in range(8):
            seen, sent, got = ask(sock, dns_server, f"q{i}.exit.test.")
            sources.add(seen)
            up += sent
            down += got
        assert len(sources) == 1  # one socket on one exit: same address and port every time
    # payload bytes only: the 10-byte SOCKS5 header is not metered
    usage = wait_usage(ugw, pkg.id, bytes_up=up, bytes_down=down)
    assert usage == {"bytes_up": up, "bytes_down": down, "requests": 1}
    assert stats(ugw).bytes_up == up and stats(ugw).bytes_down == down


def wait_usage(gw: GatewayThread, package_id: str, **expected: int) -> dict[str, int]:
    deadline = time.monotonic() + 5
    while True:
        gw.call(gw.gateway.usage.flush())
        got = gw.call(gw.gateway.usage.totals(package_id))
        if all(got.get(k) == v for k, v in expected.items()) or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def test_a_sticky_session_keeps_its_exit_across_associations(
    ugw: GatewayThread, dns_server: DnsServer
) -> None:
    for bind in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        ugw.direct_node(bind=bind, country="us", network=RES)
    _, key = ugw.package()
    ips = set()
    for _ in range(4):
        with udp_client(proxy_of(ugw), "country-us-session-udp1", key) as sock:
            ips.add(ask(sock, dns_server)[0].split(":")[0])
    assert len(ips) == 1


# -- refusals --------------------------------------------------------------------------------


def test_a_package_without_udp_is_refused_disallowed(ugw: GatewayThread) -> None:
    ugw.direct_node(bind="127.0.0.2", country="us", network=RES)
    pkg, key = ugw.package(protocols=frozenset({Protocol.SOCKS5, Protocol.HTTP}))
    rep, control = associate_raw(ugw, "country-us", key)
    control.close()
    assert rep == 0x02
    errors = ugw.gateway.recorder.recent_errors(pkg.id)
    assert errors[0]["code"] == "DISALLOWED" and errors[0]["protocol"] == "udp"


def test_a_network_without_udp_is_refused(ugw: GatewayThread) -> None:
    ugw.direct_node(bind="127.0.0.2", country="us", network=Network.DC)
    pkg, key = ugw.package()
    rep, control = associate_raw(ugw, "country-us-network-dc", key)
    control.close()
    assert rep == 0x02
    rep, control = associate_raw(ugw, "country-us", key)  # only a dc node: none for UDP
    control.close()
    assert rep == 0x03
    codes = [e["code"] for e in ugw.gateway.recorder.recent_errors(pkg.id)]
    assert codes == ["NODE_NOT_FOUND", "DISALLOWED"]


def test_http_upstreams_are_not_udp_exits(ugw: GatewayThread) -> None:
    ugw.upstream_node("http://127.0.0.1:9", network=RES)
    pkg, key = ugw.package()
    rep, control = associate_raw(ugw, "country-us", key)
    control.close()
    assert rep == 0x03
    assert ugw.gateway.recorder.recent_errors(pkg.id)[0]["code"] == "NODE_NOT_FOUND"


def test_the_udp_networks_are_configurable(tmp_path: Path, dns_server: DnsServer) -> None:
    gw = GatewayThread(tmp_path, udp={"networks": ["dc"]})
    try:
        gw.direct_node(bind="127.0.0.2", country="us", network=Network.DC)
        _, key = gw.package()
        with udp_client(proxy_of(gw), "country-us", key) as sock:
            assert ask(sock, dns_server)[0].startswith("127.0.0.2:")
    finally:
        gw.stop()


# -- SOCKS5 upstream and agent exits ---------------------------------------------------------


def test_dns_through_a_socks5_upstream(ugw: GatewayThread, dns_server: DnsServer) -> None:
    upstream = Socks5UdpUpstream("127.0.0.5")
    try:
        ugw.upstream_node(upstream.url, network=RES)
        pkg, key = ugw.package()
        with udp_client(proxy_of(ugw), "country-us", key) as sock:
            seen, sent, got = ask(sock, dns_server)
            assert seen.startswith("127.0.0.5:")
            again, sent2, got2 = ask(sock, dns_server, "second.test.")
            assert again == seen
        assert upstream.associations == 1
        usage = wait_usage(ugw, pkg.id, bytes_up=sent + sent2)
        assert usage == {"bytes_up": sent + sent2, "bytes_down": got + got2, "requests": 1}
    finally:
        upstream.stop()


def test_dns_through_an_agent(ugw: GatewayThread, dns_server: DnsServer) -> None:
    attach_hub(ugw)
    agent = ThreadAgent(attach_hub(ugw), "udp-agent", bind="127.0.0.7")
    try:
        wait_online(ugw, "udp-agent")
        pkg, key = ugw.package()
        with udp_client(proxy_of(ugw), "country-us", key) as sock:
            seen, sent, got = ask(sock, dns_server)
            assert seen.startswith("127.0.0.7:")
            again, sent2, got2 = ask(sock, dns_server, "second.test.")
            assert again == seen
        usage = wait_usage(ugw, pkg.id, bytes_up=sent + sent2)
        assert usage == {"bytes_up": sent + sent2, "bytes_down": got + got2, "requests": 1}
    finally:
        agent.stop()


# -- RFC behaviour, bounds and abuse ---------------------------------------------------------


def test_the_association_ends_with_its_control_connection(
    ugw: GatewayThread, dns_server: DnsServer
) -> None:
    ugw.direct_node(bind="127.0.0.2", country="us", network=RES)
    _, key = ugw.package()
    sock = udp_client(proxy_of(ugw), "country-us", key)
    ask(sock, dns_server)
    assert stats(ugw).associations_active == 1
    sock.close()  # PySocks closes the control connection with the socket
    wait_for(lambda: stats(ugw).associations_active == 0)


def test_the_association_ends_after_the_idle_timeout(
    tmp_path: Path, dns_server: DnsServer
) -> None:
    gw = GatewayThread(tmp_path, udp={"idle_timeout": 0.3})
    try:
        gw.direct_node(bind="127.0.0.2", country="us", network=RES)
        _, key = gw.package()
        rep, control = associate_raw(gw, "country-us", key)
        assert rep == 0
        control.settimeout(3)
        assert control.recv(1) == b""  # the gateway closed the control connection
        assert stats(gw).associations_active == 0
        control.close()
    finally:
        gw.stop()


def test_abuse_is_dropped_and_counted_and_the_gateway_keeps_serving(
    ugw: GatewayThread, dns_server: DnsServer, origin: Origin
) -> None:
    ugw.direct_node(bind="127.0.0.2", country="us", network=RES)
    _, key = ugw.package()
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()  # nothing listens there now: every datagram draws an ICMP error
    with udp_client(proxy_of(ugw), "country-us", key) as sock:
        seen, _, _ = ask(sock, dns_server)
        relay = socket.socket.getpeername(sock)  # PySocks connected its socket to the relay
        to_dead = b"\x00\x00\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(
            "!H", dead_port
        ) + b"x" * 100

        def flood() -> None:  # a flood to a closed port, on the association's own socket
            for _ in range(5_000):
                socket.socket.send(sock, to_dead)

        flooder = threading.Thread(target=flood)
        flooder.start()
        try:
            # meanwhile TCP through the gateway is served
            body = get_ip(ugw, key, origin)
        finally:
            flooder.join()
        assert "127.0.0.2" in body
        quiet(lambda: stats(ugw).datagrams_up)  # the kernel drops what the relay cannot take
        sock.sendto(b"y" * 9000, (dns_server.host, dns_server.port))  # oversized
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        raw.connect(relay)
        raw.send(b"\x00\x00\x01\x01" + socket.inet_aton(dns_server.host)
                 + struct.pack("!H", dns_server.port) + query())  # fragment, and spoofed port
        raw.close()
        spoof = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        spoof.bind(("127.0.0.9", 0))  # another source address
        spoof.sendto(b"\x00\x00\x00\x01" + socket.inet_aton(dns_server.host)
                     + struct.pack("!H", dns_server.port) + query(), relay)
        spoof.close()
        wait_for(lambda: stats(ugw).dropped["spoofed"] == 2)
        wait_for(lambda: stats(ugw).dropped["oversized"] == 1)
        # the association still answers, from the same exit socket (retried as DNS clients do)
        assert ask_retrying(sock, dns_server) == seen
    assert {a for a, _ in dns_server.seen} == {"127.0.0.2"}
    assert len(dns_server.seen) in (2, 3)  # neither the spoofed nor the oversized one got out
    assert stats(ugw).datagrams_up + stats(ugw).dropped["queue_full"] > 100  # the flood came
    assert "127.0.0.2" in get_ip(ugw, key, origin)


def quiet(figure, still: float = 0.3, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """Wait until `figure()` stops moving for `still` seconds."""
    deadline = time.monotonic() + timeout
    last = figure()
    while time.monotonic() < deadline:
        time.sleep(still)
        now = figure()
        if now == last:
            return
        last = now


def ask_retrying(sock, server: DnsServer, tries: int = 3) -> str:  # type: ignore[no-untyped-def]
    sock.settimeout(2)
    for attempt in range(tries):
        try:
            return ask(sock, server, f"retry{attempt}.test.")[0]
        except TimeoutError:
            continue
    raise AssertionError("no answer after the abuse")


def get_ip(gw: GatewayThread, key: str, origin: Origin) -> str:
    result = socks5_connect(proxy_of(gw), "127.0.0.1", origin.port, "country-us", key)
    assert result.status == 0 and result.sock is not None
    result.sock.sendall(b"GET /ip HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n")
    body = b""
    while chunk := result.sock.recv(65536):
        body += chunk
    result.sock.close()
    return body.decode("latin-1")


def test_fragments_are_dropped(ugw: GatewayThread, dns_server: DnsServer) -> None:
    ugw.direct_node(bind="127.0.0.2", country="us", network=RES)
    _, key = ugw.package()
    with udp_client(proxy_of(ugw), "country-us", key) as sock:
        ask(sock, dns_server)
        # PySocks always sends FRAG 0: write the frame on its connected socket directly
        socket.socket.send(sock, b"\x00\x00\x02\x01" + socket.inet_aton(dns_server.host)
                           + struct.pack("!H", dns_server.port) + query())
        wait_for(lambda: stats(ugw).dropped["fragment"] == 1)
    assert len(dns_server.seen) == 1


# -- limits ----------------------------------------------------------------------------------


def test_an_open_association_holds_one_concurrency_slot(
    ugw: GatewayThread, dns_server: DnsServer, origin: Origin
) -> None:
    ugw.direct_node(bind="127.0.0.2", country="us", network=RES)
    pkg, key = ugw.package(limits=Limits(concurrency=1))
    with udp_client(proxy_of(ugw), "country-us", key) as sock:
        ask(sock, dns_server)
        refused = socks5_connect(proxy_of(ugw), "127.0.0.1", origin.port, "country-us", key)
        assert refused.status == 0x02
        assert ugw.gateway.recorder.recent_errors(pkg.id)[0]["code"] == "RATE_LIMIT_EXCEEDED"
    wait_for(lambda: stats(ugw).associations_active == 0)
    again = socks5_connect(proxy_of(ugw), "127.0.0.1", origin.port, "country-us", key)
    assert again.status == 0 and again.sock is not None
    again.sock.close()


def test_the_traffic_cap_ends_the_association(ugw: GatewayThread, dns_server: DnsServer) -> None:
    ugw.direct_node(bind="127.0.0.2", country="us", network=RES)
    pkg, key = ugw.package(limits=Limits(traffic_bytes=200))
    rep, control = associate_raw(ugw, "country-us", key)
    assert rep == 0
    with udp_client(proxy_of(ugw), "country-us", key) as sock:
        for i in range(3):  # 27 + 55 bytes a query: the third crosses 200
            ask(sock, dns_server, f"q{i}.test.")
        wait_for(lambda: stats(ugw).associations_active == 0)
    control.settimeout(3)
    assert control.recv(1) == b""  # the other association of the package ended too
    control.close()
    codes = [e["code"] for e in ugw.gateway.recorder.recent_errors(pkg.id)]
    assert "TRAFFIC_LIMIT_EXCEEDED" in codes
    rep, control = associate_raw(ugw, "country-us", key)  # and a new one is refused
    control.close()
    assert rep == 0x02


async def test_datagrams_in_flight_are_bounded() -> None:
    """A direct exit resolving names takes at most `max_queued` at once; the rest drop."""
    from exitgate.admission import DestinationPolicy
    from exitgate.model import Node, NodeAttrs, NodeKind, Target
    from exitgate.net.udp_exits import open_direct

    counted = UdpStats()
    node = Node("d", NodeKind.DIRECT, NodeAttrs(), bind_address="127.0.0.2")
    exit_ = await open_direct(node, DestinationPolicy(allow_private=True), lambda *a: None,
                              counted, max_queued=2)
    try:
        for i in range(5):  # no resolution can finish before the loop runs again
            exit_.send(Target(f"n{i}.exitgate.invalid", 53), b"q")
        assert counted.dropped["queue_full"] == 3
    finally:
        exit_.close()
