"""SOCKS5 through the real wire: curl, requests (socks5h), python-socks, a raw client."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import subprocess

import pytest
import requests
from python_socks.async_.asyncio import Proxy

from tests.support.gateway import GatewayThread
from tests.support.origin import EchoServer, Origin
from tests.support.socks import socks5_connect


@pytest.fixture
def lab(gw: GatewayThread) -> tuple[GatewayThread, str]:
    _, key = gw.package()
    gw.direct_node(bind="127.0.0.4", country="gb", city="london", region="england")
    gw.direct_node(bind="", country="fr")
    return gw, key


def test_curl_socks5_hostname_remote_dns(lab, origin: Origin) -> None:
    gw, key = lab
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--socks5-hostname",
         f"country-gb:{key}@{gw.proxy_host}:{gw.proxy_port}", f"http://localhost:{origin.port}/ip"],
        capture_output=True, text=True, check=False,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["ip"] == "127.0.0.4"


def test_requests_socks5h(lab, origin: Origin) -> None:
    gw, key = lab
    proxy = gw.proxy_url("country-gb-city-london", key, scheme="socks5h")
    r = requests.get(f"{origin.url}/ip", proxies={"http": proxy}, timeout=10)
    assert r.json()["ip"] == "127.0.0.4"


def test_python_socks_ipv4_ipv6_and_domain(lab) -> None:
    gw, key = lab
    v4 = EchoServer("127.0.0.1")
    try:
        v6 = EchoServer.__new__(EchoServer)
        v6.address_family = socket.AF_INET6
        EchoServer.__init__(v6, "::1")
    except OSError:
        pytest.skip("no IPv6 loopback")

    async def roundtrip(host: str, port: int) -> bytes:
        proxy = Proxy.from_url(f"socks5://country-fr:{key}@{gw.proxy_host}:{gw.proxy_port}",
                               rdns=True)
        sock = await proxy.connect(dest_host=host, dest_port=port, timeout=10)
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(b"ping " + host.encode())
        await writer.drain()
        writer.write_eof()
        data = await reader.read()
        writer.close()
        return data

    try:
        assert asyncio.run(roundtrip("127.0.0.1", v4.port)) == b"ping 127.0.0.1"
        assert asyncio.run(roundtrip("::1", v6.port)) == b"ping ::1"
        assert asyncio.run(roundtrip("localhost", v4.port)) == b"ping localhost"
    finally:
        v4.stop()
        v6.stop()


def test_raw_client_early_data_and_bound_address(lab, echo: EchoServer) -> None:
    gw, key = lab
    result = socks5_connect((gw.proxy_host, gw.proxy_port), "127.0.0.1", echo.port,
                            "country-gb", key)
    assert result.status == 0 and result.sock is not None
    with result.sock as sock:
        sock.sendall(b"x" * 100_000)
        sock.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    assert got == b"x" * 100_000


def test_unsupported_command_gets_reply_07(lab) -> None:
    gw, key = lab
    with socket.create_connection((gw.proxy_host, gw.proxy_port), timeout=5) as sock:
        sock.sendall(b"\x05\x01\x02")
        assert sock.recv(2) == b"\x05\x02"
        user, pw = b"country-gb", key.encode()
        sock.sendall(b"\x01" + bytes([len(user)]) + user + bytes([len(pw)]) + pw)
        assert sock.recv(2) == b"\x01\x00"
        sock.sendall(b"\x05\x02\x00\x01" + ipaddress.ip_address("127.0.0.1").packed + b"\x00\x50")
        assert sock.recv(3)[:2] == b"\x05\x07"
