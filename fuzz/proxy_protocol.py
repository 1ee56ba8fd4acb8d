"""The PROXY protocol v1/v2 parser (exitgate.wire.proxy_protocol.parse).

Input: the bytes a load balancer's connection starts with (byte 0 even: as is; odd: behind
the v2 signature, so that most inputs reach the binary header).

Contract:
- `parse` returns None (need more), a ProxyHeader, or raises ProxyProtocolError; nothing else
  escapes;
- a header never reads past itself: 0 < consumed <= len(buf), and the same buffer with more
  bytes after the header gives the same ProxyHeader;
- no prefix of a buffer holding a complete header is refused (a header split across reads is
  waited for), and every proper prefix of it is None;
- "need more" is bounded: None only for buffers shorter than the largest header;
- addresses are IP literals and ports 0..65535; re-encoding a TCP header and parsing it gives
  the same addresses.
"""

from __future__ import annotations

import ipaddress

from exitgate.wire import proxy_protocol as pp


def _parse(buf: bytes) -> object:
    try:
        return pp.parse(buf)
    except pp.ProxyProtocolError as exc:
        assert str(exc)
        return "error"


def test_one_input(data: bytes) -> None:
    if not data:
        return
    buf = data[1:] if not data[0] & 1 else pp.V2_SIGNATURE + data[1:]
    whole = _parse(buf)
    if whole is None:
        assert len(buf) < 16 + pp.V2_MAX_BODY
        assert pp.looks_like_header(buf) or not buf
        return
    if whole == "error":
        return
    assert isinstance(whole, pp.ProxyHeader)
    assert 0 < whole.consumed <= len(buf)
    assert _parse(buf + b"GET / HTTP/1.1\r\n") == whole
    assert _parse(buf[: whole.consumed]) == whole
    step = max(1, whole.consumed // 24)  # every prefix of a v1 line; a sample of a long v2
    for cut in range(0, whole.consumed, step):
        assert _parse(buf[:cut]) is None, (cut, buf[:cut])
    for end in (whole.source, whole.destination):
        if end is not None:
            ipaddress.ip_address(end[0])
            assert 0 <= end[1] <= 65535
    if whole.source is not None and whole.destination is not None:
        src, dst = whole.source, whole.destination
        if "%" not in src[0] + dst[0]:
            again = pp.parse(pp.encode_v2(src, dst))
            assert again is not None and (again.source, again.destination) == (src, dst)
        again = pp.parse(pp.encode_v1(src, dst))
        assert again is not None and (again.source, again.destination) == (src, dst)
