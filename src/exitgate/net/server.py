"""Listeners and the per-connection driver: which protocol, then its handler.

One port speaks SOCKS5, HTTP and (with a certificate) HTTP inside TLS, told apart by the
first byte: 0x05 SOCKS5, 0x16 a TLS ClientHello, anything else HTTP/1.1.

TLS needs the ClientHello intact, so when a certificate is configured the listener accepts
raw sockets itself and *peeks* at the first byte (`recv(MSG_PEEK)`) before any transport
exists; the socket then becomes a transport with or without TLS
(`loop.connect_accepted_socket`). Without a certificate none of this runs: the listener is a
plain `create_server` (which accepts in batches) and the first byte is read as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
from collections.abc import Coroutine
from typing import Any, Literal

from exitgate.errors import Code, GatewayError, http_error_response
from exitgate.net.caps import start_caps
from exitgate.net.conn import Conn, ConnectionClosed
from exitgate.net.context import ProxyContext
from exitgate.net.http_handler import HttpSession
from exitgate.net.socks_handler import SocksSession
from exitgate.settings import split_hostport
from exitgate.tasks import spawn
from exitgate.wire import proxy_protocol

log = logging.getLogger("exitgate.server")

Mode = Literal["auto", "http", "socks5"]
SOCKS_VERSION = 0x05
TLS_HANDSHAKE = 0x16
SOCKS_NO_ACCEPTABLE_METHOD = b"\x05\xff"
# A refused connection is answered at its first bytes and then held only this long (at most)
# for the client to read the answer and close: a flood over the cap cannot park descriptors
# for the whole handshake timeout.
REFUSED_LINGER = 2.0


class Balancers:
    """The load balancers allowed to speak the PROXY protocol (`[proxy] proxy_protocol_from`)."""

    def __init__(self, networks: tuple[str, ...]) -> None:
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusted(self, address: str) -> bool:
        try:
            addr = ipaddress.ip_address(address)
        except ValueError:
            return False
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self.networks)


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key or None)
    return context


class _Ready:
    """A plain connection's `on_ready`: `ProxyServer._ready` with its arguments. A small
    class, not a closure (compiled, a closure's environment holds the closure itself: a
    reference cycle left to the cyclic collector) nor a `functools.partial` (about 4,000
    instructions to make, ten times this)."""

    __slots__ = ("address", "conn", "mode", "server")

    def __init__(self, server: ProxyServer, conn: Conn, mode: Mode, address: str) -> None:
        self.server = server
        self.conn = conn
        self.mode: Mode = mode
        self.address = address

    def __call__(self) -> None:
        self.server._ready(self.conn, self.mode, self.address)


class ProxyServer:
    def __init__(self, ctx: ProxyContext, tls: ssl.SSLContext | None = None) -> None:
        self.ctx = ctx
        self.tls = tls
        self.servers: list[asyncio.Server] = []
        self.listeners: list[socket.socket] = []
        self.clients: dict[Conn, str] = {}  # open client connections → their address
        self.tasks: set[asyncio.Task[None]] = set()
        self.caps = start_caps(ctx.proxy.max_connections, ctx.proxy.max_connections_per_ip)
        self.balancers = Balancers(ctx.proxy.proxy_protocol_from)
        ctx.on_tunnel_end = self._ended

    def _ended(self, conn: Conn) -> None:
        """A client connection is over (once per connection: `clients.pop` is the guard)."""
        address = self.clients.pop(conn, None)
        if address is not None:
            self.caps.release(address)

    async def listen(self, address: str, mode: Mode = "auto") -> tuple[str, int]:
        host, port = split_hostport(address)
        loop = asyncio.get_running_loop()
        if self.tls is not None and mode != "socks5":
            return await self._listen_peeking(host, port, mode)
        server = await loop.create_server(
            lambda: Conn(on_made=lambda conn: self._accepted(conn, mode)),
            host,
            port,
            backlog=self.ctx.proxy.backlog,
            reuse_address=True,
            reuse_port=self.ctx.proxy.reuse_port or None,
        )
        self.servers.append(server)
        # uvloop's `sockets` is a list, typeshed says tuple: read untyped, or the compiled
        # build (hatch_build.py) would check it against the stub and refuse it.
        sockets: Any = getattr(server, "sockets")  # noqa: B009
        bound = sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    def _accepted(self, conn: Conn, mode: Mode) -> None:
        """A plain (non-TLS) connection: admitted against the caps at once; it is served from
        its first bytes on (`Conn.on_ready`), which are then already in its buffer: a SOCKS5
        negotiation from the connection's callbacks (a task only for its request), HTTP in a
        task of its own."""
        if self.balancers:  # the PROXY header comes first: read in the handler's task
            self._track(spawn(self._handle(conn, mode), "proxy-client"))
            return
        address = conn.peername[0]
        if not self._admit(conn, mode, True, address):
            return
        conn.on_ready = _Ready(self, conn, mode, address)

    def _ready(self, conn: Conn, mode: Mode, address: str) -> None:
        """A plain connection's first bytes (or its end) arrived: start its handler."""
        buffer = conn.buffer
        if not buffer:  # closed (or timed out) before sending anything
            self._finish(conn)
        elif mode == "socks5" or (mode == "auto" and buffer[0] == SOCKS_VERSION):
            SocksSession(self.ctx, conn).begin(
                lambda serve: self._serve(self._guard(conn, serve)),
                lambda: self._finish(conn),
            )
        else:
            session = HttpSession(self.ctx, conn, address)
            self._serve(self._guard(conn, session.run()))

    def _serve(self, guarded: Coroutine[Any, Any, None]) -> None:
        """A plain connection's handler task. Not `tasks.spawn`: `_guard` logs what the
        handler raises and `_track` holds the task, so spawn's own bookkeeping (a second set
        and a second done-callback, per connection) would add nothing."""
        self._track(asyncio.get_running_loop().create_task(guarded, name="proxy-client"))

    def _track(self, task: asyncio.Task[None]) -> None:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _admit(self, conn: Conn, mode: Mode, sniff: bool, address: str) -> bool:
        """The connection caps; a refused connection is answered by a task of its own."""
        refused = self.caps.admit(address)
        if refused is not None:
            self._track(spawn(self._refuse(conn, mode, sniff, address, refused), "proxy-refuse"))
            return False
        self.clients[conn] = address
        # The handshake deadline runs from accept; each session clears it when its
        # negotiation is done (and sets its own for later phases).
        conn.set_deadline(self.ctx.proxy.handshake_timeout)
        return True

    async def _handle(
        self, conn: Conn, mode: Mode, *, sniff: bool = True, header_read: bool = False
    ) -> None:
        """`header_read`: a TLS-capable listener already took the PROXY header off the socket
        (before the TLS handshake it precedes)."""
        address = conn.peername[0]
        if self.balancers and not header_read:
            named = await self._proxy_protocol(conn, address)
            if named is None:
                conn.close()
                return
            address = named
        if self._admit(conn, mode, sniff, address):
            await self._guard(conn, self._dispatch(conn, mode, address, sniff))

    async def _dispatch(self, conn: Conn, mode: Mode, address: str, sniff: bool) -> None:
        if sniff and mode == "auto" and not conn.buffer:
            await conn.read_more()
        if mode == "socks5" or (sniff and mode == "auto" and conn.buffer[0] == SOCKS_VERSION):
            await SocksSession(self.ctx, conn).run()
        else:
            await HttpSession(self.ctx, conn, address).run()

    async def _guard(self, conn: Conn, serving: Coroutine[Any, Any, None]) -> None:
        """Run a connection's handler; whatever it leaves open is closed after it."""
        try:
            await serving
        except (ConnectionClosed, TimeoutError, ssl.SSLError, ConnectionError):
            pass
        except Exception:
            log.exception("connection handler failed")
        finally:
            self._finish(conn)

    def _finish(self, conn: Conn) -> None:
        if not conn.spliced:  # a spliced tunnel leaves through `ctx.on_tunnel_end`
            self._ended(conn)
            conn.close()

    async def _proxy_protocol(self, conn: Conn, peer: str) -> str | None:
        """With `[proxy] proxy_protocol_from` set: from a listed balancer, read its PROXY header
        and make the client it names this connection's address; from anyone else, refuse a
        connection that starts with one (nobody else may claim an address). None: closed."""
        conn.set_deadline(self.ctx.proxy.handshake_timeout)
        try:
            if not self.balancers.trusted(peer):
                if not conn.buffer:
                    await conn.read_more()
                if proxy_protocol.looks_like_header(bytes(conn.buffer[:12])):
                    self.ctx.warnings.warning(
                        "PROXY header from an address not in proxy_protocol_from", peer, ""
                    )
                    return None
                return peer
            while (header := proxy_protocol.parse(bytes(conn.buffer))) is None:
                await conn.read_more()
        except proxy_protocol.ProxyProtocolError as exc:
            self.ctx.warnings.warning("bad PROXY header", peer, str(exc))
            return None
        except (ConnectionClosed, TimeoutError, ConnectionError):
            return None
        del conn.buffer[: header.consumed]
        if header.source is None:  # LOCAL / UNKNOWN: the balancer's own health check
            return peer
        conn.proxied = header.source
        return header.source[0]

    async def _refuse(self, conn: Conn, mode: Mode, sniff: bool, address: str, cap: str) -> None:
        """Over a connection cap: answer at the first bytes, then close. HTTP gets
        `503 TOO_MANY_CONNECTIONS`, SOCKS5 method selection 0xFF (no credentials are read).
        The answer goes out with a FIN and the connection lingers (briefly) until the client
        closes, so the client reads the answer instead of a reset."""
        caps = self.caps
        if cap == "address":
            detail = f"Too many open connections from this address (cap {caps.per_address})"
        else:
            detail = f"The gateway is at its connection limit ({caps.limit})"
        self.ctx.warnings.warning("connection over the cap", address, detail)
        conn.set_deadline(min(self.ctx.proxy.handshake_timeout, REFUSED_LINGER))
        try:
            buffer = conn.buffer
            if sniff and mode == "auto" and not buffer:
                await conn.read_more()
            if mode == "socks5" or (sniff and mode == "auto" and buffer[0] == SOCKS_VERSION):
                conn.write(SOCKS_NO_ACCEPTABLE_METHOD)
            else:
                conn.write(http_error_response(GatewayError(Code.TOO_MANY_CONNECTIONS, detail)))
            transport = conn.transport
            if transport is None or not transport.can_write_eof():
                return
            transport.write_eof()
            while True:  # discard what the client still sends until it closes
                buffer.clear()
                await conn.read_more()
        except (ConnectionClosed, TimeoutError, ssl.SSLError, ConnectionError):
            pass
        finally:
            conn.close()

    # -- TLS-capable listener: accept, peek, then wrap or not -------------------------------
    async def _listen_peeking(self, host: str, port: int, mode: Mode) -> tuple[str, int]:
        listener = socket.create_server(
            (host, port),
            family=socket.AF_INET6 if ":" in host else socket.AF_INET,
            backlog=self.ctx.proxy.backlog,
            reuse_port=self.ctx.proxy.reuse_port,
        )
        listener.setblocking(False)
        self.listeners.append(listener)
        self._track(spawn(self._accept_loop(listener, mode), "proxy-accept"))
        bound = listener.getsockname()
        return str(bound[0]), int(bound[1])

    async def _accept_loop(self, listener: socket.socket, mode: Mode) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError as exc:
                if listener.fileno() == -1:
                    return
                # out of descriptors, usually: the backlog waits until some are free again
                self.ctx.warnings.warning("accept failed", "listener", str(exc.strerror))
                await asyncio.sleep(0.1)
                continue
            self._track(spawn(self._handle_raw(sock, mode), "proxy-client"))

    async def _handle_raw(self, sock: socket.socket, mode: Mode) -> None:
        loop = asyncio.get_running_loop()
        named: tuple[str, int] | None = None
        try:
            async with asyncio.timeout(self.ctx.proxy.handshake_timeout):
                if self.balancers:
                    named = await self._raw_proxy_header(sock)
                first = (await _peek(sock, 1))[0]
                use_tls = self.tls if first == TLS_HANDSHAKE else None
                conn = Conn()
                # the factory, not the return value: uvloop returns its SSL protocol there
                await loop.connect_accepted_socket(lambda: conn, sock, ssl=use_tls)
        except (TimeoutError, ConnectionClosed, OSError, ssl.SSLError):
            sock.close()
            return
        conn.proxied = named
        await self._handle(conn, mode, sniff=use_tls is None, header_read=bool(self.balancers))

    async def _raw_proxy_header(self, sock: socket.socket) -> tuple[str, int] | None:
        """The PROXY header off a raw socket, before any TLS: the client it names, or None
        (LOCAL / UNKNOWN, or a peer that is no balancer). ConnectionClosed: refused (a header
        from a peer not in `proxy_protocol_from`, or a malformed one). Only the header's
        bytes are consumed: what follows (a TLS ClientHello) stays in the socket."""
        peer = str(sock.getpeername()[0])
        if not self.balancers.trusted(peer):
            if proxy_protocol.looks_like_header(await _peek(sock, 12)):
                self.ctx.warnings.warning(
                    "PROXY header from an address not in proxy_protocol_from", peer, ""
                )
                raise ConnectionClosed
            return None
        got = b""
        while True:
            data = await _peek(sock, proxy_protocol.V1_MAX + proxy_protocol.V2_MAX_BODY)
            try:
                header = proxy_protocol.parse(got + data)
            except proxy_protocol.ProxyProtocolError as exc:
                self.ctx.warnings.warning("bad PROXY header", peer, str(exc))
                raise ConnectionClosed from None
            if header is not None:
                sock.recv(header.consumed - len(got))  # already here: peeked
                return header.source
            got += sock.recv(len(data))  # incomplete: every byte there is the header's

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting, let open connections finish for `grace` seconds, then cut them."""
        for server in self.servers:
            server.close()
        for listener in self.listeners:
            listener.close()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        # Open connections (handlers and spliced tunnels) get `grace` seconds to finish.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while (self.clients or self.tasks) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # a shutdown-only poll; no event to hang it on
        for conn in list(self.clients):
            conn.abort()
        pending = [task for task in self.tasks if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)


async def _peek(sock: socket.socket, size: int) -> bytes:
    """Wait until `sock` is readable and return up to `size` bytes without consuming them."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            data = sock.recv(size, socket.MSG_PEEK)
        except BlockingIOError:
            ready: asyncio.Future[None] = loop.create_future()

            def readable(ready: asyncio.Future[None] = ready) -> None:
                if not ready.done():
                    ready.set_result(None)

            loop.add_reader(sock.fileno(), readable)
            try:
                await ready
            finally:
                loop.remove_reader(sock.fileno())
            continue
        if not data:
            raise ConnectionClosed
        return data
