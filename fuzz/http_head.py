"""HTTP/1.1 head parser (exitgate.wire.http1): request and response heads, and forwarding.

Input: byte 0 picks the kind (even: request, odd: response) and `max_size` (from a few sizes,
so the 431/too-large path is reached); the rest is the receive buffer.

Contract:
- the parse returns None (incomplete), or (head, consumed) with the consumed bytes ending in
  CRLFCRLF, or raises HttpError with a documented status (request 400/431/501/505, response
  502); nothing else escapes;
- trailing bytes are untouched: the same buffer plus more bytes parses to the same head and
  the same `consumed`;
- fed in pieces as a driver does (re-parsing the growing buffer at every line end): a piece
  never yields a head the whole does not, and the early checks on an incomplete head never
  refuse a buffer whose whole parse is a valid head;
- helpers on a parsed head answer or raise HttpError(400/502): framing, keep-alive,
  credentials, targets;
- a forwarded head is itself a head our parser accepts, with the same method/status and
  version and framing, and carries no Proxy-* or hop-by-hop field.
"""

from __future__ import annotations

from exitgate.wire import http1
from exitgate.wire.http1 import HttpError

_SIZES = (65536, 64, 200, 1024)
_HOP = {b"connection", b"keep-alive", b"te", b"trailer", b"upgrade"}


def _parse(kind: int, buf: bytes, max_size: int) -> object:
    """The parse result, or the HttpError status as an int."""
    fn = http1.parse_request_head if kind == 0 else http1.parse_response_head
    allowed = {400, 431, 501, 505} if kind == 0 else {502}
    try:
        return fn(buf, max_size)
    except HttpError as exc:
        assert exc.status in allowed, (exc.status, exc.reason)
        assert exc.reason and "\n" not in exc.reason
        return exc.status


def _split_points(buf: bytes) -> list[int]:
    points = [i + 1 for i, b in enumerate(buf[:2048]) if b == 0x0A][:6]
    points += [1, len(buf) // 2, len(buf) - 1]
    return sorted({p for p in points if 0 < p < len(buf)})


def _check_request(head: http1.RequestHead) -> None:
    try:
        kind, n = http1.request_body(head)
    except HttpError as exc:  # pragma: no cover - parse already checked framing
        raise AssertionError(f"request_body after a good parse: {exc}") from None
    assert n >= 0
    http1.request_keep_alive(head)
    creds = http1.proxy_credentials(head)
    assert creds is None or creds is http1.MALFORMED or (
        isinstance(creds, tuple) and all(isinstance(c, str) for c in creds)
    )
    try:
        if head.method == "CONNECT":
            target = http1.connect_target(head)
            path = "/"
        else:
            _, target, path = http1.absolute_target(head)
    except HttpError as exc:
        assert exc.status == 400, exc.status
        return
    assert 0 < target.port < 65536
    for close in (False, True):
        out = http1.forward_request_head(head, target, path, close=close)
        again = http1.parse_request_head(out + b"tail")
        assert again is not None, out
        fwd, used = again
        assert used == len(out)
        assert (fwd.method, fwd.version) == (head.method, head.version)
        _assert_clean(fwd.names)
        assert fwd.names.count(b"host") == 1
        assert http1.request_body(fwd) == (kind, n), (out, kind, n)
        if close:
            assert not http1.request_keep_alive(fwd)


def _check_response(head: http1.ResponseHead) -> None:
    for method in ("GET", "HEAD", "CONNECT"):
        try:
            kind, n = http1.response_body(head, method)
        except HttpError as exc:
            assert exc.status == 502
            return
        assert n >= 0
    http1.response_keep_alive(head)
    kind, n = http1.response_body(head, "GET")
    for client_version in ("HTTP/1.1", "HTTP/1.0"):
        out = http1.forward_response_head(head, close=False, client_version=client_version)
        again = http1.parse_response_head(out)
        assert again is not None, out
        fwd, used = again
        assert used == len(out)
        assert fwd.status == head.status and fwd.version == "HTTP/1.1"
        _assert_clean(fwd.names)
        assert not (b"transfer-encoding" in fwd.names and b"content-length" in fwd.names)
        assert http1.response_body(fwd, "GET") == (kind, n), (out, kind, n)


def _assert_clean(names: tuple[bytes, ...]) -> None:
    for name in names:
        assert not name.startswith(b"proxy-"), name
        # Connection is added by the forwarder itself (close/keep-alive); the rest never pass.
        assert name == b"connection" or name not in _HOP, name


def test_one_input(data: bytes) -> None:
    if not data:
        return
    kind = data[0] & 1
    max_size = _SIZES[(data[0] >> 1) % len(_SIZES)]
    buf = data[1:]
    whole = _parse(kind, buf, max_size)
    if isinstance(whole, tuple):
        head, consumed = whole
        assert 0 < consumed <= len(buf)
        assert buf[:consumed].endswith(b"\r\n\r\n")
        # Trailing bytes are untouched: more data after the head changes nothing.
        assert _parse(kind, buf + b"GET / HTTP/1.1\r\n\r\n", max_size) == whole
        assert _parse(kind, bytearray(buf), max_size) == whole
        if kind == 0:
            _check_request(head)
        else:
            _check_response(head)
    # Pieces: what a driver sees as the buffer grows.
    for cut in _split_points(buf):
        part = _parse(kind, buf[:cut], max_size)
        if isinstance(part, tuple):
            assert part == whole, (cut, part, whole)
            break
        if isinstance(part, int):
            assert not isinstance(whole, tuple), (cut, part, "refused early, valid whole")
            break
