"""The agent: dial the hub, register, serve tunnels, reconnect, drain.

Theory of operation. `Agent.run` is one loop: (re)learn the attributes when a checker is
configured, dial the hub, send the hello, wait for `OK`, then serve the HTTP/2 connection as
the h2 *server* (the hub opens one CONNECT stream per tunnel; see hub/protocol.py) until it
ends, then wait a jittered, exponentially growing delay and start over. A refusal for a wrong
token or invalid attributes is permanent: the agent stops with exit code 1 instead of
hammering the hub.

Each tunnel: connect to the target from `--bind` (agent/exits.py), answer 200 or the failure
kind, then `splice` the stream's `Conn` with the target's `Conn`: the same relay as the
gateway's, over the stream transport (hub/stream.py), so DATA is acknowledged only as the
target socket takes the bytes.

Liveness (hub/keepalive.py): the agent PINGs a hub silent for `ping_interval` (15 s) and gives
up on one silent for `silence_timeout` (30 s). The hub's own keepalive (10 s by default) is
shorter, so against a live hub its PINGs keep this side quiet: one round trip per hub
interval per agent, whoever starts it. Draining (SIGTERM): announce
MAX_CONCURRENT_STREAMS 0 (the hub stops opening tunnels and marks the node offline; h2's
GOAWAY would kill the open streams), refuse stragglers with REFUSED_STREAM (the gateway picks
another node), let open tunnels finish up to `drain_timeout`, then close and exit 0. A second
signal stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from dataclasses import dataclass, field, replace
from typing import Final

from h2.errors import ErrorCodes
from h2.settings import SettingCodes

from exitgate import __version__
from exitgate.agent.exits import ExitFailure, ExitPolicy, open_target
from exitgate.agent.identity import Flags, Learned, learn, merge, with_ip
from exitgate.agent.udp import serve_udp
from exitgate.hub.mux import Mux, MuxLimits
from exitgate.hub.protocol import (
    MAX_HELLO,
    ConnectRequest,
    Failure,
    Hello,
    RefusalKind,
    Reply,
    encode_hello,
    failure_headers,
    is_udp,
    ok_headers,
    parse_connect,
    parse_reply,
)
from exitgate.hub.stream import Headers, StreamTransport
from exitgate.model import NodeAttrs
from exitgate.net.conn import Conn, relay_until_closed
from exitgate.settings import split_hostport
from exitgate.tasks import spawn

log = logging.getLogger("exitgate.agent")

CONNECT_TIMEOUT: Final = 10.0  # TCP (and TLS) connect
# The hub's answer once connected: a hub busy with a reconnect burst (a restart) queues
# hellos; an agent leaving the queue to retry later only makes the burst last longer.
REPLY_TIMEOUT: Final = 30.0
AGENT_LIMITS: Final = MuxLimits(ping_interval=15.0, silence_timeout=30.0)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    hub: str  # host:port
    token: str
    agent_id: str
    flags: Flags = field(default_factory=Flags)
    bind: str = ""
    checker: str = ""
    tls: ssl.SSLContext | None = None
    allow_private: bool = False
    max_streams: int = 1024
    max_connect_timeout: float = 30.0
    drain_timeout: float = 30.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    limits: MuxLimits = AGENT_LIMITS


def backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential with "equal jitter": half the ceiling plus a random half."""
    ceiling = min(cap, base * 2.0 ** min(attempt, 30))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


class HubLink(Mux):
    """The agent's connection to the hub (h2 server side)."""

    __slots__ = ("_buf", "_hello", "agent", "done", "reply")
    client_side = False

    def __init__(self, agent: Agent, hello: bytes) -> None:
        super().__init__(agent.limits)
        self.agent = agent
        self._hello = hello
        self._buf = bytearray()
        self.reply: asyncio.Future[Reply] = self.loop.create_future()
        self.done: asyncio.Future[str] = self.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.transport is not None:
            self.transport.write(self._hello)

    def preamble_received(self, data: bytes) -> None:
        if self.reply.done():
            return
        self._buf += data
        end = self._buf.find(b"\n")
        if end < 0:
            if len(self._buf) > MAX_HELLO:
                self.fail("garbled hub reply")
            return
        reply = parse_reply(bytes(self._buf[:end]))
        rest = bytes(self._buf[end + 1 :])
        self._buf = bytearray()
        self.reply.set_result(reply)
        if reply.ok:
            self.start_h2(rest)
        else:
            self.fail(f"refused: {reply.reason}")

    def on_request(self, stream: StreamTransport, headers: Headers) -> None:
        self.agent.handle(self, stream, headers)

    def dead(self, reason: str) -> None:
        log.warning("hub connection dead: %s", reason)
        self.fail(reason, hard=True)

    def on_closed(self, reason: str) -> None:
        if not self.reply.done():
            why = f"closed before the hub answered: {reason}"
            self.reply.set_result(Reply(False, kind=RefusalKind.BUSY, reason=why))
        if not self.done.done():
            self.done.set_result(reason)


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.limits = replace(config.limits, max_streams=config.max_streams)
        self.policy = ExitPolicy(bind=config.bind, allow_private=config.allow_private)
        self.attrs: NodeAttrs = merge(config.flags, None)
        self.ip = config.bind
        self.link: HubLink | None = None
        self.tunnels: set[asyncio.Task[None]] = set()
        self.draining = False
        self.registered = asyncio.Event()
        self._wake = asyncio.Event()

    # -- the loop --------------------------------------------------------------------------------
    async def run(self) -> int:
        """Serve until drained (0) or refused for good (1)."""
        attempt = 0
        while not self.draining:
            await self._learn()
            outcome = await self._session()
            if outcome == "fatal":
                return 1
            if self.draining:
                break
            if outcome == "registered":
                attempt = 0
            delay = backoff(attempt, self.config.backoff_base, self.config.backoff_cap)
            attempt += 1
            log.info("reconnecting in %.1f s", delay)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
        return 0

    async def _learn(self) -> None:
        config = self.config
        if not config.checker:
            return
        learned: Learned | None = None
        try:
            learned = await learn(config.checker, config.bind)
        except (OSError, ValueError) as exc:
            log.warning("cannot learn attributes from the checker: %s", exc)
            return
        self.attrs = merge(config.flags, learned)
        self.ip = with_ip(learned, config.bind)

    async def _session(self) -> str:
        config = self.config
        host, port = split_hostport(config.hub)
        hello = encode_hello(
            Hello(config.token, config.agent_id, self.attrs, self.ip, __version__)
        )
        loop = asyncio.get_running_loop()
        link: HubLink | None = None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                _, link = await loop.create_connection(
                    lambda: HubLink(self, hello),
                    host,
                    port,
                    ssl=config.tls,
                    server_hostname=host if config.tls is not None else None,
                )
            async with asyncio.timeout(REPLY_TIMEOUT):
                reply = await link.reply
        except (OSError, TimeoutError) as exc:
            log.warning("hub %s unreachable: %s", config.hub, str(exc) or type(exc).__name__)
            if link is not None:
                link.fail("no answer", hard=True)
            return "retry"
        if not reply.ok:
            permanent = reply.kind in (RefusalKind.AUTH, RefusalKind.INVALID)
            log.error("hub %s refused this agent: %s", config.hub, reply.reason)
            return "fatal" if permanent else "retry"
        log.info(
            "registered with hub %s as %s (address the hub sees: %s)",
            config.hub, reply.agent_id, reply.ip,
        )
        self.link = link
        self.registered.set()
        try:
            await self._serve(link)
        finally:
            self.link = None
            self.registered.clear()
        return "registered"

    async def _serve(self, link: HubLink) -> None:
        await asyncio.shield(link.done)  # the link's keepalive ends it if the hub goes silent
        if not self.draining:
            log.warning("connection to the hub lost: %s", link.failure)

    # -- tunnels ---------------------------------------------------------------------------------
    def handle(self, link: HubLink, stream: StreamTransport, headers: Headers) -> None:
        if self.draining:
            link.refuse(stream)
            return
        if is_udp(headers):  # a UDP association's datagrams (agent/udp.py)
            udp = serve_udp(link.respond, stream, headers, self.policy)
            task = spawn(udp, f"agent-udp-{stream.stream_id}")
            self.tunnels.add(task)
            task.add_done_callback(self.tunnels.discard)
            return
        try:
            request = parse_connect(headers, self.config.max_connect_timeout)
        except ValueError as exc:
            link.respond(stream, failure_headers(Failure.BAD_REQUEST, str(exc)), end=True)
            return
        task = spawn(self._tunnel(link, stream, request), f"agent-tunnel-{stream.stream_id}")
        self.tunnels.add(task)
        task.add_done_callback(self.tunnels.discard)

    async def _tunnel(
        self, link: HubLink, stream: StreamTransport, request: ConnectRequest
    ) -> None:
        try:
            target = await open_target(request, self.policy)
        except ExitFailure as exc:
            log.debug("tunnel to %s failed: %s %s", request.target.authority, exc.kind, exc.detail)
            link.respond(stream, failure_headers(exc.kind, exc.detail), end=True)
            return
        if stream.is_closing():  # the hub gave up meanwhile
            target.abort()
            return
        link.respond(stream, ok_headers(target.sockname))
        conn = Conn()
        stream.attach(conn)
        try:
            await relay_until_closed(conn, target)
        finally:
            conn.close()
            target.close()

    # -- stopping --------------------------------------------------------------------------------
    def drain(self) -> None:
        """First call: stop taking tunnels, finish the open ones, exit. Second: stop now."""
        if self.draining:
            self.stop_now()
            return
        self.draining = True
        self._wake.set()
        link = self.link
        if link is None or link.closed:
            return
        log.info("draining: %d open tunnel(s), no new ones", len(self.tunnels))
        link.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 0})
        spawn(self._finish_drain(link), "agent-drain")

    async def _finish_drain(self, link: HubLink) -> None:
        deadline = time.monotonic() + self.config.drain_timeout
        while self.tunnels and not link.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("drain timeout: closing %d tunnel(s)", len(self.tunnels))
                break
            await asyncio.wait(set(self.tunnels), timeout=left)
        link.fail("agent stopped", goaway=ErrorCodes.NO_ERROR)

    def stop_now(self) -> None:
        self.draining = True
        self._wake.set()
        for task in list(self.tunnels):
            task.cancel()
        if self.link is not None:
            self.link.fail("agent stopped", goaway=ErrorCodes.NO_ERROR)
