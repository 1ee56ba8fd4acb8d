"""The PROXY protocol on the proxy listener (issue 9): from a configured balancer the header is
required and the client it names is the one used for IP allowlists, logs and errors; from any
other address a header is refused, and plain clients go on as before."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from exitgate.wire.proxy_protocol import encode_v1, encode_v2
from tests.support.gateway import GatewayThread, basic, parse_response
from tests.support.origin import Origin

CLIENT = "203.0.113.9"


@pytest.fixture
def lb_gw(tmp_path: Path):  # type: ignore[no-untyped-def]
    gw = GatewayThread(tmp_path, proxy={"proxy_protocol_from": ["127.0.0.1/32"]})
    yield gw
    gw.stop()


def _exchange(gw: GatewayThread, data: bytes, source: str = "127.0.0.1") -> bytes:
    with socket.create_connection((gw.proxy_host, gw.proxy_port), timeout=5,
                                  source_address=(source, 0)) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_the_balancers_header_names_the_client_for_allowlists_and_errors(
    lb_gw: GatewayThread, origin: Origin
) -> None:
    lb_gw.direct_node(bind="127.0.0.2", country="us")
    pkg, key = lb_gw.package(ip_allowlist=[f"{CLIENT}/32"])
    get = f"GET {origin.url}/ip HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n".encode()
    for header in (encode_v1((CLIENT, 40000), ("127.0.0.1", lb_gw.proxy_port)),
                   encode_v2((CLIENT, 40001), ("127.0.0.1", lb_gw.proxy_port))):
        status, _, body = parse_response(_exchange(lb_gw, header + get))
        assert status == 200 and json.loads(body)["ip"] == "127.0.0.2"  # allowlisted: served
    # without the header (the balancer's own address) the allowlist does not match
    status, headers, _ = parse_response(_exchange(
        lb_gw, encode_v1(("198.51.100.7", 1), ("127.0.0.1", 2)) + get))
    assert status == 407 and headers["x-soax-error"] == "ERR_AUTH_REQUIRED"
    # errors carry the named client, not the balancer
    bad = (f"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: x\r\n"
           f"Proxy-Authorization: {basic('country-zz', key)}\r\n\r\n").encode()
    _exchange(lb_gw, encode_v1((CLIENT, 5), ("127.0.0.1", 6)) + bad)
    log = lb_gw.gateway.recorder.recent_errors(pkg.id)
    assert log and log[0]["code"] == "ERR_INVALID_VALUE" and log[0]["client"] == CLIENT


def test_socks5_behind_the_balancer(lb_gw: GatewayThread, origin: Origin) -> None:
    lb_gw.direct_node(bind="127.0.0.2", country="us")
    lb_gw.package(ip_allowlist=[f"{CLIENT}/32"])
    header = encode_v2((CLIENT, 40002), ("127.0.0.1", lb_gw.proxy_port))
    host = b"127.0.0.1"
    request = (b"\x05\x01\x00" + b"\x05\x01\x00\x03" + bytes([len(host)]) + host
               + origin.port.to_bytes(2, "big"))
    with socket.create_connection((lb_gw.proxy_host, lb_gw.proxy_port), timeout=5) as sock:
        sock.sendall(header + request)
        reply = b""
        while len(reply) < 12:
            reply += sock.recv(64)
    assert reply[:2] == b"\x05\x00"  # no-auth accepted: the named client is allowlisted
    assert reply[2:4] == b"\x05\x00"  # CONNECT succeeded


def test_headers_from_others_and_garbage_from_the_balancer_are_refused(
    lb_gw: GatewayThread, origin: Origin
) -> None:
    lb_gw.direct_node(bind="127.0.0.2", country="us")
    _, key = lb_gw.package()
    get = (f"GET {origin.url}/ip HTTP/1.1\r\nHost: o\r\n"
           f"Proxy-Authorization: {basic('country-us', key)}\r\nConnection: close\r\n\r\n").encode()
    spoof = encode_v1((CLIENT, 1), ("127.0.0.1", 2))
    assert _exchange(lb_gw, spoof + get, source="127.0.0.3") == b""  # not a balancer: closed
    status, _, _ = parse_response(_exchange(lb_gw, get, source="127.0.0.3"))
    assert status == 200  # a plain client from elsewhere is served as before
    assert _exchange(lb_gw, get) == b""  # the balancer must send the header
    assert _exchange(lb_gw, b"PROXY TCP4 1.2.3.4 nonsense\r\n" + get) == b""


def test_curl_haproxy_protocol(lb_gw: GatewayThread, origin: Origin) -> None:
    lb_gw.direct_node(bind="127.0.0.2", country="us")
    _, key = lb_gw.package()
    out = subprocess.run(
        ["curl", "-s", "--max-time", "10", "--haproxy-protocol", "-x",
         f"http://country-us:{key}@{lb_gw.proxy_host}:{lb_gw.proxy_port}", f"{origin.url}/ip"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert json.loads(out)["ip"] == "127.0.0.2"
