"""SOCKS5 UDP ASSOCIATE (RFC 1928 section 7): one association, from admission to its end.

Theory of operation (docs/udp.md has the client's view):

1. *Admission* as for a CONNECT: gates 1-2 already ran in the negotiation; `authorize` runs
   gates 3-6 with protocol `udp` (the package must be entitled to `udp` and `socks5`), so
   the association counts one request and holds one concurrency lease until it ends. The
   request's DST.ADDR is the client's own address, not a destination, so gate 3's
   destination check runs on every datagram instead.
2. *Networks*: the rules' networks (cut down to the package's) must include one of
   `[udp] networks`, else DISALLOWED; routing then only sees those networks, and only
   UDP-capable exits (`udp_route`). NODE_NOT_FOUND when none matches.
3. *Exit*: chosen once through the shared router (sticky sessions, onerror policies and
   health apply), opened by kind (`udp_exits`, `hub.udp`), kept for the association's life.
4. *Relay*: one client-facing UDP socket on the address the client reached us on. A datagram
   is taken only from the control connection's peer IP and from one port (the one declared
   in the request when non-zero, else the first one seen); is at most `[udp] max_datagram`
   bytes; has FRAG 0 and a valid header; goes to a destination the policy allows. Anything
   else is dropped and counted (`UdpStats`), never answered. Payload bytes (not headers)
   are metered both ways when written, into the package's usual account and caps.
5. *End*: the control connection closes, the exit goes away, no datagram either way for
   `[udp] idle_timeout`, or the package hits its cap / its organization runs out of credits
   (recorded like a tunnel's). Then every resource is given back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from exitgate.admission import Admitted, DestinationPolicy, Identity
from exitgate.errors import Code, GatewayError, SocksReply
from exitgate.hub.server import Hub
from exitgate.hub.udp import open_agent_udp
from exitgate.model import ALL_NETWORKS, Network, Node, NodeKind, Protocol, Target
from exitgate.net.conn import Conn, ConnectionClosed
from exitgate.net.context import ProxyContext
from exitgate.net.dial import NodeFailure
from exitgate.net.udp_exits import SOCKET_BUFFER, Deliver, Exit, open_direct, open_upstream
from exitgate.net.udp_route import UdpRouter
from exitgate.net.udp_stats import UdpStats
from exitgate.routing.attempts import Fail
from exitgate.routing.failover import Router
from exitgate.routing.health import Lease
from exitgate.routing.select import Filters
from exitgate.settings import UdpSettings
from exitgate.tasks import spawn
from exitgate.wire.socks5 import Socks5Server
from exitgate.wire.socks5_udp import Fragmented, UdpHeaderError, build_datagram, parse_datagram

log = logging.getLogger("exitgate.udp")

# What gate 3 is shown in place of a destination: a name that passes the destination policy
# and reads as what it is in the errors log.
ASSOCIATION = Target("udp-associate", 0)


@dataclass(slots=True)
class UdpService:
    """What every association shares, built once by the application."""

    settings: UdpSettings
    router: UdpRouter
    policy: DestinationPolicy
    connect_timeout: float
    hub: Hub | None = None
    stats: UdpStats = field(default_factory=UdpStats)

    @classmethod
    def build(
        cls,
        settings: UdpSettings,
        router: Router,
        policy: DestinationPolicy,
        connect_timeout: float,
        hub: Hub | None = None,
    ) -> UdpService:
        return cls(settings, UdpRouter.sharing(router), policy, connect_timeout, hub)

    def filters(self, admitted: Admitted) -> Filters:
        """The admitted filters narrowed to UDP networks; DISALLOWED when none is left."""
        allowed = frozenset(Network(n) for n in self.settings.networks)
        asked = admitted.filters.networks
        wanted = (ALL_NETWORKS if asked is None else asked) & allowed
        if not wanted:
            names = ", ".join(sorted(asked or ALL_NETWORKS))
            raise GatewayError(Code.DISALLOWED, f"UDP is not allowed on network {names}")
        return replace(admitted.filters, networks=wanted)

    async def open_exit(self, node: Node, deliver: Deliver) -> Exit:
        max_queued = self.settings.max_queued
        match node.kind:
            case NodeKind.DIRECT:
                return await open_direct(node, self.policy, deliver, self.stats, max_queued)
            case NodeKind.UPSTREAM:
                return await open_upstream(
                    node, self.connect_timeout, deliver, self.stats, max_queued
                )
            case NodeKind.AGENT:
                if self.hub is None:
                    raise NodeFailure(node, "Agent hub is not running")
                return await open_agent_udp(
                    self.hub, node, self.connect_timeout, deliver, self.stats
                )

    async def route(self, admitted: Admitted, filters: Filters, deliver: Deliver) -> tuple[
        Exit, Node, Lease
    ]:
        """Gate 7 for an association: select, open, fail over. The lease is the caller's."""
        attempt = await self.router.begin(admitted.package.id, admitted.rules, filters)
        try:
            while True:
                step = await attempt.next()
                if isinstance(step, Fail):
                    raise step.error()
                try:
                    exit_ = await self.open_exit(step.node, deliver)
                except NodeFailure as exc:
                    attempt.failed(exc.detail)
                    continue
                try:
                    ok = await attempt.succeeded()
                except BaseException:
                    exit_.close()
                    raise
                return exit_, ok.node, ok.lease
        finally:
            attempt.close()


class _ClientSide(asyncio.DatagramProtocol):
    """The association's client-facing socket."""

    def __init__(self, assoc: Association) -> None:
        self.assoc = assoc

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.assoc.from_client(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.assoc.stats.drop("icmp")


class Association:
    """The datagram path of one association (the part that runs per datagram)."""

    def __init__(
        self, service: UdpService, policy: DestinationPolicy, client_ip: str, port: int
    ) -> None:
        self.stats = service.stats
        self.policy = policy
        self.max_datagram = service.settings.max_datagram
        self.client_ip = client_ip
        self.client_port = port  # 0: learned from the first datagram
        self.exit: Exit | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.tick_down: Callable[[int], None] = _no_tick
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.last = loop.time()
        self.ended: asyncio.Future[GatewayError | None] = loop.create_future()

    def from_client(self, data: bytes, addr: tuple[Any, ...]) -> None:
        stats = self.stats
        if addr[0] != self.client_ip or (self.client_port and addr[1] != self.client_port):
            stats.drop("spoofed")
            return
        if len(data) > self.max_datagram:
            stats.drop("oversized")
            return
        try:
            datagram = parse_datagram(data)
        except Fragmented:
            stats.drop("fragment")
            return
        except UdpHeaderError:
            stats.drop("malformed")
            return
        try:
            self.policy.check(datagram.target)
        except GatewayError:
            stats.drop("denied")
            return
        self.client_port = addr[1]  # learned: from now on only this port
        self.last = self.loop.time()
        if self.exit is not None:
            self.exit.send(datagram.target, datagram.payload)

    def to_client(self, host: str, port: int, payload: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not self.client_port:
            self.stats.drop("no_client")
            return
        if transport.get_write_buffer_size() > SOCKET_BUFFER:  # type: ignore[attr-defined]
            self.stats.drop("queue_full")
            return
        try:
            data = build_datagram(host, port, payload)
        except ValueError:
            self.stats.drop("malformed")
            return
        if len(data) > self.max_datagram:
            self.stats.drop("oversized")
            return
        transport.sendto(data, (self.client_ip, self.client_port))
        self.last = self.loop.time()
        self.stats.datagrams_down += 1
        self.stats.bytes_down += len(payload)
        self.tick_down(len(payload))

    def stop(self, err: GatewayError | None) -> None:
        if not self.ended.done():
            self.ended.set_result(err)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self.exit is not None:
            self.exit.close()


def _no_tick(n: int) -> None:
    return None


async def _until_closed(conn: Conn) -> None:
    """The control connection: whatever the client sends on it is ignored, its end counts."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            await conn.read_more()
            conn.buffer.clear()


async def associate(
    ctx: ProxyContext, conn: Conn, core: Socks5Server, identity: Identity, declared: Target
) -> None:
    """Admit, route, answer and relay one UDP ASSOCIATE until it ends."""
    client_ip = conn.peername[0]
    service = ctx.udp

    def refuse(err: GatewayError) -> None:
        conn.write(core.reply(err.socks_reply))
        ctx.rejected(err, protocol=Protocol.UDP, client=client_ip, target=ASSOCIATION.host)

    if service is None:
        conn.write(core.reply(SocksReply.COMMAND_NOT_SUPPORTED))
        return
    package = identity.package
    try:
        if Protocol.SOCKS5 not in package.protocols:
            raise GatewayError(Code.DISALLOWED, "Protocol socks5 not in allowed list")
        admitted = await ctx.admission.authorize(identity, Protocol.UDP, ASSOCIATION)
    except GatewayError as err:
        err.package_id = package.id
        refuse(err)
        return
    assoc = Association(service, ctx.admission.destinations, client_ip, declared.port)
    try:
        filters = service.filters(admitted)
        exit_, node, lease = await service.route(admitted, filters, assoc.to_client)
    except BaseException as exc:
        admitted.lease.release()
        if isinstance(exc, GatewayError):
            exc.package_id = package.id
            refuse(exc)
            return
        raise
    assoc.exit = exit_
    stats = service.stats
    meter = None
    try:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _ClientSide(assoc), local_addr=(conn.sockname[0], 0)
            )
        except OSError as exc:
            log.warning("UDP ASSOCIATE: cannot open the client socket: %s", exc.strerror)
            conn.write(core.reply(SocksReply.GENERAL_FAILURE))
            return
        assoc.transport = transport
        meter = ctx.meter(admitted, node, assoc.stop)
        tick_up, tick_down = ctx.ticks(meter)

        def sent(n: int) -> None:
            stats.datagrams_up += 1
            stats.bytes_up += n
            tick_up(n)

        exit_.sent = sent
        assoc.tick_down = tick_down
        host, port = transport.get_extra_info("sockname")[:2]
        conn.write(core.reply(SocksReply.SUCCEEDED, (str(host), int(port))))
        stats.associations_total += 1
        stats.associations_active += 1
        try:
            await _relay(ctx, conn, assoc, exit_, service.settings.idle_timeout)
        finally:
            stats.associations_active -= 1
        stopped = assoc.ended.result() if assoc.ended.done() else None
        if stopped is not None:
            stopped.package_id = package.id
            ctx.rejected(
                stopped, protocol=Protocol.UDP, client=client_ip, target=ASSOCIATION.host
            )
    finally:
        assoc.close()
        if meter is not None:
            meter.close()
        service.router.health.release(lease)
        admitted.lease.release()


async def _relay(
    ctx: ProxyContext, conn: Conn, assoc: Association, exit_: Exit, idle: float
) -> None:
    control = spawn(_until_closed(conn), "udp-control")
    try:
        while True:
            left = assoc.last + idle - assoc.loop.time()
            if left <= 0:
                return
            waits: set[asyncio.Future[Any]] = {control, exit_.closed, assoc.ended}
            done, _ = await asyncio.wait(
                waits, timeout=left, return_when=asyncio.FIRST_COMPLETED
            )
            if done:
                return
    finally:
        control.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await control
