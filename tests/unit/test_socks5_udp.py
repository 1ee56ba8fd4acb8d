"""The SOCKS5 UDP header codec: whole, truncated at every length, and under hypothesis."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exitgate.model import Target, parse_ip
from exitgate.wire.socks5_udp import (
    Fragmented,
    UdpDatagram,
    UdpHeaderError,
    build_datagram,
    parse_datagram,
)

V4 = b"\x00\x00\x00\x01\x7f\x00\x00\x01\x00\x35" + b"query"
V6 = b"\x00\x00\x00\x04" + ipaddress.IPv6Address("::1").packed + b"\x01\xbb" + b"x"
NAME = b"\x00\x00\x00\x03\x0bexample.com\x00\x35" + b"q"


def test_parse_ipv4() -> None:
    assert parse_datagram(V4) == UdpDatagram(Target("127.0.0.1", 53), b"query", 10)


def test_parse_ipv6_and_domain() -> None:
    assert parse_datagram(V6) == UdpDatagram(Target("::1", 443), b"x", 22)
    assert parse_datagram(NAME) == UdpDatagram(Target("example.com", 53), b"q", 18)


def test_empty_payload_is_a_datagram() -> None:
    assert parse_datagram(V4[:10]).payload == b""


def test_domain_is_lowercased() -> None:
    got = parse_datagram(b"\x00\x00\x00\x03\x0bEXAMPLE.COM\x00\x35")
    assert got.target == Target("example.com", 53)


@pytest.mark.parametrize("whole", [V4, V6, NAME])
def test_every_truncation_of_the_header_is_refused(whole: bytes) -> None:
    header = parse_datagram(whole).header_size
    for n in range(header):
        with pytest.raises(UdpHeaderError):
            parse_datagram(whole[:n])
    for n in range(header, len(whole) + 1):  # the rest is payload: any length is whole
        assert parse_datagram(whole[:n]).payload == whole[header:n]


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x01" + V4[1:], "reserved"),
        (b"\x00\x01" + V4[2:], "reserved"),
        (b"\x00\x00\x00\x02" + V4[4:], "address type"),
        (b"\x00\x00\x00\x03\x00\x00\x35", "empty domain"),
        (b"\x00\x00\x00\x03\x03a b\x00\x35", "malformed domain"),
        (b"\x00\x00\x00\x03\x02\xff\xfe\x00\x35", "malformed domain"),
        (b"\x00\x00\x00\x01\x7f\x00\x00\x01\x00\x00", "port 0"),
    ],
)
def test_malformed(data: bytes, why: str) -> None:
    with pytest.raises(UdpHeaderError, match=why):
        parse_datagram(data)


def test_fragments_are_their_own_error() -> None:
    with pytest.raises(Fragmented):
        parse_datagram(b"\x00\x00\x01" + V4[3:])
    assert issubclass(Fragmented, UdpHeaderError)
    assert issubclass(UdpHeaderError, ValueError)


def test_build() -> None:
    assert build_datagram("127.0.0.1", 53, b"query") == V4
    assert build_datagram("example.com", 53, b"q") == NAME
    assert build_datagram("::1", 443, b"x") == V6
    with pytest.raises(ValueError, match="port"):
        build_datagram("127.0.0.1", 70000, b"")


hosts = st.one_of(
    st.ip_addresses().map(str),
    st.from_regex(r"([a-z][a-z0-9-]{0,20}\.){0,3}[a-z]{1,20}", fullmatch=True),
)


@given(hosts, st.integers(1, 65535), st.binary(max_size=600))
def test_round_trip(host: str, port: int, payload: bytes) -> None:
    data = build_datagram(host, port, payload)
    got = parse_datagram(data)
    assert got.payload == payload
    assert got.target.port == port
    assert got.header_size == len(data) - len(payload)
    ip = parse_ip(host)
    assert got.target.host == (ip.compressed if ip is not None else host)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_parse_or_raise_the_codec_error(data: bytes) -> None:
    try:
        got = parse_datagram(data)
    except UdpHeaderError:
        return
    assert got.header_size + len(got.payload) == len(data)
    rebuilt = build_datagram(got.target.host, got.target.port, got.payload)
    if data[3] != 3:  # IP literals have one encoding: the bytes come back as they were
        assert rebuilt == data
    header = len(rebuilt) - len(got.payload)
    assert parse_datagram(rebuilt) == UdpDatagram(got.target, got.payload, header)
