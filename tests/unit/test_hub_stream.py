"""The stream transport and the mux, over an in-memory pipe (no sockets).

A client mux (the hub's role) and a server mux (the agent's role) are joined by `Pipe`, a
transport pair that delivers on the next loop turn and honours pause_reading. Streams carry
a `Recorder` protocol that logs every callback, so the tests check the asyncio transport
contract the relay depends on: ordering, EOF, close flushing, resets, flow control.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from h2.settings import SettingCodes

from exitgate.hub.mux import Mux, MuxLimits
from exitgate.hub.stream import Headers, StreamTransport
from exitgate.net.conn import Conn, relay_until_closed

LIMITS = MuxLimits(stream_window=64 * 1024, max_frame=16_384)


class Pipe(asyncio.Transport):
    """One end of an in-memory duplex connection."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.peer: Pipe | None = None
        self.protocol: asyncio.Protocol | None = None
        self.inbox = bytearray()
        self.paused = False
        self.closed = False
        self._scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        peer = self.peer
        if self.closed or peer is None or peer.closed:
            return
        peer.inbox += data
        peer._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._deliver)

    def _deliver(self) -> None:
        self._scheduled = False
        if self.closed or self.paused or not self.inbox or self.protocol is None:
            return
        data = bytes(self.inbox)
        self.inbox.clear()
        self.protocol.data_received(data)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
        self._schedule()

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.protocol is not None:
            self.loop.call_soon(self.protocol.connection_lost, None)
        if self.peer is not None and not self.peer.closed:
            self.peer.close()

    def abort(self) -> None:
        self.close()


class Client(Mux):
    client_side = True

    def preamble_received(self, data: bytes) -> None:
        raise AssertionError("client starts in h2")


class Server(Mux):
    client_side = False

    def __init__(self, limits: MuxLimits) -> None:
        super().__init__(limits)
        self.requests: list[tuple[StreamTransport, Headers]] = []
        self.on_stream: Any = None

    def preamble_received(self, data: bytes) -> None:
        raise AssertionError("server starts in h2")

    def on_request(self, stream: StreamTransport, headers: Headers) -> None:
        self.requests.append((stream, headers))
        if self.on_stream is not None:
            self.on_stream(stream, headers)


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.data = bytearray()
        self.eof = False
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.writing_paused = 0
        self.writing_resumed = 0
        self.keep_open_on_eof = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        self.data += data

    def eof_received(self) -> bool:
        self.eof = True
        self.events.append("eof")
        return self.keep_open_on_eof

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)

    def pause_writing(self) -> None:
        self.writing_paused += 1

    def resume_writing(self) -> None:
        self.writing_resumed += 1


CONNECT: Headers = [(b":method", b"CONNECT"), (b":authority", b"example.test:443")]
OK: Headers = [(b":status", b"200")]


async def pair(limits: MuxLimits = LIMITS) -> tuple[Client, Server, Pipe, Pipe]:
    loop = asyncio.get_running_loop()
    a, b = Pipe(loop), Pipe(loop)
    a.peer, b.peer = b, a
    client, server = Client(limits), Server(limits)
    a.protocol, b.protocol = client, server
    client.connection_made(a)
    server.connection_made(b)
    server.start_h2()
    client.start_h2()
    await settle()
    return client, server, a, b


async def settle(turns: int = 20) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


async def open_tunnel(
    client: Client, server: Server
) -> tuple[StreamTransport, Recorder, StreamTransport, Recorder]:
    """A stream with a Recorder on each end, answered 200."""
    far = Recorder()

    def answer(stream: StreamTransport, headers: Headers) -> None:
        server.respond(stream, OK)
        stream.attach(far)

    server.on_stream = answer
    stream = client.open_stream(CONNECT, {"peername": ("example.test", 443)})
    head = await asyncio.wait_for(stream.head, 2)
    assert head is not None and dict(head)[b":status"] == b"200"
    near = Recorder()
    stream.attach(near)
    server_stream = server.requests[-1][0]
    return stream, near, server_stream, far


async def test_bytes_both_ways_then_eof_and_lost() -> None:
    client, server, _, _ = await pair()
    stream, near, far_stream, far = await open_tunnel(client, server)
    assert dict(server.requests[0][1])[b":authority"] == b"example.test:443"
    stream.write(b"hello ")
    stream.write(b"agent")
    far_stream.write(b"hello gateway")
    await settle()
    assert bytes(far.data) == b"hello agent"
    assert bytes(near.data) == b"hello gateway"
    assert stream.get_extra_info("peername") == ("example.test", 443)
    stream.write_eof()
    await settle()
    assert far.eof and not near.eof
    far_stream.write(b"after half-close")  # the other direction still flows
    far_stream.write_eof()
    await settle()
    assert bytes(near.data).endswith(b"after half-close")
    assert near.eof
    # both directions ended: both ends are done
    assert await asyncio.wait_for(near.lost, 2) is None
    assert await asyncio.wait_for(far.lost, 2) is None
    assert near.events == ["made", "eof", "lost"]
    assert not client.streams and not server.streams


async def test_paused_reader_closes_the_window_and_resumes_in_order() -> None:
    client, server, _, _ = await pair()
    stream, near, far_stream, far = await open_tunnel(client, server)
    stream.set_write_buffer_limits(high=128 * 1024)
    far_stream.pause_reading()
    payload = os.urandom(1024 * 1024)
    for i in range(0, len(payload), 32 * 1024):
        stream.write(payload[i : i + 32 * 1024])
    await settle(50)
    # the far end read nothing; at most one window is in flight, the rest waits at the sender
    assert len(far.data) == 0
    assert stream.get_write_buffer_size() >= len(payload) - LIMITS.stream_window
    assert near.writing_paused == 1 and near.writing_resumed == 0
    far_stream.resume_reading()
    for _ in range(200):
        await settle()
        if len(far.data) == len(payload):
            break
    assert bytes(far.data) == payload
    assert stream.get_write_buffer_size() == 0
    assert near.writing_resumed == 1


async def test_close_flushes_then_ends_and_resets() -> None:
    client, server, _, _ = await pair()
    stream, near, far_stream, far = await open_tunnel(client, server)
    far_stream.pause_reading()
    payload = os.urandom(300 * 1024)
    stream.write(payload)
    stream.close()
    assert stream.is_closing()
    stream.write(b"ignored after close")
    await settle(50)
    assert not near.lost.done()  # still flushing: the far end has not opened its window
    far_stream.resume_reading()
    assert await asyncio.wait_for(near.lost, 2) is None
    await asyncio.wait_for(far.lost, 2)
    assert bytes(far.data) == payload
    assert far.eof  # END_STREAM came before the reset, so it is a graceful end


async def test_abort_resets_the_peer() -> None:
    client, server, _, _ = await pair()
    stream, near, far_stream, far = await open_tunnel(client, server)
    stream.abort()
    exc = await asyncio.wait_for(far.lost, 2)
    assert isinstance(exc, ConnectionResetError)
    assert await asyncio.wait_for(near.lost, 2) is None
    assert not far.eof
    far_stream.write(b"nobody listens")  # harmless after the reset


async def test_connection_loss_fails_every_stream_and_pending_head() -> None:
    client, server, a, _ = await pair()
    _, near1, _, _ = await open_tunnel(client, server)
    _, near2, _, _ = await open_tunnel(client, server)
    server.on_stream = None  # the third stream gets no answer
    pending = client.open_stream(CONNECT, {})
    await settle()
    a.close()
    for rec in (near1, near2):
        assert isinstance(await asyncio.wait_for(rec.lost, 2), ConnectionResetError)
    assert await asyncio.wait_for(pending.head, 2) is None
    assert "connection" in pending.failure
    assert client.closed and server.closed


async def test_a_failing_protocol_aborts_only_its_stream() -> None:
    client, server, _, _ = await pair()
    s1, near1, far1, _ = await open_tunnel(client, server)
    s2, _near2, _far2, far_ok = await open_tunnel(client, server)

    def boom(data: bytes) -> None:
        raise RuntimeError("handler bug")

    near1.data_received = boom  # type: ignore[method-assign]
    far1.write(b"x")
    s2.write(b"still fine")
    await settle()
    assert s1.is_closing()
    assert bytes(far_ok.data) == b"still fine"
    assert not client.closed


async def test_peer_reset_before_answer_is_reported() -> None:
    client, server, _, _ = await pair()
    server.on_stream = lambda stream, headers: server.refuse(stream)
    stream = client.open_stream(CONNECT, {})
    assert await asyncio.wait_for(stream.head, 2) is None
    assert "code 7" in stream.failure  # REFUSED_STREAM


async def test_max_concurrent_streams_zero_reaches_the_client() -> None:
    client, server, _, _ = await pair()
    seen: list[dict[int, int]] = []
    client.on_settings = seen.append  # type: ignore[method-assign]
    server.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 0})
    await settle()
    assert seen and seen[-1][SettingCodes.MAX_CONCURRENT_STREAMS] == 0


async def test_splice_between_two_streams_is_byte_exact() -> None:
    """The relay's own `splice` between two stream transports: A's bytes come out of B."""
    client, server, _, _ = await pair()
    conns: list[Conn] = []

    def answer(stream: StreamTransport, headers: Headers) -> None:
        server.respond(stream, OK)
        conn = Conn()
        stream.attach(conn)
        conns.append(conn)

    server.on_stream = answer
    a = client.open_stream(CONNECT, {})
    b = client.open_stream(CONNECT, {})
    await asyncio.wait_for(asyncio.gather(a.head, b.head), 2)
    relay = asyncio.get_running_loop().create_task(relay_until_closed(conns[0], conns[1]))
    sink = Recorder()
    b.attach(sink)
    source = Recorder()
    a.attach(source)
    payload = os.urandom(3 * 1024 * 1024)
    for i in range(0, len(payload), 256 * 1024):
        a.write(payload[i : i + 256 * 1024])
    a.write_eof()
    for _ in range(2000):
        await asyncio.sleep(0)
        if sink.eof:
            break
    assert sink.eof
    assert bytes(sink.data) == payload
    b.close()
    await asyncio.wait_for(relay, 2)


@pytest.mark.parametrize("size", [1, 16_383, 16_384, 16_385, 100_000])
async def test_frame_boundaries(size: int) -> None:
    client, server, _, _ = await pair()
    stream, _, _, far = await open_tunnel(client, server)
    payload = os.urandom(size)
    stream.write(payload)
    await settle(30)
    assert bytes(far.data) == payload
