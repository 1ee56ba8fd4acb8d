"""The access log over the wire: one JSON line per tunnel, SOCKS5 connection and forwarded
request, with its fields, and never a package key or an upstream password."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.gateway import GatewayThread, basic, parse_response, raw_exchange
from tests.support.origin import EchoServer, Origin, closed_port
from tests.support.socks import socks5_connect

FIELDS = {
    "time", "client", "package", "protocol", "target", "rules", "session", "node", "exit",
    "outcome", "status", "bytes_up", "bytes_down", "admission_ms", "connect_ms", "total_ms",
}  # fmt: skip
UPSTREAM_PASSWORD = "upstream-pass-7c1d"


def read_lines(path: Path, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        lines = [json.loads(line) for line in text.splitlines()]
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"expected {count} lines in {path}, got: {text!r}")


def test_one_line_per_request_with_its_fields_and_no_secret(
    tmp_path: Path, origin: Origin, echo: EchoServer
) -> None:
    log_path = tmp_path / "access.log"
    gw = GatewayThread(tmp_path, accesslog={"target": str(log_path), "flush_interval": 0.05})
    try:
        package, key = gw.package()
        node = gw.direct_node(bind="127.0.0.2", country="us")
        gw.upstream_node(
            f"http://user:{UPSTREAM_PASSWORD}@127.0.0.1:{closed_port()}", country="de"
        )
        # 1. a forwarded request with a session
        user = "country-us-session-abc123"
        raw = raw_exchange(
            gw.proxy_host,
            gw.proxy_port,
            f"GET {origin.url}/ip?token=hidden HTTP/1.1\r\nHost: x\r\n"
            f"Proxy-Authorization: {basic(user, key)}\r\nConnection: close\r\n\r\n".encode(),
        )
        assert parse_response(raw)[0] == 200
        # 2. a CONNECT tunnel moving 5 bytes each way
        with socket.create_connection((gw.proxy_host, gw.proxy_port), timeout=5) as sock:
            sock.sendall(
                f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\n"
                f"Proxy-Authorization: {basic('country-us', key)}\r\n\r\n".encode()
            )
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            sock.sendall(b"hello")
            assert sock.recv(5) == b"hello"
        # 3. a SOCKS5 connection
        result = socks5_connect(gw.bound.proxy, "127.0.0.1", echo.port, "country-us", key)
        assert result.sock is not None
        result.sock.close()
        # 4. a wrong key, 5. the upstream exit (its proxy is down)
        raw = raw_exchange(
            gw.proxy_host,
            gw.proxy_port,
            f"GET {origin.url}/ HTTP/1.1\r\nHost: x\r\n"
            f"Proxy-Authorization: {basic('country-us', 'not-' + key)}\r\n\r\n".encode(),
        )
        assert parse_response(raw)[0] == 407
        raw = raw_exchange(
            gw.proxy_host,
            gw.proxy_port,
            f"GET {origin.url}/ HTTP/1.1\r\nHost: x\r\n"
            f"Proxy-Authorization: {basic('country-de', key)}\r\n\r\n".encode(),
        )
        assert parse_response(raw)[0] == 502

        lines = read_lines(log_path, 5)
        for line in lines:
            assert set(line) == FIELDS, line
        by_protocol = {(ln["protocol"], ln["outcome"]): ln for ln in lines}

        fwd = by_protocol[("http", "OK")]
        assert fwd["package"] == package.id
        assert fwd["client"] == "127.0.0.1"
        assert fwd["target"] == f"127.0.0.1:{origin.port}"  # never the path or query
        assert fwd["rules"] == "country-us-session-abc123"
        assert fwd["session"] == "abc123"
        assert fwd["node"] == node.id
        assert fwd["exit"] == "127.0.0.2"
        assert fwd["status"] == 200
        assert fwd["bytes_up"] > 0 and fwd["bytes_down"] > 0
        assert 0 <= fwd["admission_ms"] <= fwd["total_ms"]
        assert fwd["connect_ms"] is not None and fwd["connect_ms"] <= fwd["total_ms"]
        assert fwd["time"].endswith("Z")

        tunnel = by_protocol[("https", "OK")]
        assert (tunnel["bytes_up"], tunnel["bytes_down"]) == (5, 5)
        assert tunnel["target"] == f"127.0.0.1:{echo.port}"
        assert tunnel["status"] == 200
        socks = by_protocol[("socks5", "OK")]
        assert socks["status"] == 0  # the SOCKS5 reply
        assert socks["rules"] == "country-us"

        refused = [ln for ln in lines if ln["outcome"] == "AUTH_FAILED"]
        assert len(refused) == 1 and refused[0]["status"] == 407
        assert refused[0]["package"] is None  # an unknown key names no package
        failed = [ln for ln in lines if ln["outcome"] not in ("OK", "AUTH_FAILED")]
        assert failed and failed[0]["package"] == package.id

        text = log_path.read_text()
        assert key not in text
        assert UPSTREAM_PASSWORD not in text
        assert "hidden" not in text
        assert "Proxy-Authorization" not in text and basic("country-us", key) not in text

        metrics = httpx.get(f"{gw.bound.admin_url}/metrics", timeout=5).text
        assert "exitgate_accesslog_lines_total 5.0" in metrics
        assert "exitgate_accesslog_dropped_total 0.0" in metrics
    finally:
        gw.stop()
