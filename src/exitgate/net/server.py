"""Listeners and the per-connection driver: which protocol, then its handler.

One port speaks SOCKS5, HTTP and (with a certificate) HTTP inside TLS, told apart by the
first byte: 0x05 SOCKS5, 0x16 a TLS ClientHello, anything else HTTP/1.1.

TLS needs the ClientHello intact, so when a certificate is configured the first byte is
*peeked*, not read: the new transport is paused before it reads anything, a duplicate of its
descriptor is watched for readability, `recv(MSG_PEEK)` looks at the byte, and the transport
is either upgraded with `loop.start_tls` or simply resumed. Without a certificate none of this
runs and the byte is read as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from typing import Literal

from exitgate.net.conn import Conn, ConnectionClosed
from exitgate.net.context import ProxyContext
from exitgate.net.http_handler import HttpSession
from exitgate.net.socks_handler import SocksSession
from exitgate.settings import split_hostport
from exitgate.tasks import spawn

log = logging.getLogger("exitgate.server")

Mode = Literal["auto", "http", "socks5"]
SOCKS_VERSION = 0x05
TLS_HANDSHAKE = 0x16


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key or None)
    return context


class ProxyServer:
    def __init__(self, ctx: ProxyContext, tls: ssl.SSLContext | None = None) -> None:
        self.ctx = ctx
        self.tls = tls
        self.servers: list[asyncio.Server] = []
        self.clients: set[Conn] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    async def listen(self, address: str, mode: Mode = "auto") -> tuple[str, int]:
        host, port = split_hostport(address)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: Conn(on_made=lambda conn: self._accepted(conn, mode)),
            host,
            port,
            backlog=self.ctx.proxy.backlog,
            reuse_address=True,
        )
        self.servers.append(server)
        bound = server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    def _accepted(self, conn: Conn, mode: Mode) -> None:
        if self.tls is not None and mode != "socks5" and conn.transport is not None:
            conn.transport.pause_reading()
        task = spawn(self._handle(conn, mode), "proxy-client")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _handle(self, conn: Conn, mode: Mode) -> None:
        self.clients.add(conn)
        try:
            async with asyncio.timeout(self.ctx.proxy.handshake_timeout):
                if self.tls is not None and mode != "socks5":
                    await self._maybe_tls(conn)
                if mode == "auto" and not conn.buffer:
                    await conn.read_more()
            if mode == "socks5" or (mode == "auto" and conn.buffer[0] == SOCKS_VERSION):
                await SocksSession(self.ctx, conn).run()
            else:
                await HttpSession(self.ctx, conn).run()
        except (ConnectionClosed, TimeoutError, ssl.SSLError, ConnectionError):
            pass
        except Exception:
            log.exception("connection handler failed")
        finally:
            self.clients.discard(conn)
            conn.close()

    async def _maybe_tls(self, conn: Conn) -> None:
        transport = conn.transport
        tls = self.tls
        if transport is None or tls is None:
            return
        raw = transport.get_extra_info("socket")
        first = await _peek_first_byte(raw.fileno())
        loop = asyncio.get_running_loop()
        if first == TLS_HANDSHAKE:
            upgraded = await loop.start_tls(transport, conn, tls, server_side=True)
            if upgraded is None:
                raise ConnectionClosed
            conn.transport = upgraded
        else:
            transport.resume_reading()

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting, let open connections finish for `grace` seconds, then cut them."""
        for server in self.servers:
            server.close()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=grace)
            for conn in list(self.clients):
                conn.abort()
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)


async def _peek_first_byte(fd: int) -> int:
    """Wait until `fd` is readable and return its first byte without consuming it."""
    loop = asyncio.get_running_loop()
    dup = os.dup(fd)
    sock = socket.socket(fileno=dup)
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(dup, readable)
    try:
        await ready
    finally:
        loop.remove_reader(dup)
    try:
        data = sock.recv(1, socket.MSG_PEEK)
    finally:
        sock.detach()
        os.close(dup)
    if not data:
        raise ConnectionClosed
    return data[0]
