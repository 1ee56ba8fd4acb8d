"""The interlink: a request admitted on one instance reaches an agent held by another.

Theory of operation. Every instance with `[cluster] listen` set accepts *peer* connections
from the others. A peer connection is the agent protocol turned around: a hello line
(`EXITGATE-PEER/1 <token>`), `OK`, then HTTP/2 with the dialling instance as the h2 client
(the same `Mux` as agents, so the same flow control, limits and heartbeats). Each tunnel is
one CONNECT stream carrying the agent id in `x-exitgate-agent`.

    client ─▶ B (auth, limits, session, metering) ─h2 stream─▶ A ─agent stream─▶ agent ─▶ target

- B: `Hub.dial` finds no local connection for the agent, asks the directory (Redis) who holds
  it, and opens a stream on its link to that instance (`Interlink.dial`). B has admitted the
  request and meters it on its own `Conn`, exactly as for a local agent: A carries bytes only.
- A: `Hub.dial_local` opens the agent stream and answers the peer's stream with the agent's
  answer (200 with the bound address, or the failure kind), then splices the two streams.
  It never forwards again: one hop at most, and an instance never forwards to itself (a
  directory record naming this instance without a live connection is a stale one: offline).
- One link per peer instance, dialled on first use and kept; a silent or broken link fails
  its streams (node failures on B: routing replaces the node), and the next use redials.

The token is `[cluster] token` (default: the hub token, which every instance of a cluster
shares anyway). The interlink is plain TCP: bind it to the instances' private network.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from typing import Final

from h2.errors import ErrorCodes

from exitgate.cluster.directory import AgentDirectory
from exitgate.errors import GatewayError
from exitgate.hub.mux import Mux, MuxLimits
from exitgate.hub.protocol import (
    ConnectRequest,
    Failure,
    failure_headers,
    failure_of,
    ok_headers,
    parse_connect,
)
from exitgate.hub.server import Hub, open_tunnel, target_headers
from exitgate.hub.stream import Headers, StreamTransport
from exitgate.model import Node, NodeAttrs, NodeKind, NodeState, Target
from exitgate.net.conn import Conn, relay_until_closed
from exitgate.net.dial import NodeFailure
from exitgate.settings import split_hostport
from exitgate.tasks import spawn

log = logging.getLogger("exitgate.cluster")

HELLO: Final = b"EXITGATE-PEER/1 "
MAX_HELLO: Final = 512
H_AGENT: Final = b"x-exitgate-agent"
DIAL_TIMEOUT: Final = 3.0
FLUSH_DELAY: Final = 0.005  # directory writes wait this long for more of a burst
FLUSH_RETRY: Final = 1.0
MAX_CONNECT_TIMEOUT: Final = 60.0
PEER_LIMITS: Final = MuxLimits(max_streams=65_536, silence_timeout=6.0, ping_interval=1.0)


class InboundPeer(Mux):
    """A peer instance's connection to us (h2 server side): it asks for agent tunnels."""

    __slots__ = ("_buf", "_ready", "interlink", "peer")
    client_side = False

    def __init__(self, interlink: Interlink) -> None:
        super().__init__(interlink.limits)
        self.interlink = interlink
        self._buf = bytearray()
        self._ready = False
        self.peer = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        name = transport.get_extra_info("peername")
        self.peer = f"{name[0]}:{name[1]}" if name else "?"
        self.interlink.links.add(self)

    def preamble_received(self, data: bytes) -> None:
        if self._ready:
            return
        self._buf += data
        end = self._buf.find(b"\n", 0, MAX_HELLO)
        if end < 0:
            if len(self._buf) >= MAX_HELLO or not HELLO.startswith(bytes(self._buf[:16])[:16]):
                self._refuse("not a peer hello")
            return
        line, rest = bytes(self._buf[:end]), bytes(self._buf[end + 1 :])
        self._buf = bytearray()
        token = line[len(HELLO) :].strip() if line.startswith(HELLO) else b""
        if not token or not hmac.compare_digest(token, self.interlink.token):
            self._refuse("wrong token")  # the token itself is never logged
            return
        self._ready = True
        if self.transport is not None:
            self.transport.write(b"OK\n")
        self.start_h2(rest)

    def _refuse(self, reason: str) -> None:
        log.warning("peer connection from %s refused: %s", self.peer, reason)
        if self.transport is not None:
            self.transport.write(b"NO " + reason.encode() + b"\n")
        self.fail(f"refused: {reason}")

    def on_request(self, stream: StreamTransport, headers: Headers) -> None:
        self.interlink.serve(self, stream, headers)

    def on_closed(self, reason: str) -> None:
        self.interlink.links.discard(self)

    def dead(self, reason: str) -> None:
        log.warning("peer link from %s dead: %s", self.peer, reason)
        self.fail(reason, hard=True)


class OutboundPeer(Mux):
    """Our connection to a peer instance (h2 client side): we open agent tunnels on it."""

    __slots__ = ("_buf", "addr", "interlink", "ready")
    client_side = True

    def __init__(self, interlink: Interlink, addr: str) -> None:
        super().__init__(interlink.limits)
        self.interlink = interlink
        self.addr = addr
        self._buf = bytearray()
        self.ready: asyncio.Future[None] = self.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.interlink.links.add(self)
        if self.transport is not None:
            self.transport.write(HELLO + self.interlink.token + b"\n")

    def preamble_received(self, data: bytes) -> None:
        if self.ready.done():
            return
        self._buf += data
        end = self._buf.find(b"\n", 0, MAX_HELLO)
        if end < 0:
            if len(self._buf) >= MAX_HELLO:
                self.fail("garbled peer answer")
            return
        line, rest = bytes(self._buf[:end]), bytes(self._buf[end + 1 :])
        self._buf = bytearray()
        if line != b"OK":
            self.fail(f"peer {self.addr} refused us: {line[:100].decode('ascii', 'replace')}")
            return
        self.start_h2(rest)
        self.ready.set_result(None)

    def dead(self, reason: str) -> None:
        log.warning("peer link to %s dead: %s", self.addr, reason)
        self.fail(reason, hard=True)

    def on_closed(self, reason: str) -> None:
        self.interlink.links.discard(self)
        if self.interlink.outbound.get(self.addr) is self:
            del self.interlink.outbound[self.addr]
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))


class Interlink:
    def __init__(
        self,
        hub: Hub,
        directory: AgentDirectory,
        token: str,
        *,
        limits: MuxLimits = PEER_LIMITS,
    ) -> None:
        self.hub = hub
        self.directory = directory
        self.token = token.encode()
        self.limits = limits
        self.links: set[Mux] = set()
        self.outbound: dict[str, OutboundPeer] = {}
        self.forwarded = 0  # tunnels this instance sent to peers
        self.carried = 0  # tunnels peers sent through this instance
        self.address: tuple[str, int] = ("", 0)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._refresher: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None  # queued directory claims/releases
        self._orphans: set[str] = set()  # agents online in the store but held by no instance

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self, listen: str) -> tuple[str, int]:
        host, port = split_hostport(listen)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: InboundPeer(self), host, port, backlog=1024, reuse_address=True
        )
        sock = self._server.sockets[0].getsockname()
        self.address = (str(sock[0]), int(sock[1]))
        self.hub.forward = self.dial
        self.hub.on_agent = self._on_agent
        self.hub.book.held_elsewhere = self.directory.held_elsewhere
        for agent_id, link in list(self.hub.live.items()):  # registered before we started
            self._on_agent(agent_id, link)
        try:
            await self.directory.heartbeat()
        except Exception as exc:  # Redis down: the refresh loop tries again
            log.warning("agent directory heartbeat failed: %s", exc)
        self._refresher = spawn(self._refresh(), "agent-directory-refresh")
        return self.address

    async def close(self) -> None:
        self.hub.forward = None
        self.hub.on_agent = None
        self.hub.book.held_elsewhere = None
        for task in (self._refresher, self._flusher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._server is not None:
            self._server.close()
        for link in list(self.links):
            link.fail("instance shutting down", goaway=ErrorCodes.NO_ERROR)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.directory.flush()  # releases queued by the hub's shutdown
        # our agents' records go now rather than at their TTL
        for agent_id, epoch in list(self.directory.epochs.items()):
            with contextlib.suppress(Exception):
                await self.directory.release(agent_id, epoch)

    async def _refresh(self) -> None:
        interval = self.directory.ttl_ms / 3000
        rounds = 0
        while True:
            await asyncio.sleep(interval)
            try:
                await self.directory.heartbeat()  # one command vouches for every agent here
                rounds += 1
                if rounds % 3 == 0:  # once per TTL
                    await self._janitor()
            except Exception as exc:
                log.warning("agent directory refresh failed: %s", exc)

    async def _janitor(self) -> None:
        """Agent nodes left `online` by an instance that died: held by no instance for two
        checks a TTL apart (so never one that is registering right now), they go offline.
        An agent that any live instance holds is never touched."""
        suspects = [
            n.id for n in self.hub.registry.nodes.values()
            if n.kind is NodeKind.AGENT and n.state is NodeState.ONLINE
            and n.id not in self.hub.live
        ]
        orphans = set(await self.directory.unheld(suspects)) if suspects else set()
        for agent_id in orphans & self._orphans:
            log.info("agent %s is held by no instance: marking it offline", agent_id)
            self.hub.book.sync(agent_id)
        self._orphans = orphans

    # -- the directory follows the hub -----------------------------------------------------------
    def _on_agent(self, agent_id: str, link: object | None) -> None:
        if link is not None:
            hello = getattr(link, "hello", None)
            attrs: NodeAttrs | None = getattr(hello, "attrs", None)
            ip = str(getattr(link, "ip", ""))
            fields = {} if attrs is None else {
                "country": attrs.country, "region": attrs.region, "city": attrs.city,
                "isp": attrs.isp, "asn": attrs.asn, "network": str(attrs.network),
            }
            self.directory.claim_later(agent_id, ip, fields)
        else:
            epoch = self.directory.epochs.get(agent_id)
            if epoch is None:
                return
            self.directory.release_later(agent_id, epoch)
        if self._flusher is None:
            self._flusher = spawn(self._flush(), "agent-directory")

    async def _flush(self) -> None:
        """Claims and releases queued in one burst (a restart's thousands of registrations)
        go to Redis in a few pipelines; kept and retried while Redis is unreachable."""
        try:
            while self.directory.pending:
                await asyncio.sleep(FLUSH_DELAY)
                try:
                    await self.directory.flush()
                except Exception as exc:
                    log.warning("agent directory write failed (retrying): %s", exc)
                    await asyncio.sleep(FLUSH_RETRY)
        finally:
            self._flusher = None

    # -- forwarding side (B) ---------------------------------------------------------------------
    async def dial(self, node: Node, target: Target, connect_timeout: float) -> Conn:
        try:
            holder = await self.directory.lookup(node.id)
        except Exception as exc:
            raise NodeFailure(node, f"Agent directory unreachable: {exc}") from None
        if holder is None or holder.instance == self.directory.instance:
            raise NodeFailure(node, "Agent is offline")
        link = await self._link(node, holder.addr)
        headers = [*target_headers(target, connect_timeout, self.hub.allow_private),
                   (H_AGENT, node.id.encode())]
        self.forwarded += 1
        return await open_tunnel(link, node, headers, target, connect_timeout, who="Agent")

    async def _link(self, node: Node, addr: str) -> OutboundPeer:
        link = self.outbound.get(addr)
        if link is None or link.closed:
            host, port = split_hostport(addr)
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(DIAL_TIMEOUT):
                    _, link = await loop.create_connection(
                        lambda: OutboundPeer(self, addr), host, port
                    )
            except (OSError, TimeoutError) as exc:
                raise NodeFailure(node, f"Instance holding the agent unreachable: {exc}") from None
            self.outbound[addr] = link
        try:
            async with asyncio.timeout(DIAL_TIMEOUT):
                await asyncio.shield(link.ready)
        except (ConnectionError, TimeoutError) as exc:
            link.fail("no answer", hard=True)
            raise NodeFailure(node, f"Instance holding the agent unreachable: {exc}") from None
        return link

    # -- carrying side (A) -----------------------------------------------------------------------
    def serve(self, link: InboundPeer, stream: StreamTransport, headers: Headers) -> None:
        try:
            request = parse_connect(headers, MAX_CONNECT_TIMEOUT)
        except ValueError as exc:
            link.respond(stream, failure_headers(Failure.BAD_REQUEST, str(exc)), end=True)
            return
        agent_id = dict(headers).get(H_AGENT, b"").decode("ascii", "replace")
        task = spawn(self._carry(link, stream, agent_id, request), "interlink-tunnel")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _carry(
        self, link: InboundPeer, stream: StreamTransport, agent_id: str, request: ConnectRequest
    ) -> None:
        node = self.hub.registry.node(agent_id) or Node(
            id=agent_id, kind=NodeKind.AGENT, state=NodeState.ONLINE, attrs=NodeAttrs()
        )
        try:
            # one hop: never forwards
            far = await self.hub.dial_local(node, request.target, request.timeout)
        except NodeFailure as exc:
            link.respond(stream, failure_headers(Failure.DRAINING, exc.detail), end=True)
            return
        except GatewayError as exc:
            link.respond(stream, failure_headers(failure_of(exc), exc.detail), end=True)
            return
        if stream.is_closing():
            far.close()
            return
        bound = far.transport.get_extra_info("sockname") if far.transport else None
        link.respond(stream, ok_headers(bound if isinstance(bound, tuple) else ("", 0)))
        near = Conn()
        stream.attach(near)
        self.carried += 1
        try:
            await relay_until_closed(near, far)
        finally:
            near.close()
            far.close()


__all__ = ["Interlink"]
