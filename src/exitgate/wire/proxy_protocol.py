"""The PROXY protocol, versions 1 and 2 (HAProxy's proxy-protocol.txt), sans-IO.

A TCP load balancer in front of the gateway prepends one header to each connection naming the
client it accepted; the gateway then uses that address for IP allowlists, logs and errors.

    v1: "PROXY TCP4 192.0.2.1 198.51.100.1 56324 1337\\r\\n"   (text, at most 107 bytes)
        "PROXY UNKNOWN ...\\r\\n"                                (a health check: no address)
    v2: 12-byte signature, ver/cmd, family/transport, 2-byte length, addresses, TLVs
        cmd LOCAL (0x20): the balancer's own connection (health check): no address
        cmd PROXY (0x21) over TCP/IPv4 (0x11) or TCP/IPv6 (0x21); TLVs are skipped

`parse(buf)` returns `None` while more bytes are needed, a `ProxyHeader` once one is complete
(`consumed` bytes of `buf` belong to it; the rest is the client's first bytes), or raises
`ProxyProtocolError` naming what is wrong. Nothing is ever read past the header.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107  # the spec's bound, CRLF included
V2_MAX_BODY = 4096  # addresses plus TLVs; balancers send a few dozen bytes


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY protocol header."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    consumed: int
    source: tuple[str, int] | None  # None: LOCAL / UNKNOWN, keep the socket's peer address
    destination: tuple[str, int] | None = None


def looks_like_header(buf: bytes) -> bool:
    """Could `buf` be the start of a PROXY header (either version)?"""
    n = min(len(buf), len(V2_SIGNATURE))
    return V2_SIGNATURE[:n] == buf[:n] or V1_PREFIX[: min(len(buf), 6)] == buf[:6]


def parse(buf: bytes) -> ProxyHeader | None:
    if not buf:
        return None
    if buf[:1] == b"\r":
        return _parse_v2(buf)
    if buf[:1] == b"P":
        return _parse_v1(buf)
    raise ProxyProtocolError("no PROXY protocol header")


def _parse_v1(buf: bytes) -> ProxyHeader | None:
    end = buf.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(buf) >= V1_MAX or not V1_PREFIX.startswith(buf[:6]):
            raise ProxyProtocolError("PROXY v1 header too long or malformed")
        return None
    line = buf[:end]
    if not line.startswith(V1_PREFIX):
        raise ProxyProtocolError("PROXY v1 header malformed")
    parts = line[len(V1_PREFIX) :].split(b" ")
    if parts[0] == b"UNKNOWN":
        return ProxyHeader(end + 2, None)
    if len(parts) != 5 or parts[0] not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError("PROXY v1 header: expected TCP4|TCP6 src dst sport dport")
    version = 4 if parts[0] == b"TCP4" else 6
    src = _address(parts[1], version)
    dst = _address(parts[2], version)
    return ProxyHeader(end + 2, (src, _port(parts[3])), (dst, _port(parts[4])))


def _address(raw: bytes, version: int) -> str:
    try:
        addr = ipaddress.ip_address(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyProtocolError("PROXY v1 header: bad address") from None
    if addr.version != version:
        raise ProxyProtocolError("PROXY v1 header: address family mismatch")
    return str(addr)


def _port(raw: bytes) -> int:
    # the spec forbids leading zeros and signs; 0..65535
    if not raw.isdigit() or (len(raw) > 1 and raw[:1] == b"0") or len(raw) > 5:
        raise ProxyProtocolError("PROXY v1 header: bad port")
    port = int(raw)
    if port > 65535:
        raise ProxyProtocolError("PROXY v1 header: bad port")
    return port


def _parse_v2(buf: bytes) -> ProxyHeader | None:
    n = min(len(buf), len(V2_SIGNATURE))
    if buf[:n] != V2_SIGNATURE[:n]:
        raise ProxyProtocolError("PROXY v2 signature mismatch")
    if len(buf) < 16:
        return None
    ver_cmd, fam, length = buf[12], buf[13], int.from_bytes(buf[14:16], "big")
    if ver_cmd >> 4 != 2:
        raise ProxyProtocolError("PROXY v2: unsupported version")
    if length > V2_MAX_BODY:
        raise ProxyProtocolError("PROXY v2: header too long")
    total = 16 + length
    if len(buf) < total:
        return None
    cmd = ver_cmd & 0x0F
    if cmd == 0x0:  # LOCAL: the balancer talking for itself
        return ProxyHeader(total, None)
    if cmd != 0x1:
        raise ProxyProtocolError("PROXY v2: unknown command")
    body = buf[16:total]
    if fam == 0x11:  # TCP over IPv4
        if length < 12:
            raise ProxyProtocolError("PROXY v2: short IPv4 address block")
        src4 = str(ipaddress.IPv4Address(body[0:4]))
        dst4 = str(ipaddress.IPv4Address(body[4:8]))
        sport, dport = int.from_bytes(body[8:10], "big"), int.from_bytes(body[10:12], "big")
        return ProxyHeader(total, (src4, sport), (dst4, dport))
    if fam == 0x21:  # TCP over IPv6
        if length < 36:
            raise ProxyProtocolError("PROXY v2: short IPv6 address block")
        src6 = str(ipaddress.IPv6Address(body[0:16]))
        dst6 = str(ipaddress.IPv6Address(body[16:32]))
        sport, dport = int.from_bytes(body[32:34], "big"), int.from_bytes(body[34:36], "big")
        return ProxyHeader(total, (src6, sport), (dst6, dport))
    if fam == 0x00:  # UNSPEC: keep the socket's address
        return ProxyHeader(total, None)
    raise ProxyProtocolError("PROXY v2: unsupported address family (TCP only)")


def encode_v1(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    family = "TCP6" if ":" in source[0] else "TCP4"
    return (
        f"PROXY {family} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n"
    ).encode("ascii")


def encode_v2(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    src = ipaddress.ip_address(source[0])
    dst = ipaddress.ip_address(destination[0])
    fam = 0x11 if src.version == 4 else 0x21
    body = (
        src.packed + dst.packed + source[1].to_bytes(2, "big") + destination[1].to_bytes(2, "big")
    )
    return V2_SIGNATURE + bytes([0x21, fam]) + len(body).to_bytes(2, "big") + body


__all__ = [
    "ProxyHeader",
    "ProxyProtocolError",
    "encode_v1",
    "encode_v2",
    "looks_like_header",
    "parse",
]
