"""The SOCKS5 UDP request header (RFC 1928 section 7), sans-IO.

Every datagram between a SOCKS5 client and its relay carries

    +-----+------+------+----------+----------+----------+
    | RSV | FRAG | ATYP | DST.ADDR | DST.PORT |   DATA   |
    +-----+------+------+----------+----------+----------+
    |  2  |  1   |  1   | Variable |    2     | Variable |

client → relay the address is the destination, relay → client the source. The same framing
carries datagrams over an agent's HTTP/2 link (docs/udp.md), so one codec serves both.

`parse_datagram` takes a whole datagram and returns a `UdpDatagram`, or raises
`UdpHeaderError` (a `ValueError`) naming what is wrong; `Fragmented` is its subclass for
FRAG != 0, which this relay does not reassemble (the RFC allows dropping them). Decisions:
RSV must be zero (a stray non-SOCKS packet is then rejected early), a domain is decoded and
validated as in a CONNECT request (`wire.socks5`), an empty payload is allowed (a valid UDP
datagram), port 0 is refused as a destination (nothing listens there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from exitgate.model import Target
from exitgate.wire.socks5 import _address_length, _decode_address, encode_address

__all__ = ["Fragmented", "UdpDatagram", "UdpHeaderError", "build_datagram", "parse_datagram"]

MIN_HEADER: Final = 10  # RSV RSV FRAG ATYP + IPv4 + port: the shortest header


class UdpHeaderError(ValueError):
    """The datagram is not a valid SOCKS5 UDP datagram; the relay drops it."""


class Fragmented(UdpHeaderError):
    """FRAG != 0: fragments are dropped (RFC 1928 section 7 permits it)."""


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    target: Target  # destination (client → relay) or source (relay → client)
    payload: bytes
    header_size: int  # bytes before the payload: what metering does not count


def parse_datagram(data: bytes) -> UdpDatagram:
    """One whole datagram → `UdpDatagram`; `UdpHeaderError` (or `Fragmented`) when invalid."""
    if len(data) < 4:
        raise UdpHeaderError(f"datagram of {len(data)} bytes is shorter than any header")
    if data[0] or data[1]:
        raise UdpHeaderError("reserved bytes are not zero")
    if data[2]:
        raise Fragmented(f"fragment {data[2]} (fragmentation is not supported)")
    alen = _address_length(data, 3)
    if alen is None:
        raise UdpHeaderError("truncated domain length")
    if alen < 0:
        raise UdpHeaderError(f"unknown address type {data[3]:#04x}")
    end = 3 + alen
    if len(data) < end:
        raise UdpHeaderError("truncated address")
    if data[3] == 3 and data[4] == 0:
        raise UdpHeaderError("empty domain")
    try:
        target = _decode_address(bytes(data[:end]), 3)
    except ValueError:
        raise UdpHeaderError("malformed domain") from None
    if target.port == 0:
        raise UdpHeaderError("port 0")
    return UdpDatagram(target, bytes(data[end:]), end)


def build_datagram(host: str, port: int, payload: bytes) -> bytes:
    """RSV FRAG (zero) + address of `host`/`port` + payload. ValueError for a bad address."""
    return b"\x00\x00\x00" + encode_address(host, port) + payload
