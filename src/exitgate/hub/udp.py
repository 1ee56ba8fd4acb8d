"""The agent exit of a UDP association, hub side: datagrams framed over one HTTP/2 stream.

`open_agent_udp` opens a stream marked `exitgate-stream: udp` (protocol.udp_headers) on the
agent's link and waits for its answer (200 with `exitgate-bound`, the agent's UDP socket).
Then `AgentUdpExit` is the stream's protocol: `send` writes one frame (hub.udp_frames) per
datagram, each frame received is one answer for the client. The stream's own flow control
bounds what is in flight: past `SOCKET_BUFFER` queued bytes, or while the stream has paused
us, datagrams are dropped (UDP semantics) rather than queued. Any failure to open is a node
failure: there is no target to blame yet.
"""

from __future__ import annotations

import asyncio
from typing import Any

from h2.exceptions import H2Error

from exitgate.hub.protocol import classify, udp_headers
from exitgate.hub.server import ANSWER_SLACK, Hub
from exitgate.hub.stream import StreamTransport
from exitgate.hub.udp_frames import FrameDecoder, encode_frame
from exitgate.model import Node, Target
from exitgate.net.dial import NodeFailure
from exitgate.net.udp_exits import SOCKET_BUFFER, Deliver, Tick, no_tick
from exitgate.net.udp_stats import UdpStats
from exitgate.wire.socks5_udp import UdpHeaderError, parse_datagram

_NO_TARGET = Target("udp", 0)


class AgentUdpExit(asyncio.Protocol):
    def __init__(self, deliver: Deliver, stats: UdpStats) -> None:
        self.deliver = deliver
        self.stats = stats
        self.sent: Tick = no_tick
        self.bound: tuple[str, int] = ("", 0)
        self.stream: StreamTransport | None = None
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._decoder = FrameDecoder()
        self._paused = False

    # -- asyncio.Protocol over the stream ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.stream = transport  # type: ignore[assignment]  # always a StreamTransport

    def data_received(self, data: bytes) -> None:
        for raw in self._decoder.feed(data):
            try:
                datagram = parse_datagram(raw)
            except UdpHeaderError:
                self.stats.drop("malformed")
                continue
            self.deliver(datagram.target.host, datagram.target.port, datagram.payload)

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(f"agent UDP stream ended{f': {exc}' if exc else ''}")

    # -- the exit contract -----------------------------------------------------------------------
    def send(self, target: Target, payload: bytes) -> None:
        stream = self.stream
        if stream is None or stream.is_closing():
            return
        if self._paused or stream.get_write_buffer_size() > SOCKET_BUFFER:
            self.stats.drop("queue_full")
            return
        try:
            frame = encode_frame(target.host, target.port, payload)
        except ValueError:
            self.stats.drop("oversized")
            return
        stream.write(frame)
        self.sent(len(payload))

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
        if not self.closed.done():
            self.closed.set_result("closed")


async def open_agent_udp(
    hub: Hub, node: Node, connect_timeout: float, deliver: Deliver, stats: UdpStats
) -> AgentUdpExit:
    link = hub.live.get(node.id)
    if link is None or link.closed or link.h2 is None:
        raise NodeFailure(node, "Agent is offline")
    if link.draining:
        raise NodeFailure(node, "Agent is draining")
    h2 = link.h2
    if h2.open_outbound_streams >= h2.remote_settings.max_concurrent_streams:
        raise NodeFailure(node, "Agent is at its tunnel limit")
    extra: dict[str, Any] = {"agent": node.id}
    try:
        stream = link.open_stream(udp_headers(hub.allow_private), extra)
    except H2Error as exc:
        raise NodeFailure(node, f"Agent cannot open a UDP stream: {exc}") from None
    try:
        async with asyncio.timeout(connect_timeout + ANSWER_SLACK):
            head = await stream.head
    except TimeoutError:
        stream.abort()
        raise NodeFailure(node, "Agent did not answer in time") from None
    except BaseException:
        stream.abort()
        raise
    if head is None:
        raise NodeFailure(node, f"Agent failed the UDP stream: {stream.failure}")
    answer = classify(head, _NO_TARGET)
    if answer.bound is None:
        stream.abort()
        raise NodeFailure(node, answer.node_failure or "Agent refused the UDP stream")
    exit_ = AgentUdpExit(deliver, stats)
    exit_.bound = answer.bound
    stream.attach(exit_)
    return exit_
