"""Issue 12, the wire: malformed bodies, kept-alive deadlines and framing, over real sockets.

A raw target records the exact bytes it receives and answers scripted bytes, so the tests see
what a hostile client can make reach a target, and what a hostile target can make reach a
client. Every test also checks the log: at most one WARNING per event, never a traceback.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import GatewayThread, basic, parse_response
from tests.support.rawtarget import RawTarget, Script

HANDSHAKE = 0.6
IDLE = 5.0


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[GatewayThread]:
    gateway = GatewayThread(
        tmp_path, proxy={"handshake_timeout": HANDSHAKE, "idle_timeout": IDLE}
    )
    yield gateway
    gateway.stop()


@pytest.fixture
def key(gw: GatewayThread) -> tuple[str, str]:
    pkg, k = gw.package()
    gw.direct_node(bind="127.0.0.2", country="us")
    return pkg.id, k


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.INFO)
    yield caplog
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


def _warnings(log: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in log.records
            if r.levelno == logging.WARNING and r.name.startswith("exitgate")]


def _target(script: Script, **kw: float) -> RawTarget:
    return RawTarget(script, **kw)


def _connect(gw: GatewayThread, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection((gw.proxy_host, gw.proxy_port), timeout=5,
                                    source_address=(source, 0))
    return sock


def _read_until_closed(sock: socket.socket, limit: float = 5.0) -> tuple[bytes, bool]:
    """Everything until the gateway closes; (bytes, closed_within_limit)."""
    sock.settimeout(limit)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except TimeoutError:
        return got, False
    except ConnectionResetError:
        pass
    return got, True


def _read_response(sock: socket.socket) -> bytes:
    """One response framed by Content-Length (the gateway's answers all have one)."""
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = sock.recv(65536)
        assert chunk, got
        got += chunk
    _, headers, body = parse_response(got)
    missing = int(headers.get("content-length", "0")) - len(body)
    while missing > 0:
        chunk = sock.recv(65536)
        assert chunk
        got += chunk
        missing -= len(chunk)
    return got


def _post(target: RawTarget, key: str, framing: bytes, version: str = "HTTP/1.1") -> bytes:
    return (f"POST http://{target.authority}/p {version}\r\nHost: {target.authority}\r\n"
            f"Proxy-Authorization: {basic('country-us', key)}\r\n").encode() + framing + b"\r\n"


def _usage(gw: GatewayThread, package_id: str) -> dict[str, int]:
    gw.call(gw.gateway.usage.flush())
    return gw.call(gw.gateway.usage.totals(package_id))


# ---------------------------------------------------------------- 1. malformed chunked bodies

CHUNKED = b"Transfer-Encoding: chunked\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.mark.parametrize("body", [
    b"zz\r\nabc\r\n0\r\n\r\n",
    b"-1\r\n",
    b"1" * 5000 + b"\r\n",
    b"5;" + b"x" * 5000 + b"\r\nhello\r\n0\r\n\r\n",
    b"3\r\nabc\r\n0\r\nbad trailer\r\n\r\n",
    b"3\r\nabcXX",
])
def test_malformed_request_body_answers_400_and_closes(gw, key, log, body) -> None:
    target = _target([5.0])  # never answers: the 400 must come from the gateway
    try:
        with _connect(gw) as sock:
            sock.sendall(_post(target, key[1], CHUNKED) + body)
            got, closed = _read_until_closed(sock)
        status, headers, text = parse_response(got)
        assert (status, headers["connection"], closed) == (400, "close", True)
        assert b"Malformed request body" in text
        assert len(_warnings(log)) == 1
    finally:
        target.stop()


def test_request_body_bytes_relayed_before_the_error_stay_metered(gw, key, log) -> None:
    package_id, k = key
    target = _target([4.0])
    try:
        with _connect(gw) as sock:
            sock.sendall(_post(target, k, CHUNKED) + b"5\r\nhello\r\n")
            time.sleep(1.0)  # relayed before the bad chunk comes
            sock.sendall(b"zz\r\nmore\r\n")
            got, _ = _read_until_closed(sock)
        assert parse_response(got)[0] == 400
        time.sleep(0.3)
        received = target.received[0]
        assert received.endswith(b"\r\n\r\n5\r\nhello\r\n")  # the bad chunk never went on
        assert _usage(gw, package_id)["bytes_up"] == len(received)
    finally:
        target.stop()


@pytest.mark.parametrize("body", [
    b"zz\r\nabc\r\n0\r\n\r\n",
    b"-1\r\n",
    b"1" * 5000 + b"\r\n",
    b"3\r\nabc\r\n0\r\nbad trailer\r\n\r\n",
])
def test_malformed_response_body_before_anything_relayed_is_502(gw, key, log, body) -> None:
    target = _target([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body])
    try:
        with _connect(gw) as sock:
            sock.sendall(_post(target, key[1], b"Content-Length: 0\r\n"))
            got, closed = _read_until_closed(sock)
        status, headers, _ = parse_response(got)
        assert (status, headers["x-soax-error"], headers["connection"]) == (
            502, "TARGET_UNREACHABLE", "close")
        assert "malformed response" in headers["x-soax-detail"]
        assert closed
        warnings = _warnings(log)
        assert len(warnings) == 1 and "malformed response" in warnings[0]
    finally:
        target.stop()


def test_malformed_response_mid_body_closes_and_meters_what_went(gw, key, log) -> None:
    package_id, k = key
    target = _target([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
                      1.0, b"zz\r\nrest\r\n0\r\n\r\n"])
    try:
        with _connect(gw) as sock:
            sock.sendall(_post(target, k, b"Content-Length: 0\r\n"))
            got, closed = _read_until_closed(sock)
        assert closed
        assert got.startswith(b"HTTP/1.1 200 OK\r\n")
        assert got.endswith(b"\r\n\r\n5\r\nhello\r\n")  # no terminal chunk: visibly cut
        assert len(_warnings(log)) == 1
        assert _usage(gw, package_id)["bytes_down"] == len(got)
    finally:
        target.stop()


def test_repeated_body_errors_from_one_address_log_one_line(gw, key, log) -> None:
    target = _target([2.0], linger=0.5)
    try:
        for source in ("127.0.0.1",) * 5 + ("127.0.0.3",):
            with _connect(gw, source) as sock:
                sock.sendall(_post(target, key[1], CHUNKED) + b"zz\r\n")
                assert parse_response(_read_until_closed(sock)[0])[0] == 400
        warnings = _warnings(log)
        assert len(warnings) == 2, warnings  # one per address, the repeats counted
        assert "127.0.0.1" in warnings[0] and "127.0.0.3" in warnings[1]
    finally:
        target.stop()


# ---------------------------------------------------------------- 2. kept-alive deadlines


def _unauthenticated_get(gw: GatewayThread) -> bytes:
    return b"GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n"


def test_next_head_after_a_407_has_the_handshake_deadline_to_finish(gw, key, log) -> None:
    with _connect(gw) as sock:
        sock.sendall(_unauthenticated_get(gw))
        assert parse_response(_read_response(sock))[0] == 407  # kept alive after the 407
        sock.sendall(b"G")  # the next head starts, then stalls
        start = time.monotonic()
        _, closed = _read_until_closed(sock, limit=IDLE + 2)
        took = time.monotonic() - start
    assert closed and took < IDLE / 2, took  # the handshake deadline, not the idle one


def test_next_head_has_the_idle_timeout_to_start(gw, key, log) -> None:
    with _connect(gw) as sock:
        sock.sendall(_unauthenticated_get(gw))
        assert parse_response(_read_response(sock))[0] == 407
        time.sleep(HANDSHAKE * 3)  # idle, well past the handshake deadline: still open
        sock.sendall(_unauthenticated_get(gw))
        assert parse_response(_read_response(sock))[0] == 407
        start = time.monotonic()
        _, closed = _read_until_closed(sock, limit=IDLE + 3)  # idle until the idle timeout
        assert closed and IDLE - 0.5 < time.monotonic() - start < IDLE + 2


# ---------------------------------------------------------------- 3. framing normalisation


@pytest.mark.parametrize("framing", [
    b"Content-Length: 5, 5\r\n",
    b"Content-Length: 5\r\nContent-Length: 5\r\n",
    b"Content-Length: 5,5\r\nContent-Length: 5\r\n",
    b"Content-Length: 5\r\nConnection: content-length\r\n",
])
def test_duplicate_content_length_reaches_the_target_as_one(gw, key, log, framing) -> None:
    target = _target([0.2, OK], linger=0.5)
    try:
        with _connect(gw) as sock:
            sock.sendall(_post(target, key[1], framing) + b"hello")
            assert parse_response(_read_response(sock))[0] == 200
        head = target.heads[0]
        lines = [line.lower() for line in head.split(b"\r\n")]
        assert [line for line in lines if line.startswith(b"content-length")] == [
            b"content-length: 5"]
        assert target.received[0] == head + b"hello"
    finally:
        target.stop()


def test_chunked_request_reaches_the_target_with_one_canonical_field(gw, key, log) -> None:
    target = _target([0.2, OK], linger=0.5)
    try:
        with _connect(gw) as sock:
            framing = b"Transfer-Encoding: Chunked,\r\nConnection: transfer-encoding\r\n"
            sock.sendall(_post(target, key[1], framing) + b"2\r\nhi\r\n0\r\n\r\n")
            assert parse_response(_read_response(sock))[0] == 200
        lines = target.heads[0].lower().split(b"\r\n")
        assert [x for x in lines if x.startswith(b"transfer-encoding")] == [
            b"transfer-encoding: chunked"]
        assert not [x for x in lines if x.startswith(b"content-length")]
    finally:
        target.stop()


@pytest.mark.parametrize(("framing", "version"), [
    (b"Content-Length: 5, 6\r\n", "HTTP/1.1"),
    (b"Content-Length: 5\r\nContent-Length: 6\r\n", "HTTP/1.1"),
    (b"Content-Length: +5\r\n", "HTTP/1.1"),
    (b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "HTTP/1.1"),
    (b"Transfer-Encoding: gzip\r\n", "HTTP/1.1"),
    (b"Transfer-Encoding: chunked, chunked\r\n", "HTTP/1.1"),
    (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "HTTP/1.1"),
    (b"Transfer-Encoding: chunked\r\n", "HTTP/1.0"),
])
def test_smuggling_shaped_requests_never_reach_a_target(gw, key, log, framing, version) -> None:
    target = _target([OK], linger=0.2)
    try:
        with _connect(gw) as sock:
            sock.sendall(_post(target, key[1], framing, version) + b"5\r\nhello\r\n0\r\n\r\n")
            got, closed = _read_until_closed(sock)
        status, headers, _ = parse_response(got)
        assert (status, headers["connection"], closed) == (400, "close", True)
        time.sleep(0.2)
        assert target.received == []
    finally:
        target.stop()


@pytest.mark.parametrize(("fields", "canonical"), [
    (b"Content-Length: 2, 2\r\n", b"content-length: 2"),
    (b"Content-Length: 2\r\nContent-Length: 2\r\n", b"content-length: 2"),
])
def test_response_framing_reaches_the_client_as_one_field(gw, key, log, fields, canonical) -> None:
    target = _target([b"HTTP/1.1 200 OK\r\n" + fields + b"\r\nok"], linger=0.5)
    try:
        with _connect(gw) as sock:
            sock.sendall(_post(target, key[1], b"Content-Length: 0\r\n"))
            got = _read_response(sock)
        lines = got.partition(b"\r\n\r\n")[0].lower().split(b"\r\n")
        assert [x for x in lines if x.startswith(b"content-length")] == [canonical]
        assert got.endswith(b"\r\n\r\nok")
    finally:
        target.stop()


@pytest.mark.parametrize("fields", [
    b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n",
    b"Content-Length: 2, 3\r\n",
    b"Transfer-Encoding: chunked, chunked\r\n",
])
def test_smuggling_shaped_responses_never_reach_the_client(gw, key, log, fields) -> None:
    target = _target([b"HTTP/1.1 200 OK\r\n" + fields + b"\r\n2\r\nok\r\n0\r\n\r\n"])
    try:
        with _connect(gw) as sock:
            sock.sendall(_post(target, key[1], b"Content-Length: 0\r\n"))
            got, _ = _read_until_closed(sock)
        status, headers, _ = parse_response(got)
        assert (status, headers["x-soax-error"]) == (502, "TARGET_UNREACHABLE")
        assert len(_warnings(log)) == 1
    finally:
        target.stop()
