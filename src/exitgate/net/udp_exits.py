"""The exit side of a UDP association: where datagrams leave, and where answers come from.

One `UdpExit` per association, chosen once (docs/udp.md):

- `DirectExit`: one UDP socket bound to the node's bind address; datagrams leave from it and
  answers to it come back. Names are resolved here (family of the bind address), every
  address checked against the destination policy, and kept per association (bounded).
- `UpstreamExit`: UDP ASSOCIATE chained to a SOCKS5 upstream: a TCP control connection kept
  open for the life of the association and a *connected* UDP socket to the upstream's relay
  address (the kernel drops datagrams from anyone else); datagrams carry the SOCKS5 UDP
  header both ways, names go to the upstream unresolved.
- the agent exit lives in `hub.udp` (datagrams framed over an HTTP/2 stream).

Common contract: `send(target, payload)` never raises and never blocks; a datagram it cannot
take (too many in flight, full socket buffer, unresolvable or forbidden name) is dropped and
counted in `UdpStats`. `sent(n)` is called with the payload size of each datagram actually
written (the association meters it), `deliver(host, port, payload)` for each answer. `closed`
resolves (with a reason) when the exit is gone: the association then ends. ICMP errors
(`error_received`, e.g. port unreachable after a flood to a closed port) are counted and
otherwise ignored: they must not end the association.

Opening an exit raises `NodeFailure` when the node cannot be used (bind address gone,
upstream unreachable or refusing UDP ASSOCIATE): routing replaces the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Callable
from typing import Any, Final, Protocol

from exitgate.admission import DestinationPolicy
from exitgate.errors import GatewayError
from exitgate.model import Node, Target, parse_ip
from exitgate.net.conn import Conn, ConnectionClosed
from exitgate.net.dial import NodeFailure
from exitgate.net.udp_stats import UdpStats
from exitgate.tasks import spawn
from exitgate.wire.socks5_udp import UdpHeaderError, build_datagram, parse_datagram
from exitgate.wire.upstream import Socks5Client, UpstreamFailure, parse_proxy_url

Deliver = Callable[[str, int, bytes], None]
Tick = Callable[[int], None]

MAX_NAMES: Final = 256  # resolved names kept per association
SOCKET_BUFFER: Final = 256 * 1024  # bytes queued in a UDP transport before datagrams drop
RESOLVE_TIMEOUT: Final = 5.0


def no_tick(n: int) -> None:
    return None


class Exit(Protocol):
    """What an association holds: `DirectExit`, `UpstreamExit`, `hub.udp.AgentUdpExit`."""

    sent: Tick
    bound: tuple[str, int]
    closed: asyncio.Future[str]

    def send(self, target: Target, payload: bytes) -> None: ...
    def close(self) -> None: ...


class UdpExit(asyncio.DatagramProtocol):
    """Shared plumbing; subclasses implement `send` and add their own resources."""

    def __init__(self, deliver: Deliver, stats: UdpStats, max_queued: int) -> None:
        self.deliver = deliver
        self.stats = stats
        self.max_queued = max_queued
        self.sent: Tick = no_tick
        self.transport: asyncio.DatagramTransport | None = None
        self.bound: tuple[str, int] = ("", 0)
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    # -- asyncio.DatagramProtocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint
        name = transport.get_extra_info("sockname")
        if name:
            self.bound = (str(name[0]), int(name[1]))

    def error_received(self, exc: Exception) -> None:
        self.stats.drop("icmp")

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone("exit socket closed")

    # -- common --------------------------------------------------------------------------------
    def send(self, target: Target, payload: bytes) -> None:
        raise NotImplementedError

    def _gone(self, reason: str) -> None:
        if not self.closed.done():
            self.closed.set_result(reason)

    def _write(self, data: bytes, payload: int, addr: tuple[str, int] | None = None) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        # every datagram transport has it (asyncio's and uvloop's); typeshed omits it
        if transport.get_write_buffer_size() > SOCKET_BUFFER:  # type: ignore[attr-defined]
            self.stats.drop("queue_full")
            return
        transport.sendto(data, addr)
        self.sent(payload)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self._gone("closed")


class DirectExit(UdpExit):
    def __init__(
        self, deliver: Deliver, stats: UdpStats, max_queued: int, policy: DestinationPolicy
    ) -> None:
        super().__init__(deliver, stats, max_queued)
        self.policy = policy
        self.version = 4
        self._names: dict[str, str] = {}
        self._resolving = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.deliver(str(addr[0]), int(addr[1]), data)

    def send(self, target: Target, payload: bytes) -> None:
        ip = parse_ip(target.host)
        if ip is not None:
            if ip.version != self.version:
                self.stats.drop("resolve")  # not reachable from this exit's address family
                return
            self._write(payload, len(payload), (target.host, target.port))
            return
        address = self._names.get(target.host)
        if address is not None:
            self._write(payload, len(payload), (address, target.port))
        elif self._resolving >= self.max_queued:
            self.stats.drop("queue_full")
        else:
            self._resolving += 1
            task = spawn(self._resolve_and_send(target, payload), "udp-resolve")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _resolve_and_send(self, target: Target, payload: bytes) -> None:
        try:
            address = await self._resolve(target.host)
        finally:
            self._resolving -= 1
        if address is not None:
            self._write(payload, len(payload), (address, target.port))

    async def _resolve(self, host: str) -> str | None:
        family = socket.AF_INET if self.version == 4 else socket.AF_INET6
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT):
                infos = await loop.getaddrinfo(host, None, family=family, type=socket.SOCK_DGRAM)
        except (OSError, TimeoutError, UnicodeError):
            self.stats.drop("resolve")
            return None
        for info in infos:
            address = str(info[4][0])
            try:
                self.policy.check_address(ipaddress.ip_address(address))
            except GatewayError:
                continue
            if len(self._names) >= MAX_NAMES:
                self._names.clear()
            self._names[host] = address
            return address
        self.stats.drop("denied" if infos else "resolve")
        return None

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        super().close()


async def open_direct(
    node: Node, policy: DestinationPolicy, deliver: Deliver, stats: UdpStats, max_queued: int
) -> DirectExit:
    loop = asyncio.get_running_loop()
    bind = node.bind_address or "0.0.0.0"
    version = ipaddress.ip_address(bind).version
    try:
        _, exit_ = await loop.create_datagram_endpoint(
            lambda: DirectExit(deliver, stats, max_queued, policy),
            local_addr=(bind, 0),
            family=socket.AF_INET if version == 4 else socket.AF_INET6,
        )
    except OSError as exc:
        reason = (exc.strerror or type(exc).__name__).lower()
        raise NodeFailure(node, f"Exit cannot use its source address: {reason}") from None
    exit_.version = version
    return exit_


class _AssociateClient(Socks5Client):
    """The upstream client with command 0x03 (UDP ASSOCIATE) instead of CONNECT."""

    def _request(self) -> bytes:
        out = super()._request()
        return out[:1] + b"\x03" + out[2:]


class UpstreamExit(UdpExit):
    def __init__(self, deliver: Deliver, stats: UdpStats, max_queued: int) -> None:
        super().__init__(deliver, stats, max_queued)
        self.control: Conn | None = None
        self._watch: asyncio.Task[None] | None = None

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            datagram = parse_datagram(data)
        except UdpHeaderError:
            self.stats.drop("malformed")
            return
        self.deliver(datagram.target.host, datagram.target.port, datagram.payload)

    def send(self, target: Target, payload: bytes) -> None:
        try:
            data = build_datagram(target.host, target.port, payload)
        except ValueError:
            self.stats.drop("malformed")
            return
        self._write(data, len(payload))

    def watch(self, control: Conn) -> None:
        self.control = control
        self._watch = spawn(self._until_closed(control), "udp-upstream-control")

    async def _until_closed(self, control: Conn) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await control.read_more()
                control.buffer.clear()
        self._gone("upstream closed the UDP ASSOCIATE control connection")

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self.control is not None:
            self.control.close()
        super().close()


async def open_upstream(
    node: Node, connect_timeout: float, deliver: Deliver, stats: UdpStats, max_queued: int
) -> UpstreamExit:
    """UDP ASSOCIATE on the SOCKS5 upstream of `node`; NodeFailure when it cannot be had."""
    try:
        proxy = parse_proxy_url(node.url)
    except ValueError as exc:
        raise NodeFailure(node, f"Upstream URL unusable: {exc}") from None
    if proxy.scheme != "socks5":
        raise NodeFailure(node, "HTTP upstreams cannot relay UDP")
    loop = asyncio.get_running_loop()
    conn: Conn | None = None
    proxy_ip = parse_ip(proxy.host)
    family = socket.AF_INET6 if proxy_ip is not None and proxy_ip.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        # Bound first: the request then declares the port we send from (RFC 1928 section 7;
        # some relays drop datagrams from any other).
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        sock.setblocking(False)
        async with asyncio.timeout(connect_timeout):
            _, conn = await loop.create_connection(Conn, proxy.host, proxy.port)
            declared = Target("::" if family == socket.AF_INET6 else "0.0.0.0",
                              sock.getsockname()[1])
            client = _AssociateClient(proxy, declared)
            conn.write(client.initial())
            while not client.established:
                await conn.read_more()
                data = bytes(conn.buffer)
                conn.buffer.clear()
                out = client.receive_data(data)
                if out:
                    conn.write(out)
            host, port = client.bound or ("", 0)
            relay_ip = parse_ip(host)
            if not host or (relay_ip is not None and relay_ip.is_unspecified):
                host = proxy.host  # "use the address you reached me on"
            await loop.sock_connect(sock, (host, port))
            _, exit_ = await loop.create_datagram_endpoint(
                lambda: UpstreamExit(deliver, stats, max_queued), sock=sock
            )
    except (OSError, TimeoutError, ConnectionClosed, UpstreamFailure, ValueError) as exc:
        sock.close()
        if conn is not None:
            conn.abort()
        if isinstance(exc, UpstreamFailure):
            detail = exc.detail
        elif isinstance(exc, OSError) and exc.strerror:
            detail = exc.strerror.lower()
        else:
            detail = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
        raise NodeFailure(node, f"Upstream UDP ASSOCIATE failed: {detail}") from None
    except BaseException:
        sock.close()
        if conn is not None:
            conn.abort()
        raise
    exit_.watch(conn)
    return exit_
