"""Issue 12 hole 5: failed authentications are throttled per client address, over HTTP and
SOCKS5 (RFC 1929), through the real wire; other addresses are unaffected; the log carries
one summary per address per interval, never a line per failure and never a key."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.gateway import GatewayThread, basic, parse_response
from tests.support.origin import Origin

LIMIT = 5


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[GatewayThread]:
    gw = GatewayThread(
        tmp_path, auth={"max_failures": LIMIT, "window": 30.0, "cooldown": 30.0,
                        "report_every": 0.3}
    )
    yield gw
    gw.stop()


def _connect(gw: GatewayThread, source: str) -> socket.socket:
    return socket.create_connection(
        (gw.proxy_host, gw.proxy_port), timeout=5, source_address=(source, 0)
    )


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes] | None:
    """One response off a kept-alive connection; None when the gateway closed it."""
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(65536)
        if not part:
            return None
        data += part
    status, headers, body = parse_response(data)
    while len(body) < int(headers.get("content-length", "0")):
        part = sock.recv(65536)
        if not part:
            break
        body += part
    return status, headers, body


def _get(origin: Origin, user: str, key: str) -> bytes:
    return (
        f"GET {origin.url}/ip HTTP/1.1\r\nHost: {origin.url[7:]}\r\n"
        f"Proxy-Authorization: {basic(user, key)}\r\n\r\n"
    ).encode()


def _socks_auth(gw: GatewayThread, source: str, user: str, key: str) -> int:
    """RFC 1929 status byte (0 success, 1 failure) for one try from `source`."""
    with _connect(gw, source) as sock:
        sock.sendall(b"\x05\x01\x02")
        assert sock.recv(2) == b"\x05\x02"
        sock.sendall(b"\x01" + bytes([len(user)]) + user.encode() + bytes([len(key)])
                     + key.encode())
        answer = sock.recv(2)
        assert answer[:1] == b"\x01"
        return answer[1]


def test_http_guesser_is_throttled_and_cut_others_are_not(
    guarded: GatewayThread, origin: Origin, caplog: pytest.LogCaptureFixture
) -> None:
    gw = guarded
    _, key = gw.package()
    gw.direct_node(bind="127.0.0.2")
    caplog.set_level(logging.INFO)
    wrong = "x" * 32
    with _connect(gw, "127.0.0.2") as sock:
        statuses = []
        for _ in range(LIMIT + 10):
            try:
                sock.sendall(_get(origin, "country-any", wrong))
                answer = _read_response(sock)
            except OSError:  # reset: the gateway had closed it
                break
            if answer is None:
                break
            statuses.append((answer[0], answer[1].get("x-soax-error")))
    # the kept-alive connection carried the failures, then was closed with the 429
    assert statuses == [(407, "AUTH_FAILED")] * LIMIT + [(429, "AUTH_THROTTLED")]

    # the right key from the throttled address: refused without the key being looked at
    with _connect(gw, "127.0.0.2") as sock:
        sock.sendall(_get(origin, "country-any", key))
        answer = _read_response(sock)
        assert answer is not None and answer[0] == 429
    # another address is served
    with _connect(gw, "127.0.0.3") as sock:
        sock.sendall(_get(origin, "country-any", key))
        answer = _read_response(sock)
        assert answer is not None and answer[0] == 200, answer

    summaries = _wait_for_summary(caplog, "127.0.0.2")
    assert summaries[0].startswith(f"127.0.0.2: {LIMIT} failed authentications")
    assert "throttled attempts" in summaries[0]
    text = caplog.text
    assert wrong not in text and key not in text
    per_failure = [r for r in caplog.records if "AUTH_FAILED" in r.getMessage()]
    assert per_failure == []


def test_socks5_guesser_is_throttled_others_are_not(guarded: GatewayThread) -> None:
    gw = guarded
    _, key = gw.package()
    for _ in range(LIMIT):
        assert _socks_auth(gw, "127.0.0.2", "country-any", "y" * 32) == 1
    assert _socks_auth(gw, "127.0.0.2", "country-any", key) == 1  # throttled: the key unseen
    assert _socks_auth(gw, "127.0.0.3", "country-any", key) == 0
    # the HTTP side shares the throttle: the address is blocked whatever it speaks
    with _connect(gw, "127.0.0.2") as sock:
        sock.sendall(b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: x\r\n"
                     + f"Proxy-Authorization: {basic('country-any', key)}\r\n\r\n".encode())
        answer = _read_response(sock)
        assert answer is not None and answer[0] == 429


def test_a_typo_is_not_throttled(tmp_path: Path, origin: Origin) -> None:
    """The defaults: a client that mistypes its key a few times is never throttled."""
    gw = GatewayThread(tmp_path)
    try:
        _, key = gw.package()
        gw.direct_node(bind="127.0.0.2")
        for _ in range(10):
            r = httpx.get(f"{origin.url}/ip", proxy=gw.proxy_url("country-any", key + "typo"))
            assert r.status_code == 407
        r = httpx.get(f"{origin.url}/ip", proxy=gw.proxy_url("country-any", key))
        assert r.status_code == 200
    finally:
        gw.stop()


def _wait_for_summary(caplog: pytest.LogCaptureFixture, address: str) -> list[str]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = [
            r.getMessage()
            for r in caplog.records
            if r.name == "exitgate.auth" and r.getMessage().startswith(address + ":")
        ]
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no failure summary for {address}: {caplog.text[-2000:]}")
