"""Issue 12: the global and per-address connection caps, over real sockets.

Client source addresses 127.0.0.1, 127.0.0.3 ... stand for different clients (all of
127.0.0.0/8 is local on Linux).
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.gateway import GatewayThread, basic, parse_response
from tests.support.origin import EchoServer

HEAD = b"GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n"


def _gateway(tmp: Path, **proxy: object) -> GatewayThread:
    return GatewayThread(tmp, proxy={"handshake_timeout": 5.0, **proxy})


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.INFO)
    yield caplog
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


def _open(gw: GatewayThread, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection((gw.proxy_host, gw.proxy_port), timeout=5,
                                    source_address=(source, 0))


def _all(sock: socket.socket) -> bytes:
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except ConnectionResetError:
        pass
    return got


def _http_answer(gw: GatewayThread, source: str = "127.0.0.1") -> tuple[int, dict[str, str]]:
    with _open(gw, source) as sock:
        sock.sendall(HEAD.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        status, headers, _ = parse_response(_all(sock))
    return status, headers


def _held(gw: GatewayThread, stack: ExitStack, n: int, source: str = "127.0.0.1") -> None:
    """`n` connections that the gateway has accepted and counted (each got an answer on a
    kept-alive connection, so they are past accept)."""
    for _ in range(n):
        sock = stack.enter_context(_open(gw, source))
        sock.sendall(HEAD)
        assert sock.recv(65536).startswith(b"HTTP/1.1 407")


def _counted(gw: GatewayThread, total: int) -> None:
    deadline = time.monotonic() + 5
    assert gw.gateway.proxy is not None
    while gw.gateway.proxy.caps.total != total and time.monotonic() < deadline:
        time.sleep(0.02)
    assert gw.gateway.proxy.caps.total == total


def test_per_address_cap_refuses_http_and_socks5_and_spares_other_addresses(tmp_path, log):
    gw = _gateway(tmp_path, max_connections_per_ip=3)
    try:
        with ExitStack() as stack:
            _held(gw, stack, 3)
            status, headers = _http_answer(gw)
            assert (status, headers["x-soax-error"], headers["connection"]) == (
                503, "TOO_MANY_CONNECTIONS", "close")
            with _open(gw) as sock:
                sock.sendall(b"\x05\x01\x02")
                assert _all(sock) == b"\x05\xff"  # refused at method selection, then closed
            # other addresses are served as usual (407: no credentials sent)
            assert _http_answer(gw, "127.0.0.3")[0] == 407
            _held(gw, stack, 3, "127.0.0.4")
            # the refusals were counted nowhere
            _counted(gw, 6)
        _counted(gw, 0)
        assert _http_answer(gw)[0] == 407  # the address is served again once its own close
        warnings = [r.getMessage() for r in log.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "over the cap from 127.0.0.1" in warnings[0]
    finally:
        gw.stop()


def test_global_cap_refuses_every_address(tmp_path, log):
    gw = _gateway(tmp_path, max_connections=4, max_connections_per_ip=0)
    try:
        with ExitStack() as stack:
            for source in ("127.0.0.1", "127.0.0.3", "127.0.0.4", "127.0.0.5"):
                _held(gw, stack, 1, source)
            for source in ("127.0.0.1", "127.0.0.6"):
                status, headers = _http_answer(gw, source)
                assert (status, headers["x-soax-error"]) == (503, "TOO_MANY_CONNECTIONS")
                assert "connection limit" in headers["x-soax-detail"]
        _counted(gw, 0)
        assert _http_answer(gw, "127.0.0.6")[0] == 407
    finally:
        gw.stop()


def test_tunnels_count_until_they_end(tmp_path, log, echo: EchoServer):
    gw = _gateway(tmp_path, max_connections_per_ip=2)
    try:
        _, key = gw.package()
        gw.direct_node(bind="127.0.0.2", country="us")
        connect = (f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\nHost: x\r\n"
                   f"Proxy-Authorization: {basic('country-us', key)}\r\n\r\n").encode()
        with ExitStack() as stack:
            tunnels = []
            for _ in range(2):
                sock = stack.enter_context(_open(gw))
                sock.sendall(connect)
                assert sock.recv(65536).startswith(b"HTTP/1.1 200")
                tunnels.append(sock)
            assert _http_answer(gw)[0] == 503
            tunnels[0].close()
            _counted(gw, 1)
            assert _http_answer(gw)[0] == 407
            tunnels[1].sendall(b"ping")
            assert tunnels[1].recv(64) == b"ping"
        _counted(gw, 0)
    finally:
        gw.stop()


def test_a_refused_flood_is_one_warning_and_holds_nothing(tmp_path, log):
    gw = _gateway(tmp_path, max_connections_per_ip=1)
    try:
        with ExitStack() as stack:
            _held(gw, stack, 1)
            for _ in range(50):
                with _open(gw) as sock:
                    sock.sendall(HEAD)
                    assert _all(sock).startswith(b"HTTP/1.1 503")
            _counted(gw, 1)
        warnings = [r.getMessage() for r in log.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings
    finally:
        gw.stop()


def test_cap_settings_have_production_defaults(tmp_path):
    gw = _gateway(tmp_path)
    try:
        proxy = gw.gateway.proxy
        assert proxy is not None
        assert proxy.caps.per_address == 256
        assert proxy.caps.limit >= 16  # derived from the descriptor limit
    finally:
        gw.stop()


def test_curl_over_the_cap_sees_the_503_and_the_socks5_refusal(tmp_path, log):
    gw = _gateway(tmp_path, max_connections_per_ip=1)
    try:
        with ExitStack() as stack:
            _held(gw, stack, 1)
            proxy = f"{gw.proxy_host}:{gw.proxy_port}"
            http = subprocess.run(
                ["curl", "-sS", "-i", "--max-time", "5", "-x", f"http://{proxy}",
                 "http://127.0.0.1:9/"], capture_output=True, text=True, check=False)
            assert http.stdout.startswith("HTTP/1.1 503 Service Unavailable")
            assert "X-SOAX-Error: TOO_MANY_CONNECTIONS" in http.stdout
            socks = subprocess.run(
                ["curl", "-sS", "--max-time", "5", "--socks5", proxy, "-U", "u:k",
                 "http://127.0.0.1:9/"], capture_output=True, text=True, check=False)
            assert socks.returncode == 97  # CURLE_PROXY: no acceptable authentication method
    finally:
        gw.stop()
