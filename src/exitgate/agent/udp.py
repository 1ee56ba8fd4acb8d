"""The agent's side of a UDP association: frames from the hub out of a UDP socket, and back.

A stream marked `exitgate-stream: udp` (hub/protocol.py) gets one UDP socket bound to the
agent's `--bind` address. Each frame from the hub (hub/udp_frames.py) is a datagram with its
destination: checked against the agent's destination policy (an IP literal here, a name's
addresses by the resolver of `net.udp_exits.DirectExit`, the same code as a direct exit) and
sent. Each datagram the socket receives goes back as a frame carrying its source address;
while the stream cannot take more (its peer's window is shut) answers are dropped, never
queued without bound. The socket closes with the stream.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from typing import Any

from exitgate.admission import DestinationPolicy
from exitgate.agent.exits import ExitPolicy
from exitgate.errors import GatewayError
from exitgate.hub.protocol import Failure, failure_headers, ok_headers, udp_allows_private
from exitgate.hub.stream import Headers, StreamTransport
from exitgate.hub.udp_frames import FrameDecoder, encode_frame
from exitgate.model import Node, NodeAttrs, NodeKind, parse_ip
from exitgate.net.dial import NodeFailure
from exitgate.net.udp_exits import SOCKET_BUFFER, DirectExit, open_direct
from exitgate.net.udp_stats import UdpStats
from exitgate.wire.socks5_udp import UdpHeaderError, parse_datagram

MAX_QUEUED = 256  # names being resolved at once, per stream
Respond = Callable[..., Any]  # the link's respond(stream, headers, end=False)


class UdpStreamRelay(asyncio.Protocol):
    """The stream's protocol: frames in → datagrams out."""

    def __init__(self, exit_: DirectExit, policy: DestinationPolicy, stats: UdpStats) -> None:
        self.exit = exit_
        self.policy = policy
        self.stats = stats
        self.stream: StreamTransport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._decoder = FrameDecoder()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.stream = transport  # type: ignore[assignment]  # a StreamTransport

    def data_received(self, data: bytes) -> None:
        for raw in self._decoder.feed(data):
            try:
                datagram = parse_datagram(raw)
            except UdpHeaderError:
                self.stats.drop("malformed")
                continue
            ip = parse_ip(datagram.target.host)
            if ip is not None:
                try:
                    self.policy.check_address(ip)
                except GatewayError:
                    self.stats.drop("denied")
                    continue
            self.exit.send(datagram.target, datagram.payload)

    def answer(self, host: str, port: int, payload: bytes) -> None:
        """A datagram from a target: back to the hub, or dropped when the stream is full."""
        stream = self.stream
        if stream is None or stream.is_closing():
            return
        if stream.get_write_buffer_size() > SOCKET_BUFFER:
            self.stats.drop("queue_full")
            return
        try:
            stream.write(encode_frame(host, port, payload))
        except ValueError:
            self.stats.drop("oversized")

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.exit.close()
        if not self.done.done():
            self.done.set_result(None)


async def serve_udp(
    respond: Respond, stream: StreamTransport, headers: Headers, policy: ExitPolicy
) -> None:
    """Open the socket, answer the stream, relay until the stream ends."""
    allow = policy.allow_private and udp_allows_private(headers)
    destinations = DestinationPolicy(allow_private=allow)
    stats = UdpStats()
    relay: UdpStreamRelay | None = None

    def deliver(host: str, port: int, payload: bytes) -> None:
        if relay is not None:
            relay.answer(host, port, payload)

    node = Node("self", NodeKind.DIRECT, NodeAttrs(), bind_address=policy.bind)
    try:
        if policy.bind:
            ipaddress.ip_address(policy.bind)
        exit_ = await open_direct(node, destinations, deliver, stats, MAX_QUEUED)
    except (NodeFailure, ValueError) as exc:
        respond(stream, failure_headers(Failure.BIND, str(exc)), end=True)
        return
    if stream.is_closing():  # the hub gave up meanwhile
        exit_.close()
        return
    respond(stream, ok_headers(exit_.bound))
    relay = UdpStreamRelay(exit_, destinations, stats)
    stream.attach(relay)
    try:
        await relay.done
    finally:
        exit_.close()
        stream.close()
