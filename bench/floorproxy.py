"""The "Python floor": the least a uvloop proxy can do per tunnel, as a benchmark peer.

A yardstick, not a product. It answers HTTP CONNECT (Basic auth) and SOCKS5 (RFC 1929) on
one port with one fixed credential and then relays bytes, using only protocol callbacks:
no coroutine or task per connection beyond the one uvloop needs to dial, no rules, no
selection, no metering, no timers, no logs. What exitgate spends above this per tunnel is
what its features cost (auth against a registry, rules, admission, selection, metering,
stats); what squid or tinyproxy spend below it is what Python and asyncio cost.

    .venv/bin/python bench/floorproxy.py PORT USER PASS

It needs only uvloop (a dependency of exitgate, so the project's venv has it). It binds
127.0.0.1 only and, like the peers, has no idle timeout: the benchmark's windows bound it.
Absolute-form (forwarding) requests are refused with 405: the floor of forwarding would be a
different program, and the issue compares tunnels with it.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import sys
from typing import cast

import uvloop

# Connection states of the client side.
SNIFF, HTTP_HEAD, DIALLING, SOCKS_GREETING, SOCKS_AUTH, SOCKS_REQUEST, RELAY = range(7)
MAX_HEAD = 16 * 1024  # a head that long is refused, so a client cannot grow the buffer
OK_HTTP = b"HTTP/1.1 200 Connection established\r\n\r\n"
OK_SOCKS = b"\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x00"
DENY_HTTP = (
    b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
)
NOT_CONNECT = b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class Target(asyncio.Protocol):
    """The dialled side: bytes go straight to the client; flow control is mirrored."""

    __slots__ = ("client", "transport")

    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.client.target_ready(self.transport)

    def data_received(self, data: bytes) -> None:
        self.client.transport.write(data)

    def pause_writing(self) -> None:  # the target side's buffer is full: stop reading the client
        self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        self.client.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()


class Client(asyncio.Protocol):
    """The accepted side: a small state machine from the first byte to the relay."""

    __slots__ = ("buf", "cred", "socks", "state", "target", "token", "transport")

    def __init__(self, token: bytes, cred: bytes) -> None:
        self.token = token  # base64 of "user:pass", as Proxy-Authorization carries it
        self.cred = cred  # the RFC 1929 sub-negotiation a good client sends
        self.buf = b""
        self.state = SNIFF
        self.target: asyncio.Transport | None = None
        self.socks = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self.state == RELAY:
            assert self.target is not None
            self.target.write(data)
            return
        self.buf += data
        if self.state == SNIFF:
            self.state = SOCKS_GREETING if self.buf[0] == 5 else HTTP_HEAD
        if self.state == HTTP_HEAD:
            self._http()
        elif self.state in (SOCKS_GREETING, SOCKS_AUTH, SOCKS_REQUEST):
            self._socks()
        # DIALLING: bytes wait in buf until the target is connected.

    def _refuse(self, answer: bytes) -> None:
        self.transport.write(answer)
        self.transport.close()

    def _http(self) -> None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEAD:
                self._refuse(DENY_HTTP)
            return
        head, self.buf = self.buf[:end], self.buf[end + 4 :]
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or parts[0] != b"CONNECT":
            self._refuse(NOT_CONNECT)
            return
        authed = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"proxy-authorization":
                scheme, _, cred = value.strip().partition(b" ")
                authed = scheme.lower() == b"basic" and cred.strip() == self.token
                break
        if not authed:
            self._refuse(DENY_HTTP)
            return
        host, _, port = parts[1].rpartition(b":")
        if not port.isdigit():
            self._refuse(BAD_GATEWAY)
            return
        self._dial(host.strip(b"[]").decode("ascii", "replace"), int(port))

    def _socks(self) -> None:
        b = self.buf
        if self.state == SOCKS_GREETING:
            if len(b) < 2 or len(b) < 2 + b[1]:
                return
            if 2 not in b[2 : 2 + b[1]]:  # no username/password method offered
                self._refuse(b"\x05\xff")
                return
            b = self.buf = b[2 + b[1] :]
            self.transport.write(b"\x05\x02")
            self.state = SOCKS_AUTH
        if self.state == SOCKS_AUTH:
            if len(b) < 2 or len(b) < 3 + b[1]:
                return
            n = 3 + b[1] + b[2 + b[1]]
            if len(b) < n:
                return
            if b[:n] != self.cred:
                self._refuse(b"\x01\x01")
                return
            b = self.buf = b[n:]
            self.transport.write(b"\x01\x00")
            self.state = SOCKS_REQUEST
        if self.state == SOCKS_REQUEST:
            if len(b) < 5:
                return
            atyp = b[3]
            if atyp == 1:
                n = 10
                if len(b) < n:
                    return
                host = socket.inet_ntoa(b[4:8])
            elif atyp == 3:
                n = 7 + b[4]
                if len(b) < n:
                    return
                host = b[5 : n - 2].decode("ascii", "replace")
            elif atyp == 4:
                n = 22
                if len(b) < n:
                    return
                host = socket.inet_ntop(socket.AF_INET6, b[4:20])
            else:
                self._refuse(b"\x05\x08\x00\x01\x00\x00\x00\x00\x00\x00")
                return
            if b[1] != 1:  # only CONNECT
                self._refuse(b"\x05\x07\x00\x01\x00\x00\x00\x00\x00\x00")
                return
            port = int.from_bytes(b[n - 2 : n], "big")
            self.buf = b[n:]
            self._dial(host, port, socks=True)

    def _dial(self, host: str, port: int, socks: bool = False) -> None:
        self.state = DIALLING
        self.socks = socks
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.create_connection(lambda: Target(self), host, port))
        task.add_done_callback(self._dialled)

    def _dialled(self, task: asyncio.Task[object]) -> None:
        if task.cancelled() or task.exception() is not None:
            answer = b"\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00" if self.socks else BAD_GATEWAY
            self._refuse(answer)

    def target_ready(self, target: asyncio.Transport) -> None:
        if self.transport.is_closing():  # the client left while we dialled
            target.close()
            return
        self.target = target
        self.state = RELAY
        self.transport.write(OK_SOCKS if self.socks else OK_HTTP)
        if self.buf:  # bytes the client sent right behind its request
            target.write(self.buf)
            self.buf = b""

    def pause_writing(self) -> None:  # the client side's buffer is full: stop the target
        if self.target is not None:
            self.target.pause_reading()

    def resume_writing(self) -> None:
        if self.target is not None:
            self.target.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.target is not None:
            self.target.close()


async def serve(port: int, user: str, password: str) -> None:
    token = base64.b64encode(f"{user}:{password}".encode())
    u, p = user.encode(), password.encode()
    cred = bytes([1, len(u)]) + u + bytes([len(p)]) + p
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Client(token, cred), "127.0.0.1", port, backlog=4096, reuse_address=True
    )
    await server.serve_forever()


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print("usage: floorproxy.py PORT USER PASS", file=sys.stderr)
        return 2
    uvloop.run(serve(int(argv[1]), argv[2], argv[3]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
