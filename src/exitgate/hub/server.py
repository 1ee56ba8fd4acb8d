"""`Hub`: where node agents dial in; `Hub.dial` opens a tunnel through one of them.

One `AgentLink` per agent TCP connection: first the hello line (protocol.py), then HTTP/2
with the hub as the client (mux.py). A registered agent is live in `_live` under its id and
its node is kept in the store by `AgentBook` (nodes.py). Each link has one timer: the hello
deadline until the hello, then its keepalive (hub/keepalive.py: a PING only to an agent silent
for `[hub] keepalive`, dead after `[hub] keepalive_timeout`). Nothing visits every link
periodically, so an idle agent costs one PING round trip per keepalive interval.

Failure mapping for `dial` (what routing sees):
- agent unknown, offline, draining, at its stream limit, gone or silent before answering,
  stream refused or reset, no answer within the connect timeout + `ANSWER_SLACK`:
  `NodeFailure` (routing replaces the node);
- the agent's answer says the target failed (DNS, refused, unreachable, timeout, denied):
  `GatewayError` (TARGET_UNREACHABLE, GATEWAY_TIMEOUT, DISALLOWED), never the node's fault.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final

from h2.errors import ErrorCodes
from h2.exceptions import H2Error
from h2.settings import SettingCodes

from exitgate.errors import Code, GatewayError
from exitgate.events import AGENT_DISCONNECTED
from exitgate.hub.mux import Mux, MuxLimits
from exitgate.hub.nodes import AgentBook, Wanted
from exitgate.hub.protocol import (
    MAGIC,
    MAX_HELLO,
    Hello,
    HelloError,
    RefusalKind,
    classify,
    connect_headers,
    encode_ok,
    encode_refusal,
    parse_hello,
)
from exitgate.hub.stream import Headers
from exitgate.model import Node, NodeKind, Target
from exitgate.net.conn import Conn
from exitgate.net.dial import NodeFailure
from exitgate.registry import Registry
from exitgate.services import AccountService
from exitgate.settings import HubSettings, split_hostport

log = logging.getLogger("exitgate.hub")

HELLO_TIMEOUT: Final = 5.0
ANSWER_SLACK: Final = 2.0  # beyond the connect timeout the agent itself enforces
# A tunnel opened on a link quiet for PROBE_AFTER, or a newcomer claiming a connected id,
# PINGs the link: unanswered within PROBE_TIMEOUT, it is dead (instead of at the keepalive
# timeout), so a request waiting on a silently dead agent fails over within seconds.
PROBE_AFTER: Final = 1.0
PROBE_TIMEOUT: Final = 3.0
# Hellos are admitted this many per event-loop turn: a reconnect burst of thousands of agents
# (a hub restart) queues here instead of stalling the loop (and every tunnel on it) for
# seconds, and a hello whose agent gave up meanwhile is dropped unprocessed.
ADMIT_BATCH: Final = 32


class AgentLink(Mux):
    """One agent's connection, hub side."""

    __slots__ = ("_buf", "_line", "agent_id", "draining", "hello", "hub", "ip", "peer")
    client_side = True

    def __init__(self, hub: Hub) -> None:
        super().__init__(hub.limits)
        self.hub = hub
        self._buf = bytearray()
        self._line: bytes | None = None  # the hello line, waiting in the hub's queue
        self.hello: Hello | None = None
        self.agent_id = ""
        self.ip = ""
        self.peer = ""
        self.draining = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        name = transport.get_extra_info("peername")
        self.peer = f"{name[0]}:{name[1]}" if name else "?"
        self.hub.links.add(self)
        self.arm(self.started + self.hub.hello_timeout, self._hello_late)

    def _hello_late(self) -> None:
        if self._line is None and self.h2 is None and not self.closed:
            self.hub.refuse(self, HelloError(RefusalKind.PROTOCOL, "no hello in time"))

    def preamble_received(self, data: bytes) -> None:
        if self.hello is not None:
            return
        self._buf += data
        if self._line is not None:  # queued: an agent waits for OK before saying more
            if len(self._buf) > MAX_HELLO:
                self.hub.refuse(self, HelloError(RefusalKind.PROTOCOL, "data before OK"))
            return
        head = bytes(self._buf[: len(MAGIC)])
        if not MAGIC.startswith(head):
            # not our protocol (a TLS client on a plain hub, a port scanner): no need to wait
            self.hub.refuse(self, HelloError(RefusalKind.PROTOCOL, "not an exitgate agent hello"))
            return
        end = self._buf.find(b"\n", 0, MAX_HELLO + 1)
        if end < 0:
            if len(self._buf) > MAX_HELLO:
                self.hub.refuse(self, HelloError(RefusalKind.PROTOCOL, "hello line too long"))
            return
        self._line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        self.hub.queue(self)

    def take_hello(self) -> tuple[bytes, bytes]:
        line, rest = self._line or b"", bytes(self._buf)
        self._buf = bytearray()
        return line, rest

    def on_settings(self, changed: dict[int, int]) -> None:
        if changed.get(SettingCodes.MAX_CONCURRENT_STREAMS) == 0 and not self.draining:
            # The agent's way to drain: no new streams, the open ones go on (h2's GOAWAY
            # would end them all).
            self.draining = True
            log.info("agent %s draining: no new tunnels", self.agent_id)
            self.hub.book.sync(self.agent_id)

    def on_closed(self, reason: str) -> None:
        self.hub.link_closed(self, reason)

    def dead(self, reason: str) -> None:
        log.warning("agent %s dead: %s", self.agent_id or self.peer, reason)
        self.fail(reason, hard=True)


class Hub:
    def __init__(
        self,
        settings: HubSettings,
        service: AccountService,
        registry: Registry,
        *,
        allow_private: bool = False,
        limits: MuxLimits | None = None,
        sweep: bool = True,
    ) -> None:
        self.settings = settings
        self.sweep = sweep
        self.registry = registry
        self.allow_private = allow_private
        self.limits = limits or MuxLimits(
            ping_interval=settings.keepalive, silence_timeout=settings.keepalive_timeout
        )
        self.links: set[AgentLink] = set()
        self.live: dict[str, AgentLink] = {}
        self.seen: set[str] = set()  # agent ids registered since start (for `reconnects`)
        self.reconnects = 0  # registrations of an id registered before (/metrics)
        self.book = AgentBook(service, registry, self._wanted)
        self.address: tuple[str, int] = ("", 0)
        self.hello_timeout = HELLO_TIMEOUT
        self._server: asyncio.Server | None = None
        self._hellos: deque[AgentLink] = deque()  # hellos received, not yet admitted
        self._admitting = False
        self._token = settings.token.encode()
        # set by the cluster interlink: how to reach an agent another instance holds
        self.forward: Callable[[Node, Target, float], Awaitable[Conn]] | None = None
        # set by the cluster interlink: told of every registration and disconnection
        self.on_agent: Callable[[str, AgentLink | None], None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> tuple[str, int]:
        """Listen on `[hub] listen` (TLS with `tls_cert`/`tls_key`); the bound address."""
        if not self._token:
            log.warning("hub token is empty: every agent will be refused (set [hub] token)")
        host, port = split_hostport(self.settings.listen)
        tls: ssl.SSLContext | None = None
        if self.settings.tls_cert:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(self.settings.tls_cert, self.settings.tls_key or None)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: AgentLink(self),
            host,
            port,
            ssl=tls,
            ssl_handshake_timeout=HELLO_TIMEOUT if tls else None,
            backlog=4096,
            reuse_address=True,
            reuse_port=self.settings.reuse_port or None,
        )
        sock = self._server.sockets[0].getsockname()
        self.address = (str(sock[0]), int(sock[1]))
        if self.sweep:
            self.book.sweep()  # nodes left online by a previous run of this gateway
        return self.address

    async def close(self, grace: float = 5.0) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self.links):
            link.fail("gateway shutting down", goaway=ErrorCodes.NO_ERROR)
        await self.book.settle(grace)

    # -- registration ----------------------------------------------------------------------------
    def queue(self, link: AgentLink) -> None:
        self._hellos.append(link)
        if not self._admitting:
            self._admitting = True
            asyncio.get_running_loop().call_soon(self._admit_some)

    def _admit_some(self) -> None:
        hellos = self._hellos
        for _ in range(min(ADMIT_BATCH, len(hellos))):
            link = hellos.popleft()
            if not link.closed:  # an agent that gave up waiting costs nothing more
                self.admit(link, *link.take_hello())
        if hellos:
            asyncio.get_running_loop().call_soon(self._admit_some)  # after other I/O
        else:
            self._admitting = False

    def admit(self, link: AgentLink, line: bytes, rest: bytes) -> None:
        try:
            hello = parse_hello(line)
        except HelloError as exc:
            self.refuse(link, exc)
            return
        if not self._token or not hmac.compare_digest(hello.token.encode(), self._token):
            self.refuse(link, HelloError(RefusalKind.AUTH, "wrong token"), hello.agent_id)
            return
        node = self.registry.node(hello.agent_id)
        if node is not None and node.kind is not NodeKind.AGENT:
            reason = f"id {hello.agent_id} belongs to a {node.kind.value} node"
            self.refuse(link, HelloError(RefusalKind.INVALID, reason), hello.agent_id)
            return
        transport = link.transport
        if transport is None:
            return
        link.hello = hello
        link.agent_id = hello.agent_id
        link.ip = hello.ip or link.peer.rpartition(":")[0].strip("[]")
        previous = self.live.get(hello.agent_id)
        now = time.monotonic()
        if previous is not None and previous.alive(now):
            if now - previous.last_rx > PROBE_AFTER:
                previous.probe(PROBE_TIMEOUT)  # a restarted agent's dead connection goes soon
            # Two live agents claiming one id would knock each other off forever. The one
            # connected keeps its place; the newcomer is refused as transient (it backs off
            # and retries, and gets in once the other is really gone: a restarted agent's old
            # connection is declared dead within the silence timeout).
            reason = (
                f"agent id {hello.agent_id} is already connected from {previous.peer}; "
                "give each agent its own --id or --state-file"
            )
            self.refuse(link, HelloError(RefusalKind.BUSY, reason), hello.agent_id)
            return
        self.live[hello.agent_id] = link
        if hello.agent_id in self.seen:
            self.reconnects += 1
        self.seen.add(hello.agent_id)
        if previous is not None:
            log.warning(
                "agent %s connected again from %s; closing its silent connection from %s",
                hello.agent_id, link.peer, previous.peer,
            )
            previous.fail("replaced by a newer connection", goaway=ErrorCodes.NO_ERROR)
        transport.write(encode_ok(hello.agent_id, link.peer.rpartition(":")[0].strip("[]")))
        link.start_h2(rest)
        log.info("agent %s registered from %s", hello.agent_id, link.peer)
        if self.on_agent is not None:
            self.on_agent(hello.agent_id, link)
        self.book.sync(hello.agent_id, Wanted(hello.attrs, link.ip))

    def refuse(self, link: AgentLink, exc: HelloError, agent_id: str = "") -> None:
        # The reason never contains the token (protocol.parse_hello promises it).
        log.warning("agent %s from %s refused: %s", agent_id or "?", link.peer, exc.reason)
        if link.transport is not None and not link.closed:
            link.transport.write(encode_refusal(exc.kind, exc.reason))
        link.fail(f"refused: {exc.reason}")

    def link_closed(self, link: AgentLink, reason: str) -> None:
        self.links.discard(link)
        agent_id = link.agent_id
        if agent_id and self.live.get(agent_id) is link:
            del self.live[agent_id]
            log.info("agent %s offline: %s", agent_id, reason)
            if self.on_agent is not None:
                self.on_agent(agent_id, None)
            self.book.sync(agent_id)
            self.book.service.events.emit(
                AGENT_DISCONNECTED, None, {"agent_id": agent_id, "ip": link.ip, "reason": reason}
            )

    def _wanted(self, agent_id: str) -> Wanted | None:
        link = self.live.get(agent_id)
        if link is None or link.closed or link.draining or link.hello is None:
            return None
        return Wanted(link.hello.attrs, link.ip)

    # -- dialing ---------------------------------------------------------------------------------
    async def dial(self, node: Node, target: Target, connect_timeout: float) -> Conn:
        """A `Conn` whose far end is `target`, reached through agent `node` (AgentDialer).

        An agent held by another instance is reached through `forward` (the cluster
        interlink) when one is set: one hop, and the instance holding it dials locally."""
        link = self.live.get(node.id)
        if link is None and self.forward is not None:
            return await self.forward(node, target, connect_timeout)
        return await self.dial_local(node, target, connect_timeout)

    async def dial_local(self, node: Node, target: Target, connect_timeout: float) -> Conn:
        """`dial` through a connection held by this instance only (never forwards)."""
        link = self.live.get(node.id)
        if link is None or link.closed or link.h2 is None:
            raise NodeFailure(node, "Agent is offline")
        if link.draining:
            raise NodeFailure(node, "Agent is draining")
        h2 = link.h2
        if h2.open_outbound_streams >= h2.remote_settings.max_concurrent_streams:
            raise NodeFailure(node, "Agent is at its tunnel limit")
        headers = target_headers(target, connect_timeout, self.allow_private)
        return await open_tunnel(link, node, headers, target, connect_timeout, who="Agent")


def target_headers(target: Target, connect_timeout: float, allow_private: bool) -> Headers:
    try:
        return connect_headers(target, connect_timeout, allow_private)
    except ValueError:
        raise GatewayError(
            Code.TARGET_UNREACHABLE,
            f"DNS lookup failed for {target.host}",
            proxy_status="dns_error",
        ) from None


async def open_tunnel(
    link: Mux, node: Node, headers: Headers, target: Target, connect_timeout: float, *, who: str
) -> Conn:
    """Open a CONNECT stream on `link` and wait for its answer: a `Conn` on the stream, or
    `NodeFailure` / the target's `GatewayError` (see the module docstring)."""
    extra: dict[str, Any] = {"peername": (target.host, target.port), "agent": node.id}
    if time.monotonic() - link.last_rx > PROBE_AFTER:
        link.probe(PROBE_TIMEOUT)
    try:
        stream = link.open_stream(headers, extra)
    except H2Error as exc:
        raise NodeFailure(node, f"{who} cannot open a tunnel: {exc}") from None
    try:
        async with asyncio.timeout(connect_timeout + ANSWER_SLACK):
            head = await stream.head
    except TimeoutError:
        stream.abort()
        raise NodeFailure(node, f"{who} did not answer in time") from None
    except BaseException:
        stream.abort()
        raise
    if head is None:
        raise NodeFailure(node, f"{who} failed the tunnel: {stream.failure}")
    answer = classify(head, target)
    if answer.bound is None:
        stream.abort()
        if answer.target_error is not None:
            raise answer.target_error
        raise NodeFailure(node, answer.node_failure)
    stream.set_extra("sockname", answer.bound)
    conn = Conn()
    stream.attach(conn)
    return conn


def build_hub(
    settings: HubSettings,
    service: AccountService,
    registry: Registry,
    *,
    allow_private: bool = False,
    shared_store: bool = False,
) -> Hub:
    """The hub for the gateway.

    `allow_private` is `[exit] allow_private`, passed on to agents for names that resolve to
    private addresses (literal ones are checked by admission). `shared_store`: several
    gateways share the store (PostgreSQL); then agent nodes left "online" are not swept to
    "offline" at start, since another instance may hold their connections.
    """
    return Hub(settings, service, registry, allow_private=allow_private, sweep=not shared_store)
