"""The SOCKS5 UDP request header (RFC 1928 section 7).

Two decoders share the header: `exitgate.wire.socks5.parse_udp_header` (main) and
`exitgate.wire.socks5_udp.parse_datagram` (the UDP relay, issue 13; fuzzed when present).

Contract:
- `parse_udp_header` returns (target, payload offset) with the offset within the datagram, or
  raises Socks5Error; `parse_datagram` returns a UdpDatagram whose header and payload add up
  to the datagram, or raises UdpHeaderError; nothing else escapes;
- a target's host is normalised and re-encodes to the same header;
- the two decoders agree where both accept (the relay also refuses port 0 and empty names).
"""

from __future__ import annotations

import contextlib

from exitgate.wire import socks5
from exitgate.wire.host import normalize_host

try:
    from exitgate.wire import socks5_udp
except ImportError:  # not merged yet: the main decoder alone
    socks5_udp = None  # type: ignore[assignment]

AVAILABLE = socks5_udp is not None


def test_one_input(data: bytes) -> None:
    if data[:1] == b"\x01":  # most inputs: a well-formed RSV/FRAG prefix
        data = b"\x00\x00\x00" + data[1:]
    try:
        target, at = socks5.parse_udp_header(data)
    except socks5.Socks5Error as exc:
        assert exc.reply == b""
        main = None
    else:
        assert 3 < at <= len(data)
        assert normalize_host(target.host) == target.host and 0 <= target.port <= 0xFFFF
        if target.host.isascii():
            assert socks5.udp_header(target.host, target.port) == data[:at] or _domain(data)
        else:  # an IDN goes out in its IDNA form, or not at all (dial refuses it too)
            # UnicodeError (e.g. a BIDI violation) is a ValueError, the documented error.
            with contextlib.suppress(ValueError):
                socks5.udp_header(target.host, target.port)
        main = (target, at)
    if socks5_udp is None:
        return
    try:
        dgram = socks5_udp.parse_datagram(data)
    except socks5_udp.UdpHeaderError:
        assert main is None or main[0].port == 0 or _domain(data)
        return
    assert main is not None and (dgram.target, dgram.header_size) == main
    assert dgram.header_size + len(dgram.payload) == len(data)
    assert dgram.payload == data[dgram.header_size :]
    if not dgram.target.host.isascii():
        return  # an IDN is rebuilt in its IDNA form: no byte round trip
    rebuilt = socks5_udp.build_datagram(dgram.target.host, dgram.target.port, dgram.payload)
    assert socks5_udp.parse_datagram(rebuilt) == socks5_udp.UdpDatagram(
        dgram.target, dgram.payload, len(rebuilt) - len(dgram.payload)
    )


def _domain(data: bytes) -> bool:
    """A domain header may be re-encoded differently (case, IP literal sent as a name)."""
    return len(data) > 3 and data[3] == 3
