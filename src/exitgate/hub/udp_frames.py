"""Datagrams over an HTTP/2 stream (a byte stream): length-prefixed SOCKS5 UDP datagrams. Pure.

    +--------+-----+------+------+----------+----------+----------+
    | LENGTH | RSV | FRAG | ATYP | ADDR     | PORT     | DATA     |
    |   2    |  2  |  1   |  1   | Variable |    2     | Variable |
    +--------+-----+------+------+----------+----------+----------+

LENGTH (big-endian) counts the bytes after it: one whole SOCKS5 UDP datagram
(`wire.socks5_udp`), whose address is the destination hub → agent and the source agent → hub.
Reusing the SOCKS5 header keeps one codec for both links. A frame is at most 65535 bytes,
so the decoder holds at most one partial frame plus what arrived with it.
"""

from __future__ import annotations

from typing import Final

from exitgate.wire.socks5_udp import build_datagram

__all__ = ["MAX_FRAME", "FrameDecoder", "encode_frame"]

MAX_FRAME: Final = 0xFFFF


def encode_frame(host: str, port: int, payload: bytes) -> bytes:
    """ValueError when the address is unusable or the datagram does not fit a frame."""
    datagram = build_datagram(host, port, payload)
    if len(datagram) > MAX_FRAME:
        raise ValueError(f"datagram of {len(datagram)} bytes does not fit a frame")
    return len(datagram).to_bytes(2, "big") + datagram


class FrameDecoder:
    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The whole datagrams completed by `data` (each still to be `parse_datagram`-ed)."""
        buf = self._buf
        buf += data
        out: list[bytes] = []
        at = 0
        while len(buf) - at >= 2:
            n = int.from_bytes(buf[at : at + 2], "big")
            if len(buf) - at - 2 < n:
                break
            out.append(bytes(buf[at + 2 : at + 2 + n]))
            at += 2 + n
        if at:
            del buf[:at]
        return out
