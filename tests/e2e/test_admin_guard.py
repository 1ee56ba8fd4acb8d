"""Issue 12 hole 2: the admin token is checked before a body is read; bodies are capped and
JSON depth is bounded. Through the real wire: raw sockets against a real gateway's admin port.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.gateway import TOKEN, GatewayThread, parse_response, raw_exchange
from tests.support.origin import Origin

MiB = 1 << 20
AUTH = f"Authorization: Bearer {TOKEN}\r\n"


def _status_kb(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    found = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    assert found is not None
    return int(found.group(1))


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux: `5` to clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def _request(gw: GatewayThread, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    host, port = gw.bound.admin
    return parse_response(raw_exchange(host, port, head.encode() + body))


def _deep(levels: int) -> bytes:
    return b'{"name": ' + b"[" * levels + b"]" * levels + b"}"


def test_large_post_without_token_is_refused_unread(gw: GatewayThread, origin: Origin) -> None:
    """64 MB without a token: 401 at once, the body never read, no RSS growth, and the
    proxy on the same event loop keeps answering meanwhile."""
    _, key = gw.package()
    gw.direct_node(bind="127.0.0.2")
    host, port = gw.bound.admin
    size = 64 * MiB
    chunk = bytes(MiB)
    sent = 0
    _reset_peak()
    rss_before = _status_kb("VmRSS")
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(
            f"POST /v1/orgs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\n\r\n".encode()
        )
        started = time.monotonic()

        def push() -> None:
            nonlocal sent
            try:
                while sent < size:
                    sent += sock.send(chunk)
            except OSError:
                return  # the gateway answered and closed: what we want

        pusher = threading.Thread(target=push, daemon=True)
        pusher.start()
        answer = b""
        while b"\r\n\r\n" not in answer:
            part = sock.recv(65536)
            if not part:
                break
            answer += part
        elapsed = time.monotonic() - started
        # proxying on the shared loop meanwhile
        proxied = httpx.get(
            f"{origin.url}/ip", proxy=gw.proxy_url("country-us", key), timeout=5
        )
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # unblock the pusher if still sending
        pusher.join(10)
    status = int(answer.split(b" ", 2)[1])
    assert status == 401, answer[:300]
    assert b"connection: close" in answer.lower()
    assert elapsed < 1.0
    assert sent < size // 2, f"the gateway read {sent} bytes of a body it should not read"
    growth_mb = (_status_kb("VmHWM") - rss_before) / 1024
    assert growth_mb < 24, f"peak RSS grew by {growth_mb:.0f} MB"  # today's code: +193 MB
    assert proxied.status_code == 200 and proxied.json()["ip"] == "127.0.0.2"


def test_nested_body_without_token_is_401(gw: GatewayThread) -> None:
    body = _deep(100_000)
    status, headers, _ = _request(
        gw,
        f"POST /v1/orgs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n",
        body,
    )
    assert status == 401
    assert headers["www-authenticate"] == "Bearer"


def test_oversize_body_with_token_is_413(gw: GatewayThread) -> None:
    body = b'{"name": "' + b"x" * (2 * MiB) + b'"}'
    status, _, text = _request(
        gw,
        f"POST /v1/orgs HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n",
    )  # the head alone: the cap applies from Content-Length, before any body byte
    assert status == 413
    assert json.loads(text) == {"detail": f"request body larger than {MiB} bytes"}


def test_chunked_oversize_body_is_counted_and_cut(gw: GatewayThread) -> None:
    host, port = gw.bound.admin
    piece = b"x" * 65536
    chunk = b"%x\r\n" % len(piece) + piece + b"\r\n"
    sent = 0
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(
            f"POST /v1/orgs HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        try:
            while sent < 64 * MiB:
                sock.sendall(chunk)
                sent += len(piece)
        except OSError:
            pass  # answered and closed
        answer = b""
        try:
            while part := sock.recv(65536):
                answer += part
        except OSError:
            pass
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 16 * MiB


def test_small_body_still_reaches_the_app(gw: GatewayThread) -> None:
    base = f"http://{gw.bound.admin[0]}:{gw.bound.admin[1]}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    r = httpx.post(f"{base}/v1/orgs", json={"name": "acme"}, headers=headers)
    assert r.status_code == 201 and r.json()["name"] == "acme"
    chunks = (part for part in (b'{"name":', b' "chunked"}'))
    r = httpx.post(
        f"{base}/v1/orgs",
        content=chunks,
        headers={**headers, "Content-Type": "application/json"},
    )
    assert r.status_code == 201 and r.json()["name"] == "chunked"
    r = httpx.post(f"{base}/v1/orgs", content=_deep(32)[:-1] + b"}", headers=headers)
    assert r.status_code == 422  # 32 levels pass the guard; the schema refuses a list name


def test_deep_json_with_token_is_422(gw: GatewayThread) -> None:
    for levels in (33, 5_000):
        body = _deep(levels)
        status, _, text = _request(
            gw,
            f"POST /v1/orgs HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n",
            body,
        )
        assert status == 422
        (problem,) = json.loads(text)["detail"]
        assert problem["type"] == "json_too_deep" and "deeper than 32" in problem["msg"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/orgs", 401),
        ("GET", "/openapi.json", 401),
        ("GET", "//v1/orgs", 401),
        ("GET", "/v1/self/../orgs", 401),
        ("GET", "/v1/self/%2e%2e/orgs", 401),
        ("POST", "/v1/self/anything", 401),  # self-service is GET only without the token
        ("GET", "/v1/self/anything", 404),  # through to the app (self-service's own auth)
        ("GET", "/healthz", 200),
        ("GET", "/login", 200),  # the dashboard's paths pass through (its login page)
    ],
)
def test_which_paths_need_the_token(gw: GatewayThread, method: str, path: str, status: int) -> None:
    got, _, _ = _request(gw, f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert got == status


def test_cap_applies_to_open_paths_too(tmp_path: Path) -> None:
    gw = GatewayThread(tmp_path, admin={"max_body_bytes": 4096})
    try:
        status, _, _ = _request(
            gw, "POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n", b"x" * 5000
        )
        assert status == 413
        status, _, _ = _request(
            gw, "POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 4000\r\n\r\n", b"x" * 4000
        )
        assert status == 403  # under the cap: the app answers (the dashboard's login: no nonce)
    finally:
        gw.stop()
