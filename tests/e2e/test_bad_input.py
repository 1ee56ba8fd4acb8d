"""Hostile and broken clients: each gets its documented answer or a close within the
configured timeouts, never a hang or a traceback, and the gateway goes on serving."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest
import requests

from tests.support.gateway import GatewayThread, basic, parse_response, raw_exchange
from tests.support.origin import Origin

HANDSHAKE = 1.0


@pytest.fixture
def strict_gw(tmp_path) -> Iterator[GatewayThread]:
    gateway = GatewayThread(tmp_path, proxy={"handshake_timeout": HANDSHAKE, "max_head_size": 8192})
    yield gateway
    gateway.stop()


@pytest.fixture
def key(strict_gw: GatewayThread) -> str:
    _, k = strict_gw.package()
    strict_gw.direct_node(bind="127.0.0.2", country="us")
    return k


def _closed_within(gw: GatewayThread, data: bytes, limit: float) -> tuple[bytes, float]:
    """Send `data` (without half-closing) and wait for the gateway to close on us."""
    start = time.monotonic()
    with socket.create_connection((gw.proxy_host, gw.proxy_port), timeout=limit + 5) as sock:
        if data:
            sock.sendall(data)
        got = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
    return got, time.monotonic() - start


def _still_serves(gw: GatewayThread, key: str, origin: Origin) -> None:
    r = requests.get(f"{origin.url}/ip", proxies={"http": gw.proxy_url("country-us", key)},
                     timeout=10)
    assert r.status_code == 200 and r.json()["ip"] == "127.0.0.2"


@pytest.fixture(autouse=True)
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.INFO)
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors]


@pytest.mark.parametrize("data", [
    b"\x00\x01\x02garbage\r\n\r\n",
    b"NOT A REQUEST\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET http://x/ HTTP/9.9\r\n\r\n",
    b"GET http://x/ HTTP/1.1\r\nbad header line\r\n\r\n",
    b"GET http://x/ HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
    b"GET http://x/ HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
])
def test_malformed_http_gets_a_4xx_or_5xx_and_a_close(strict_gw, key, origin, data) -> None:
    got, took = _closed_within(strict_gw, data, HANDSHAKE)
    status, headers, _ = parse_response(got)
    assert 400 <= status < 600
    assert headers.get("connection") == "close"
    assert took < HANDSHAKE + 2
    _still_serves(strict_gw, key, origin)


def test_oversized_head_gets_431(strict_gw, key, origin) -> None:
    data = b"GET http://x/ HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    got, _ = _closed_within(strict_gw, data, HANDSHAKE)
    assert parse_response(got)[0] == 431
    _still_serves(strict_gw, key, origin)


def test_endless_headers_are_cut_by_the_size_limit(strict_gw, key, origin) -> None:
    # header lines that never end the head: the size bound answers before the timeout
    data = b"GET http://x/ HTTP/1.1\r\n" + b"X-A: b\r\n" * 3000
    got, _ = _closed_within(strict_gw, data, HANDSHAKE)
    assert parse_response(got)[0] == 431
    _still_serves(strict_gw, key, origin)


@pytest.mark.parametrize("data", [
    b"",  # connects and says nothing
    b"GET http://x/ HTTP/1.1\r\nHost: x\r\n",  # a head that never ends (slowloris)
    b"\x05",  # a SOCKS greeting cut short
    b"\x05\x02\x00",  # greeting announcing two methods, one sent
    b"\x05\x01\x02\x01\x05user",  # the RFC 1929 sub-negotiation cut short
    b"\x16\x03\x01\x00",  # a TLS record on a gateway without a certificate
])
def test_stalled_handshakes_are_closed_within_the_timeout(strict_gw, key, origin, data) -> None:
    _, took = _closed_within(strict_gw, data, HANDSHAKE)
    assert took < HANDSHAKE + 2
    _still_serves(strict_gw, key, origin)


@pytest.mark.parametrize("data", [
    b"\x05\x00",  # zero methods
    b"\x05\x01\x02\x02\x00\x00",  # RFC 1929 with a wrong sub-negotiation version
    b"\x05\x01\x00\x05\x09\x00\x01",  # no-auth refused, then junk
])
def test_protocol_violations_in_socks_close_the_connection(strict_gw, key, origin, data) -> None:
    _, took = _closed_within(strict_gw, data, HANDSHAKE)
    assert took < HANDSHAKE + 2
    _still_serves(strict_gw, key, origin)


def test_malformed_proxy_authorization_is_auth_failed(strict_gw, key, origin) -> None:
    data = (f"GET {origin.url}/ip HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic !!!\r\n"
            "Connection: close\r\n\r\n").encode()
    status, headers, _ = parse_response(raw_exchange(strict_gw.proxy_host, strict_gw.proxy_port,
                                                     data))
    assert status == 407 and headers["x-soax-error"] == "AUTH_FAILED"


@pytest.mark.parametrize("line", [
    "CONNECT nohost HTTP/1.1", "CONNECT host:0 HTTP/1.1", "CONNECT host:99999 HTTP/1.1",
    "GET /origin-form HTTP/1.1", "GET https://example.test/ HTTP/1.1",
])
def test_bad_request_targets_get_400(strict_gw, key, line) -> None:
    data = f"{line}\r\nHost: x\r\nProxy-Authorization: {basic('country-us', key)}\r\n\r\n".encode()
    status, _, _ = parse_response(raw_exchange(strict_gw.proxy_host, strict_gw.proxy_port, data))
    assert status == 400


def test_key_never_appears_in_errors_or_logs(strict_gw, key, origin, caplog) -> None:
    data = (f"GET {origin.url}/ip HTTP/1.1\r\nHost: x\r\n"
            f"Proxy-Authorization: {basic('city-nowhere', key)}\r\n\r\n").encode()
    raw = raw_exchange(strict_gw.proxy_host, strict_gw.proxy_port, data)
    assert parse_response(raw)[0] == 400
    assert key not in raw.decode("latin-1")
    assert all(key not in r.getMessage() for r in caplog.records)


def test_many_abandoned_connections_leave_nothing_behind(strict_gw, key, origin) -> None:
    socks = [socket.create_connection((strict_gw.proxy_host, strict_gw.proxy_port))
             for _ in range(50)]
    for i, s in enumerate(socks):
        s.sendall([b"\x05", b"GET http://x", b"CONNECT a:1 HTTP/1.1\r\n"][i % 3])
    for s in socks:
        s.close()
    _still_serves(strict_gw, key, origin)
    deadline = time.monotonic() + HANDSHAKE + 3
    proxy = strict_gw.gateway.proxy
    assert proxy is not None
    while proxy.clients and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not proxy.clients
