"""The PROXY protocol parser: whole, one byte at a time, with trailing bytes, and fuzzed."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exitgate.wire.proxy_protocol import (
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    encode_v1,
    encode_v2,
    looks_like_header,
    parse,
)

CASES = [
    (b"PROXY TCP4 192.0.2.1 198.51.100.9 56324 1337\r\n",
     ("192.0.2.1", 56324), ("198.51.100.9", 1337)),
    (b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n", ("2001:db8::1", 1), ("2001:db8::2", 65535)),
    (encode_v2(("203.0.113.5", 40000), ("10.0.0.1", 1337)),
     ("203.0.113.5", 40000), ("10.0.0.1", 1337)),
    (encode_v2(("2001:db8::7", 5), ("::1", 1337)), ("2001:db8::7", 5), ("::1", 1337)),
]


@pytest.mark.parametrize(("raw", "src", "dst"), CASES)
def test_whole_bytewise_and_with_trailing_bytes(raw: bytes, src, dst) -> None:
    assert parse(raw) == ProxyHeader(len(raw), src, dst)
    for i in range(1, len(raw)):
        assert parse(raw[:i]) is None, i  # never decides before the header is complete
    tail = b"CONNECT example.com:443 HTTP/1.1\r\n"
    got = parse(raw + tail)
    assert got is not None and got.consumed == len(raw)


def test_unknown_and_local_keep_the_socket_address() -> None:
    assert parse(b"PROXY UNKNOWN\r\n") == ProxyHeader(15, None)
    assert parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n") is not None
    local = V2_SIGNATURE + bytes([0x20, 0x00, 0, 0])
    assert parse(local) == ProxyHeader(16, None)


@pytest.mark.parametrize("raw", [
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
    b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
    b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n",
    b"PROXY " + b"x" * 200,
    b"GET / HTTP/1.1\r\n",
    V2_SIGNATURE + bytes([0x31, 0x11, 0, 12]) + bytes(12),
    V2_SIGNATURE + bytes([0x21, 0x11, 0, 4]) + bytes(4),
    V2_SIGNATURE + bytes([0x21, 0x12, 0, 12]) + bytes(12),
    V2_SIGNATURE + bytes([0x21, 0x11, 0xFF, 0xFF]),
    b"\r\n\r\nX",
])
def test_malformed_headers_are_refused(raw: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse(raw)


def test_looks_like_header() -> None:
    assert looks_like_header(b"PROX") and looks_like_header(V2_SIGNATURE[:5])
    assert not looks_like_header(b"GET ") and not looks_like_header(b"\x05\x01\x00")


@given(st.data())
def test_encode_parse_round_trip(data: st.DataObject) -> None:
    version = data.draw(st.sampled_from([4, 6]))
    src = str(data.draw(st.ip_addresses(v=version)))
    dst = str(data.draw(st.ip_addresses(v=version)))
    sport, dport = data.draw(st.integers(0, 65535)), data.draw(st.integers(0, 65535))
    for raw in (encode_v1((src, sport), (dst, dport)), encode_v2((src, sport), (dst, dport))):
        got = parse(raw)
        assert got is not None and got.consumed == len(raw)
        assert got.source is not None and got.destination is not None
        assert ipaddress.ip_address(got.source[0]) == ipaddress.ip_address(src)
        assert (got.source[1], got.destination[1]) == (sport, dport)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(raw: bytes) -> None:
    try:
        got = parse(raw)
    except ProxyProtocolError:
        return
    assert got is None or 0 < got.consumed <= len(raw)
