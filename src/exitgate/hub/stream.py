"""`StreamTransport`: one HTTP/2 stream seen as an `asyncio.Transport`.

Theory of operation. The relay (`net.conn.splice`) moves bytes between two `Conn` protocols
through their transports and relies on asyncio's flow-control contract. This class keeps that
contract over one h2 stream of a `Mux`, so a tunnel through an agent is spliced exactly like a
TCP connection:

- `write` queues bytes; the mux sends them as DATA frames within the peer's flow-control
  windows. Past the high-water mark the protocol gets `pause_writing`, and `resume_writing`
  once the queue drains below the low-water mark (asyncio's defaults and semantics).
- Received DATA goes to `protocol.data_received` and is *acknowledged* (the window handed
  back to the peer) only then. While the protocol has paused reading, DATA stays queued
  unacknowledged, so the peer's window closes and it stops sending: the queue is bounded by
  the window we advertised, never by how fast the peer is.
- `write_eof` sends END_STREAM after the queued bytes; END_STREAM received is `eof_received`.
- `close` flushes, ends the stream, and resets it (CANCEL) when the peer is still sending:
  "no more data will be received". `abort` resets at once. `connection_lost` follows both,
  on the next loop turn, as asyncio does.
- A peer's RST_STREAM, or the loss of the whole connection, ends the stream: bytes already
  received are still handed over, then `connection_lost`. A reset that arrives after the
  peer's END_STREAM is a graceful close (the peer said all it had to say).

The owning mux is reached through the small `StreamOwner` protocol, so this module knows
nothing of h2.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Final, Protocol, cast

log = logging.getLogger("exitgate.hub.stream")

DEFAULT_HIGH_WATER: Final = 64 * 1024
LINGER: Final = 30.0  # seconds a closing stream may wait for the peer's window, then reset
CANCEL: Final = 0x8  # RFC 9113 error code


class StreamOwner(Protocol):
    def stream_pump(self, stream: StreamTransport) -> None:
        """Send what `stream` has queued (and its END_STREAM) as far as windows allow."""

    def stream_ack(self, stream_id: int, size: int) -> None:
        """`size` flow-controlled bytes of `stream_id` were consumed."""

    def stream_reset(self, stream_id: int, code: int) -> None: ...

    def stream_forget(self, stream_id: int) -> None: ...


Headers = list[tuple[bytes, bytes]]


class StreamTransport(asyncio.Transport):
    __slots__ = (
        "_closed",
        "_closing",
        "_ended",
        "_eof_delivered",
        "_eof_wanted",
        "_high",
        "_in",
        "_in_eof",
        "_info",
        "_linger",
        "_loop",
        "_low",
        "_out",
        "_out_size",
        "_owner",
        "_protocol",
        "_reading_paused",
        "_reset_by_peer",
        "_write_paused",
        "failure",
        "head",
        "stream_id",
    )

    def __init__(
        self,
        owner: StreamOwner,
        stream_id: int,
        loop: asyncio.AbstractEventLoop,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self._info: dict[str, Any] = extra if extra is not None else {}
        self._owner = owner
        self._loop = loop
        self.stream_id = stream_id
        self._protocol: asyncio.Protocol | None = None
        self._in: deque[tuple[bytes, int]] = deque()  # (data, flow-controlled length)
        self._in_eof = False  # END_STREAM received (maybe not yet delivered)
        self._eof_delivered = False
        self._reading_paused = False
        self._out: deque[memoryview] = deque()
        self._out_size = 0
        self._eof_wanted = False  # write_eof or close asked for END_STREAM
        self._ended = False  # END_STREAM sent
        self._closing = False
        self._closed = False  # finished; connection_lost scheduled
        self._reset_by_peer = False
        self._high = DEFAULT_HIGH_WATER
        self._low = DEFAULT_HIGH_WATER // 4
        self._write_paused = False
        self._linger: asyncio.TimerHandle | None = None
        # The response head (client side) or None when the stream failed before one came.
        self.head: asyncio.Future[Headers | None] = loop.create_future()
        self.failure = ""

    # -- asyncio.Transport: protocol ---------------------------------------------------------
    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = cast(asyncio.Protocol, protocol)  # a stream protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        if self._protocol is None:
            raise RuntimeError("stream has no protocol yet")
        return self._protocol

    def attach(self, protocol: asyncio.Protocol) -> None:
        """Give the stream its protocol: `connection_made`, then whatever already arrived."""
        self._protocol = protocol
        if not self._guard(protocol.connection_made, self):
            return
        if self._closed:
            self._loop.call_soon(self._call_lost, protocol, ConnectionResetError(self.failure))
            return
        self._deliver()

    # -- asyncio.Transport: reading ----------------------------------------------------------
    def is_reading(self) -> bool:
        return not self._reading_paused and not self._closing

    def pause_reading(self) -> None:
        if not self._closing:
            self._reading_paused = True

    def resume_reading(self) -> None:
        if self._closing or not self._reading_paused:
            return
        self._reading_paused = False
        self._deliver()

    # -- asyncio.Transport: writing ----------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data or self._closing or self._eof_wanted:
            return
        chunk = memoryview(data if isinstance(data, bytes) else bytes(data))
        self._out.append(chunk)
        self._out_size += len(chunk)
        self._owner.stream_pump(self)
        if not self._write_paused and self._out_size > self._high and not self._closing:
            self._write_paused = True
            if self._protocol is not None:
                self._guard(self._protocol.pause_writing)

    def write_eof(self) -> None:
        if self._closing or self._eof_wanted:
            return
        self._eof_wanted = True
        self._owner.stream_pump(self)

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return self._out_size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = 4 * low if low is not None else DEFAULT_HIGH_WATER
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low

    # -- asyncio.Transport: closing ----------------------------------------------------------
    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._eof_wanted = True
        self._drop_inbound()
        self._owner.stream_pump(self)  # flushes, sends END_STREAM, then calls _pumped
        if not self._closed and self._out_size:
            self._linger = self._loop.call_later(LINGER, self.abort)

    def abort(self) -> None:
        if self._closed:
            return
        self._closing = True
        self._drop_outbound()
        self._drop_inbound()
        if not (self._ended and self._in_eof) and not self._reset_by_peer:
            self._owner.stream_reset(self.stream_id, CANCEL)
        self._finish(None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._info.get(name, default)

    def set_extra(self, name: str, value: Any) -> None:
        self._info[name] = value

    # -- called by the mux -------------------------------------------------------------------
    @property
    def pending_out(self) -> int:
        return self._out_size

    @property
    def wants_end(self) -> bool:
        return self._eof_wanted and not self._ended and not self._out_size

    def take(self, limit: int) -> memoryview | bytes:
        """Up to `limit` queued bytes, coalescing small writes into one frame."""
        first = self._out[0]
        if len(first) > limit:
            self._out[0] = first[limit:]
            self._out_size -= limit
            return first[:limit]
        self._out.popleft()
        taken = len(first)
        if not self._out or taken + len(self._out[0]) > limit:
            self._out_size -= taken
            return first
        parts = [first]
        while self._out and taken + len(self._out[0]) <= limit:
            piece = self._out.popleft()
            parts.append(piece)
            taken += len(piece)
        self._out_size -= taken
        return b"".join(parts)

    def ended(self) -> None:
        """The mux sent END_STREAM."""
        self._ended = True

    def pumped(self) -> None:
        """After the mux sent what it could: low-water mark, and the end of a close."""
        if self._write_paused and self._out_size <= self._low:
            self._write_paused = False
            if self._protocol is not None and not self._closed:
                self._guard(self._protocol.resume_writing)
        if self._closed:
            return
        if self._closing and self._ended:
            if not self._in_eof and not self._reset_by_peer:
                self._owner.stream_reset(self.stream_id, CANCEL)  # stop the peer sending
            self._finish(None)
        elif self._ended and self._eof_delivered:
            self._finish(None)  # both directions ended: the stream is done

    def feed(self, data: bytes, flow: int) -> None:
        if self._closing:
            self._owner.stream_ack(self.stream_id, flow)  # nobody reads: keep the window open
            return
        protocol = self._protocol
        if not self._in and protocol is not None and not self._reading_paused:
            self._owner.stream_ack(self.stream_id, flow)
            if data:
                self._guard(protocol.data_received, data)
            return
        self._in.append((data, flow))

    def feed_eof(self) -> None:
        self._in_eof = True
        if not self._closing:
            self._deliver()

    def peer_reset(self, code: int) -> None:
        """RST_STREAM from the peer: hand over what came, then end."""
        if self._closed:
            return
        self._reset_by_peer = True
        self._drop_outbound()
        self.failure = self.failure or f"stream reset by the agent (code {code})"
        self._deliver(force=True)
        graceful = self._in_eof
        self._finish(None if graceful else ConnectionResetError(self.failure))

    def lost(self, reason: str) -> None:
        """The whole connection is gone."""
        if self._closed:
            return
        self._reset_by_peer = True  # nothing can be sent any more
        self._drop_outbound()
        self.failure = self.failure or reason
        self._deliver(force=True, ack=False)
        self._finish(ConnectionResetError(reason))

    # -- internals ---------------------------------------------------------------------------
    def _deliver(self, *, force: bool = False, ack: bool = True) -> None:
        protocol = self._protocol
        if protocol is None or self._closed:
            return
        while self._in and (force or (not self._reading_paused and not self._closing)):
            data, flow = self._in.popleft()
            if ack:
                self._owner.stream_ack(self.stream_id, flow)
            if data and not self._guard(protocol.data_received, data):
                return
        if (
            self._in_eof
            and not self._in
            and not self._eof_delivered
            and (force or (not self._reading_paused and not self._closing))
        ):
            self._eof_delivered = True
            try:
                keep = protocol.eof_received()
            except Exception:
                log.exception("stream %d: protocol eof_received failed", self.stream_id)
                self.abort()
                return
            if force or self._closed:
                return
            if not keep:
                self.close()
            elif self._ended and not self._out_size:
                self._finish(None)

    def _drop_inbound(self) -> None:
        while self._in:
            _, flow = self._in.popleft()
            self._owner.stream_ack(self.stream_id, flow)

    def _drop_outbound(self) -> None:
        self._out.clear()
        self._out_size = 0

    def _finish(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._closing = True
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self._owner.stream_forget(self.stream_id)
        if not self.head.done():
            self.head.set_result(None)
        protocol = self._protocol
        if protocol is not None:
            self._loop.call_soon(self._call_lost, protocol, exc)

    @staticmethod
    def _call_lost(protocol: asyncio.BaseProtocol, exc: Exception | None) -> None:
        try:
            protocol.connection_lost(exc)
        except Exception:
            log.exception("stream protocol connection_lost failed")

    def _guard(self, method: Any, *args: Any) -> bool:
        """Call a protocol method; a failing protocol aborts its own stream, not the mux."""
        try:
            method(*args)
        except Exception:
            log.exception("stream %d: protocol callback failed", self.stream_id)
            self.abort()
            return False
        return True
