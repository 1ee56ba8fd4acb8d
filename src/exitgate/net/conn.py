"""`Conn`: one TCP connection, driven two ways.

Theory of operation. A proxied connection spends a few round trips in a handshake (an HTTP
head, a SOCKS5 negotiation, an upstream proxy's answer) and then, usually, its whole life as a
byte pump. The two phases want different machinery:

- *Read mode* (handshakes): bytes accumulate in `buffer`; the handler awaits `read_more()` and
  hands the buffer to a sans-IO core, which decides whether a message is complete. The buffer is
  bounded: past `max_buffer` the transport stops reading until the handler consumes.
- *Relay mode* (`splice`): `data_received` writes each chunk straight into the peer's
  transport. No coroutine, no queue, no copy beyond the kernel's: the event loop calls us, we
  call `transport.write`. Backpressure is the transports' own flow control: when the peer's
  write buffer passes its high-water mark the loop calls the peer's `pause_writing`, which
  pauses reading on this side, and `resume_writing` resumes it. A half-close (EOF) is passed on
  with `write_eof`; the pair closes once both directions ended or either side is lost.

Each direction's bytes go to an optional `tap` on the receiving side, called per chunk for
live metering (traffic caps), so nothing is counted twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from exitgate.net.deadline import Wheel, bucket_of, wheel_of

MAX_BUFFER = 256 * 1024
WRITE_HIGH_WATER = 512 * 1024


class ConnectionClosed(Exception):
    """The peer went away while a handshake still needed bytes from it."""


class Conn(asyncio.Protocol):
    __slots__ = (
        "_deadline_at",
        "_deadline_slot",
        "_drain_waiter",
        "_on_made",
        "_paused_reading",
        "_peername",
        "_read_waiter",
        "_writing_paused",
        "buffer",
        "closed",
        "eof",
        "expired",
        "on_lost",
        "on_ready",
        "peer",
        "proxied",
        "tap",
        "transport",
        "wheel",
    )

    def __init__(self, on_made: Callable[[Conn], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.closed = False
        self.expired = False  # aborted by its deadline (see `set_deadline`)
        self.peer: Conn | None = None
        # the client named by a PROXY protocol header (a load balancer in front): it stands
        # for the socket's peer everywhere (allowlists, logs, errors)
        self.proxied: tuple[str, int] | None = None
        self.tap: Callable[[int], None] | None = None
        self.on_lost: Callable[[], None] | None = None  # called once the connection is gone
        # called once, at the first bytes (or EOF, or loss) of read mode: the listener starts a
        # connection's handler only then, already holding its first bytes (no task and no read
        # wait for a connection that has sent nothing yet)
        self.on_ready: Callable[[], None] | None = None
        self._on_made = on_made
        self._read_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._writing_paused = False
        self._paused_reading = False
        self._deadline_at: float | None = None
        self._deadline_slot = 0  # the wheel's bucket this connection is in; 0: none
        self.wheel: Wheel | None = None  # the loop's deadlines, once one was set
        self._peername: tuple[str, int] | None = None  # asked once: handlers read it often

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # stream sockets only
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)  # type: ignore[attr-defined]
        if self._on_made is not None:
            on_made, self._on_made = self._on_made, None
            on_made(self)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None:
            if peer.transport is not None and not peer.closed:
                peer.transport.write(data)
            if self.tap is not None:
                self.tap(len(data))
            return
        self.buffer += data
        if len(self.buffer) > MAX_BUFFER and self.transport is not None:
            self.transport.pause_reading()
            self._paused_reading = True
        self._wake_reader()
        if self.on_ready is not None:
            self._ready()

    def _ready(self) -> None:
        ready, self.on_ready = self.on_ready, None
        if ready is not None:
            ready()

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is not None:
            if peer.eof or peer.transport is None or not peer.transport.can_write_eof():
                self._close_pair()
            elif not peer.closed:
                peer.transport.write_eof()
            return True
        self._wake_reader()
        if self.on_ready is not None:
            self._ready()
        return True  # half-open: the handler decides when to close

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline_at = None
        if self._deadline_slot and self.wheel is not None:
            # let go at once: the wheel would hold the ended connection until the bucket
            self.wheel.discard(self, self._deadline_slot)
            self._deadline_slot = 0
        self.closed = True
        self.eof = True
        self._wake_reader()
        if self.on_ready is not None:
            self._ready()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.on_lost is not None:
            on_lost, self.on_lost = self.on_lost, None
            on_lost()
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            peer.transport.close()  # flushes what this side already sent

    def pause_writing(self) -> None:
        self._writing_paused = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            peer.transport.resume_reading()

    # -- deadlines --------------------------------------------------------------------------
    def set_deadline(self, delay: float) -> None:
        """Abort the connection unless `clear_deadline` comes within `delay` seconds.

        Lazy, on the loop's deadline wheel (`net.deadline`): setting or clearing a deadline
        writes a float, and a set operation only when the new deadline is earlier than the
        bucket the connection already waits in; when the bucket comes, a deadline that moved
        later is put back in the wheel. Cheaper than an `asyncio.timeout` scope around every
        await, or a timer handle made and cancelled per request. An aborted connection makes
        the pending `read_more` raise `ConnectionClosed`, with `expired` set.
        """
        loop = asyncio.get_running_loop()
        wheel = self.wheel
        if wheel is None:
            wheel = self.wheel = wheel_of(loop)
        at = loop.time() + delay
        self._deadline_at = at
        slot = self._deadline_slot
        if slot == 0 or slot > bucket_of(at):
            if slot:
                wheel.discard(self, slot)
            self._deadline_slot = wheel.add(self, at)

    def clear_deadline(self) -> None:
        self._deadline_at = None

    def _deadline_due(self) -> None:
        self._deadline_slot = 0
        at = self._deadline_at
        if at is None or self.closed or self.wheel is None:
            return
        if asyncio.get_running_loop().time() >= at:
            self.expired = True
            self.abort()
        else:
            self._deadline_slot = self.wheel.add(self, at)

    # -- read mode --------------------------------------------------------------------------
    def _wake_reader(self) -> None:
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read_more(self) -> None:
        """Wait until more bytes are in `buffer`; ConnectionClosed at EOF."""
        if self.eof:
            raise ConnectionClosed
        if self._paused_reading and self.transport is not None:
            self._paused_reading = False
            self.transport.resume_reading()
        before = len(self.buffer)
        while len(self.buffer) == before:
            if self.eof:
                raise ConnectionClosed
            waiter = asyncio.get_running_loop().create_future()
            self._read_waiter = waiter
            try:
                await waiter
            finally:
                self._read_waiter = None

    def consume(self, n: int) -> None:
        del self.buffer[:n]

    # -- writing ----------------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    async def drain(self) -> None:
        if self.closed:
            raise ConnectionClosed
        if not self._writing_paused:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._drain_waiter = waiter
        try:
            await waiter
        finally:
            self._drain_waiter = None
        if self.closed:
            raise ConnectionClosed

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    @property
    def spliced(self) -> bool:
        """Handed to `splice`: the relay owns the connection now, not its handler."""
        return self.peer is not None

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()

    @property
    def sockname(self) -> tuple[str, int]:
        if self.transport is None:
            return ("", 0)
        name = self.transport.get_extra_info("sockname")
        return (str(name[0]), int(name[1])) if name else ("", 0)

    @property
    def peername(self) -> tuple[str, int]:
        if self.proxied is not None:
            return self.proxied
        known = self._peername
        if known is not None:
            return known
        if self.transport is None:
            return ("", 0)
        name = self.transport.get_extra_info("peername")
        known = (str(name[0]), int(name[1])) if name else ("", 0)
        self._peername = known
        return known

    # -- relay mode -------------------------------------------------------------------------
    def _close_pair(self) -> None:
        for side in (self, self.peer):
            if side is not None and side.transport is not None and not side.closed:
                side.transport.close()


def splice(a: Conn, b: Conn, done: Callable[[], None]) -> None:
    """Pump bytes both ways; call `done()` once both sides are closed.

    Returns at once: the pair runs on the transports' callbacks alone, with no task or
    coroutine frame kept per tunnel (an idle tunnel then costs two transports and two `Conn`s).
    Whatever sits in either read buffer (client early data, bytes that came with an upstream
    proxy's answer) is flushed to the other side first, so nothing received is lost.
    """
    remaining = 2

    def one_gone() -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0:
            # Unlinked, the pair is freed by reference counting as soon as it is let go: the
            # peer links are a reference cycle, which would leave every ended tunnel and its
            # transports to the cyclic collector. (The taps' meter lets go of its stop
            # callback, the other way back to both sides, when it closes.)
            a.peer = b.peer = None
            done()

    for side in (a, b):
        if side.closed:
            one_gone()
        else:
            side.on_lost = one_gone
    for src, dst in ((a, b), (b, a)):
        if src.buffer:
            chunk = bytes(src.buffer)
            src.buffer.clear()
            dst.write(chunk)
            if src.tap is not None:
                src.tap(len(chunk))
    a.peer, b.peer = b, a
    for side, other in ((a, b), (b, a)):
        if side.closed:
            other.close()
        elif side.eof:
            if other.eof or other.transport is None or not other.transport.can_write_eof():
                side._close_pair()
            elif not other.closed:
                other.transport.write_eof()
        if side._paused_reading and side.transport is not None and not side.closed:
            side._paused_reading = False
            side.transport.resume_reading()
        if side._writing_paused and other.transport is not None and not other.closed:
            other.transport.pause_reading()


async def relay_until_closed(a: Conn, b: Conn) -> None:
    """`splice`, awaited: for callers that track tunnels as tasks (the agent's drain)."""
    ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def done() -> None:
        if not ended.done():
            ended.set_result(None)

    splice(a, b, done)
    await ended
