"""HTTP proxying through the real wire: CONNECT tunnels and absolute-form forwarding."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import subprocess
import time

import aiohttp
import httpx
import pytest
import requests

from tests.support.gateway import GatewayThread, basic, parse_response, raw_exchange
from tests.support.origin import EchoServer, Origin, free_port
from tests.support.socks import socks5_connect


@pytest.fixture
def lab(gw: GatewayThread) -> tuple[GatewayThread, str]:
    _, key = gw.package()
    gw.direct_node(bind="127.0.0.2", country="us", city="new_york", region="new_york")
    gw.direct_node(bind="127.0.0.3", country="de", city="berlin", region="berlin")
    return gw, key


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True, check=False
    )


def test_connect_tunnel_with_curl_exits_through_the_chosen_node(lab, origin: Origin) -> None:
    gw, key = lab
    # -p forces a CONNECT tunnel even for an http:// URL
    out = curl("-p", "-x", gw.proxy_url("country-de-city-berlin", key), f"{origin.url}/ip")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["ip"] == "127.0.0.3"
    out = curl("-p", "-x", gw.proxy_url("country-us", key), f"{origin.url}/ip")
    assert json.loads(out.stdout)["ip"] == "127.0.0.2"


def test_forward_with_curl_and_requests(lab, origin: Origin) -> None:
    gw, key = lab
    out = curl("-x", gw.proxy_url("country-us", key), f"{origin.url}/ip")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["ip"] == "127.0.0.2"
    proxies = {"http": gw.proxy_url("country-de", key)}
    with requests.Session() as s:
        for _ in range(3):
            r = s.get(f"{origin.url}/ip", proxies=proxies, timeout=10)
            assert r.status_code == 200
            assert r.json()["ip"] == "127.0.0.3"
        r = s.post(f"{origin.url}/post", data=b"x" * 100_000, proxies=proxies, timeout=10)
        assert r.json()["length"] == 100_000
        # a chunked request body (a generator has no length)
        r = s.post(f"{origin.url}/post", data=(b"ab" * 500 for _ in range(10)),
                   proxies=proxies, timeout=10)
        assert r.json()["length"] == 10_000


def test_forward_strips_hop_by_hop_and_proxy_headers(lab, origin: Origin) -> None:
    gw, key = lab
    request = (
        f"GET {origin.url}/headers HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n"
        f"Proxy-Authorization: {basic('country-us', key)}\r\nProxy-Connection: keep-alive\r\n"
        "Connection: close, X-Secret-Hop\r\nX-Secret-Hop: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\n"
        "X-End-To-End: kept\r\n\r\n"
    ).encode()
    status, _, body = parse_response(raw_exchange(gw.proxy_host, gw.proxy_port, request))
    assert status == 200
    seen = {k.lower() for k in json.loads(body)}
    assert "x-end-to-end" in seen
    for hop in ("proxy-authorization", "proxy-connection", "x-secret-hop", "keep-alive", "te"):
        assert hop not in seen
    assert key not in body.decode()


def test_every_request_on_a_kept_alive_connection_is_admitted_on_its_own(
    lab, origin: Origin
) -> None:
    gw, key = lab

    def req(user: str, k: str) -> bytes:
        return (f"GET {origin.url}/ip HTTP/1.1\r\nHost: x\r\n"
                f"Proxy-Authorization: {basic(user, k)}\r\n\r\n").encode()

    with socket.create_connection((gw.proxy_host, gw.proxy_port), timeout=5) as sock:
        f = sock.makefile("rb")

        def answer() -> tuple[int, dict[str, str], bytes]:
            status_line = f.readline()
            headers: dict[str, str] = {}
            while (line := f.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = f.read(int(headers.get("content-length", "0")))
            return int(status_line.split()[1]), headers, body

        sock.sendall(req("country-us", key))
        status, _, body = answer()
        assert status == 200 and json.loads(body)["ip"] == "127.0.0.2"
        sock.sendall(req("country-de", key))  # same connection, other rules: other exit
        status, _, body = answer()
        assert status == 200 and json.loads(body)["ip"] == "127.0.0.3"
        sock.sendall(req("country-us", "wrong-key"))
        status, headers, _ = answer()
        assert status == 407 and headers["x-soax-error"] == "AUTH_FAILED"
        sock.sendall(req("country-us", key))  # the connection survived the error
        status, _, body = answer()
        assert status == 200 and json.loads(body)["ip"] == "127.0.0.2"


def test_response_framings_chunked_until_close_and_head(lab, origin: Origin) -> None:
    gw, key = lab
    proxies = {"http": gw.proxy_url("country-us", key)}
    r = requests.get(f"{origin.url}/chunked?n=5", proxies=proxies, timeout=10)
    assert r.text == "".join(f"chunk{i}" for i in range(5))
    r = requests.get(f"{origin.url}/close", proxies=proxies, timeout=10)
    assert r.text == "until-close body"
    r = requests.head(f"{origin.url}/bytes/1000", proxies=proxies, timeout=10)
    assert r.status_code == 200 and r.headers["content-length"] == "1000"
    r = requests.get(f"{origin.url}/bytes/3000000", proxies=proxies, timeout=10)
    assert len(r.content) == 3_000_000
    r = requests.get(f"{origin.url}/status/404", proxies=proxies, timeout=10)
    assert r.status_code == 404  # a target status is relayed, not an error of ours


def test_httpx_and_aiohttp_clients(lab, origin: Origin) -> None:
    gw, key = lab
    with httpx.Client(proxy=gw.proxy_url("country-de", key), timeout=10) as client:
        assert client.get(f"{origin.url}/ip").json()["ip"] == "127.0.0.3"

    async def via_aiohttp() -> str:
        async with aiohttp.ClientSession() as session, session.get(
            f"{origin.url}/ip", proxy=gw.proxy_url("country-us", key)
        ) as resp:
            return str((await resp.json())["ip"])

    assert asyncio.run(via_aiohttp()) == "127.0.0.2"


def test_connect_relays_bytes_exactly_and_passes_early_data(lab, echo: EchoServer) -> None:
    gw, key = lab
    payload = bytes(range(256)) * 40_000  # 10 MB
    with socket.create_connection((gw.proxy_host, gw.proxy_port), timeout=10) as sock:
        # the CONNECT and the first payload bytes in one segment: nothing may be lost
        sock.sendall(
            f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\nHost: x\r\n"
            f"Proxy-Authorization: {basic('country-us', key)}\r\n\r\n".encode() + b"early"
        )
        f = sock.makefile("rb")
        assert f.readline().startswith(b"HTTP/1.1 200")
        while f.readline() != b"\r\n":
            pass
        assert f.read(5) == b"early"
        got = bytearray()
        import threading

        sender = threading.Thread(target=lambda: (sock.sendall(payload),
                                                  sock.shutdown(socket.SHUT_WR)))
        sender.start()
        while chunk := f.read1(1 << 16):
            got += chunk
        sender.join()
    assert bytes(got) == payload


def test_respond_with_headers_describe_the_node(lab, echo: EchoServer) -> None:
    gw, key = lab
    node = next(n for n in gw.gateway.registry.nodes.values() if n.attrs.country == "de")
    request = (
        f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\nHost: x\r\n"
        f"Proxy-Authorization: {basic('country-de', key)}\r\n"
        "Respond-With: ip,country,region,city,isp,asn,uid\r\n\r\n"
    ).encode()
    with socket.create_connection((gw.proxy_host, gw.proxy_port), timeout=5) as sock:
        sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
    status, headers, _ = parse_response(head)
    assert status == 200
    assert headers["node-ip"] == "127.0.0.3"
    assert headers["node-country"] == "de"
    assert headers["node-city"] == "berlin"
    assert headers["node-region"] == "berlin"
    assert headers["node-uid"] == node.id


def test_a_failing_node_is_replaced_transparently_without_a_session(gw, origin: Origin) -> None:
    from tests.support.origin import closed_port

    _, key = gw.package()
    gw.upstream_node(f"http://127.0.0.1:{closed_port()}", country="nl")  # refuses: node failure
    gw.direct_node(bind="127.0.0.6", country="nl")
    proxies = {"http": gw.proxy_url("country-nl", key)}
    for _ in range(12):  # with two nodes, random selection meets the dead one often
        r = requests.get(f"{origin.url}/ip", proxies=proxies, timeout=10)
        assert r.status_code == 200 and r.json()["ip"] == "127.0.0.6"
    out = curl("-p", "-x", gw.proxy_url("country-nl", key), f"{origin.url}/ip")
    assert json.loads(out.stdout)["ip"] == "127.0.0.6"


def _alive(kind: type) -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, kind))


def test_ended_connections_are_freed_without_the_cyclic_collector(
    lab, echo: EchoServer, origin: Origin
) -> None:
    """What a connection held (both sides' `Conn`s and transports, its meter, a refused
    dial's error) is freed by reference counting as soon as it ends, not left in reference
    cycles for the cyclic collector: with that off, ten rounds of CONNECT, SOCKS5, a
    forwarded request and a refused target leave none of it behind."""
    from exitgate.net.conn import Conn

    gw, key = lab
    auth = f"Proxy-Authorization: {basic('country-us', key)}\r\n"
    dead = free_port()
    gc.collect()
    gc.disable()
    try:
        conns, refusals = _alive(Conn), _alive(ConnectionRefusedError)
        for i in range(10):
            with socket.create_connection((gw.proxy_host, gw.proxy_port), timeout=5) as sock:
                sock.sendall(f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\n{auth}\r\n".encode())
                assert sock.recv(4096).startswith(b"HTTP/1.1 200")
                sock.sendall(b"ping %d" % i)
                assert sock.recv(4096) == b"ping %d" % i
            done = socks5_connect(
                (gw.proxy_host, gw.proxy_port), "127.0.0.1", echo.port, "country-us", key
            )
            assert done.sock is not None, done
            with done.sock as sock:
                sock.sendall(b"pong %d" % i)
                assert sock.recv(4096) == b"pong %d" % i
            get = f"GET {origin.url}/ip HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\r\n"
            forwarded = raw_exchange(gw.proxy_host, gw.proxy_port, get.encode())
            assert forwarded.startswith(b"HTTP/1.1 200"), forwarded[:200]
            refused = raw_exchange(
                gw.proxy_host, gw.proxy_port,
                f"CONNECT 127.0.0.1:{dead} HTTP/1.1\r\n{auth}\r\n".encode(),
            )  # fmt: skip
            assert refused.startswith(b"HTTP/1.1 502"), refused[:200]
        deadline = time.monotonic() + 5
        while _alive(Conn) > conns and time.monotonic() < deadline:
            time.sleep(0.05)  # the gateway's side of the last connections is still closing
        assert _alive(Conn) <= conns, "connections that ended wait for the cyclic collector"
        assert _alive(ConnectionRefusedError) <= refusals, "refused dials' errors wait for it"
    finally:
        gc.enable()
