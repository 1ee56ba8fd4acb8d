"""`GET /metrics` over the wire: open without a token, closed label sets, live byte counts,
no series per package."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from exitgate.observe.metrics import FAMILIES
from tests.support.gateway import GatewayThread, basic, parse_response, raw_exchange
from tests.support.origin import EchoServer, Origin
from tests.support.socks import socks5_connect

MB = 1_000_000


def scrape(gw: GatewayThread) -> dict[str, Metric]:
    resp = httpx.get(f"{gw.bound.admin_url}/metrics", timeout=5)  # no token: SPEC 9
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(resp.text)}


def exposed_name(family: Metric) -> str:
    """The family's name as FAMILIES lists it (the parser strips _total and _info)."""
    suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
    return family.name + suffix


def value(families: dict[str, Metric], name: str, **labels: str) -> float:
    total = 0.0
    for family in families.values():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def series(families: dict[str, Metric]) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {
        (s.name, tuple(sorted(s.labels.items()))) for f in families.values() for s in f.samples
    }


def forward(gw: GatewayThread, key: str, url: str, user: str = "country-us") -> int:
    raw = raw_exchange(
        gw.proxy_host,
        gw.proxy_port,
        f"GET {url} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {basic(user, key)}\r\n"
        "Connection: close\r\n\r\n".encode(),
    )
    return parse_response(raw)[0]


@pytest.fixture
def lab(gw: GatewayThread) -> Iterator[tuple[GatewayThread, str]]:
    _, key = gw.package()
    gw.direct_node(bind="127.0.0.2")
    yield gw, key


def test_metrics_are_open_and_only_documented_label_sets_appear(
    lab: tuple[GatewayThread, str], origin: Origin, echo: EchoServer
) -> None:
    gw, key = lab
    # traffic of every kind: forward, CONNECT, SOCKS5, and refusals
    assert forward(gw, key, f"{origin.url}/ip") == 200
    assert forward(gw, "wrong-key", f"{origin.url}/ip") == 407
    assert forward(gw, key, f"{origin.url}/ip", user="country-zz") == 400
    with socket.create_connection((gw.proxy_host, gw.proxy_port), timeout=5) as sock:
        sock.sendall(
            f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\n"
            f"Proxy-Authorization: {basic('country-us', key)}\r\n\r\n".encode()
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
    result = socks5_connect(gw.bound.proxy, "127.0.0.1", echo.port, "country-us", key)
    assert result.sock is not None
    result.sock.close()
    gw.gateway.stats.webhook_deliveries["delivered"] += 1  # what the webhooks work bumps

    families = scrape(gw)
    names = {exposed_name(f) for f in families.values()}
    assert names == set(FAMILIES), names ^ set(FAMILIES)
    for family in families.values():
        allowed = set(FAMILIES[exposed_name(family)])
        for sample in family.samples:
            extra = {"le"} if sample.name.endswith("_bucket") else set()
            assert set(sample.labels) == allowed | extra, (sample.name, sample.labels)
    # no label value ever names a package, key, client or target
    secrets = {key, "127.0.0.1", "127.0.0.2", str(echo.port), str(origin.port)}
    secrets |= {p.id for p in gw.call(gw.service.list_packages())}
    for _, labels in series(families):
        assert not {v for _, v in labels} & secrets, labels

    wait_for(lambda: value(scrape(gw), "exitgate_requests_total", protocol="socks5") >= 1)
    families = scrape(gw)
    assert value(families, "exitgate_requests_total", protocol="http", code="OK") == 1
    assert value(families, "exitgate_requests_total", protocol="http", code="AUTH_FAILED") == 1
    assert value(families, "exitgate_requests_total", code="ERR_INVALID_VALUE") == 1
    assert value(families, "exitgate_requests_total", protocol="https", code="OK") == 1
    assert value(families, "exitgate_auth_failures_total", reason="invalid_key") == 1
    assert value(families, "exitgate_exit_connect_duration_seconds_count", kind="direct") == 3
    assert value(families, "exitgate_request_duration_seconds_count", protocol="http") == 3
    assert value(families, "exitgate_nodes", kind="direct", state="online") == 1
    assert value(families, "exitgate_webhook_deliveries_total", outcome="delivered") == 1
    assert value(families, "exitgate_build_info") == 1
    assert value(families, "exitgate_usage_flush_lag_seconds") < 30


def wait_for(check: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def pump_open_tunnel(gw: GatewayThread, key: str, echo: EchoServer, total: int) -> socket.socket:
    """A CONNECT tunnel to the echo server that has moved `total` bytes each way, left open."""
    sock = socket.create_connection((gw.proxy_host, gw.proxy_port), timeout=10)
    sock.sendall(
        f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\n"
        f"Proxy-Authorization: {basic('country-us', key)}\r\n\r\n".encode()
    )
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    received = 0

    def reader() -> None:
        nonlocal received
        while received < total:
            chunk = sock.recv(1 << 20)
            if not chunk:
                return
            received += len(chunk)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    block = b"x" * (1 << 16)
    sent = 0
    while sent < total:
        sock.sendall(block)
        sent += len(block)
    thread.join(30)
    assert received >= total
    return sock


@pytest.mark.parametrize("metering", [True, False], ids=["metered", "metering-off"])
def test_bytes_of_an_open_tunnel_show_before_it_closes(
    tmp_path: Path, echo: EchoServer, metering: bool
) -> None:
    gw = GatewayThread(tmp_path, proxy={"metering": metering})
    try:
        _, key = gw.package()
        gw.direct_node(bind="127.0.0.2")
        before = scrape(gw)
        assert value(before, "exitgate_bytes_total", direction="up") == 0
        sock = pump_open_tunnel(gw, key, echo, 20 * MB)
        try:
            families = scrape(gw)  # the tunnel is still open
            assert value(families, "exitgate_tunnels_active") == 1
            assert value(families, "exitgate_connections_active") == 1
            assert value(families, "exitgate_bytes_total", direction="up") >= 20 * MB
            assert value(families, "exitgate_bytes_total", direction="down") >= 20 * MB
            assert value(families, "exitgate_requests_total") == 0  # counted when it ends
        finally:
            sock.close()
        wait_for(lambda: value(scrape(gw), "exitgate_requests_total", code="OK") == 1)
        assert value(scrape(gw), "exitgate_tunnels_active") == 0
    finally:
        gw.stop()


class _Ok(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pending = b""
        while chunk := sock.recv(65536):
            pending += chunk
            n = pending.count(b"\r\n\r\n")
            pending = pending.rsplit(b"\r\n\r\n", 1)[-1]
            if n:  # one write per batch: no small-write/delayed-ACK stalls between requests
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" * n)


class FastOrigin(socketserver.ThreadingTCPServer):
    """Answers every request with `200 ok` on kept-alive connections, in one write."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Ok)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.mark.slow
def test_ten_thousand_requests_from_a_thousand_packages_add_no_series(gw: GatewayThread) -> None:
    origin = FastOrigin()
    gw.direct_node(bind="127.0.0.2")
    org = gw.org()
    keys = [gw.package(org)[1] for _ in range(1000)]
    assert forward(gw, keys[0], f"{origin.url}/ip") == 200  # the series traffic creates
    before = scrape(gw)

    request = "GET {url} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {auth}\r\n\r\n"
    for key in keys:  # ten pipelined requests per connection, one connection per package
        auth = basic("country-us", key)
        one = request.format(url=f"{origin.url}/ip", auth=auth)
        last = one.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n")
        with socket.create_connection((gw.proxy_host, gw.proxy_port), timeout=10) as sock:
            sock.sendall((one * 9 + last).encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert data.count(b"HTTP/1.1 200") == 10, data[-300:]

    after = scrape(gw)
    origin.shutdown()
    origin.server_close()
    assert value(after, "exitgate_requests_total", protocol="http", code="OK") == 10_001
    assert series(after) == series(before)


def test_agents_connected_and_reconnects(tmp_path: Path) -> None:
    from tests.support.agents import HUB_TOKEN, ThreadAgent, attach_hub, wait_online, wait_until

    gw = GatewayThread(tmp_path, hub={"token": HUB_TOKEN})
    try:
        hub = attach_hub(gw)
        first = ThreadAgent(hub, "metrics-agent")
        wait_online(gw, "metrics-agent")
        families = scrape(gw)
        assert value(families, "exitgate_agents_connected") == 1
        assert value(families, "exitgate_agent_reconnects_total") == 0
        first.stop()
        wait_until(lambda: "metrics-agent" not in hub.live, 5)
        assert value(scrape(gw), "exitgate_agents_connected") == 0
        second = ThreadAgent(hub, "metrics-agent")
        try:
            wait_online(gw, "metrics-agent")
            families = scrape(gw)
            assert value(families, "exitgate_agents_connected") == 1
            assert value(families, "exitgate_agent_reconnects_total") == 1
            assert value(families, "exitgate_nodes", kind="agent", state="online") == 1
        finally:
            second.stop()
    finally:
        gw.stop()
