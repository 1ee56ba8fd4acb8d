"""A raw SOCKS5 client for tests that must see the exact reply bytes."""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass


@dataclass
class SocksResult:
    stage: str  # "method", "auth" or "reply"
    status: int  # method byte, RFC 1929 status, or RFC 1928 reply
    sock: socket.socket | None = None  # open when the CONNECT succeeded


def socks5_connect(
    proxy: tuple[str, int],
    host: str,
    port: int,
    username: str | None = None,
    password: str | None = None,
    methods: bytes | None = None,
    timeout: float = 10.0,
) -> SocksResult:
    sock = socket.create_connection(proxy, timeout=timeout)
    try:
        if methods is None:
            methods = b"\x02" if username is not None else b"\x00"
        sock.sendall(b"\x05" + bytes([len(methods)]) + methods)
        _, method = _recv(sock, 2)
        if method == 0xFF:
            sock.close()
            return SocksResult("method", method)
        if method == 0x02:
            user = (username or "").encode()
            pw = (password or "").encode()
            sock.sendall(b"\x01" + bytes([len(user)]) + user + bytes([len(pw)]) + pw)
            _, status = _recv(sock, 2)
            if status != 0:
                sock.close()
                return SocksResult("auth", status)
        try:
            ip = ipaddress.ip_address(host)
            addr = (b"\x01" if ip.version == 4 else b"\x04") + ip.packed
        except ValueError:
            addr = b"\x03" + bytes([len(host.encode())]) + host.encode()
        sock.sendall(b"\x05\x01\x00" + addr + struct.pack("!H", port))
        head = _recv(sock, 4)
        atyp = head[3]
        rest = {1: 4, 4: 16}.get(atyp)
        if rest is None:
            rest = _recv(sock, 1)[0]
        _recv(sock, rest + 2)
        if head[1] != 0:
            sock.close()
            return SocksResult("reply", head[1])
        return SocksResult("reply", 0, sock)
    except BaseException:
        sock.close()
        raise


def _recv(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data
