"""`Mux`: one HTTP/2 connection over one transport, carrying byte streams. Both roles.

Theory of operation. The hub side (h2 client) and the agent side (h2 server) share this
class; subclasses add the hello phase (`preamble_received`) and what a new stream or response
means. The mux owns the `H2Connection` and turns its events into calls on `StreamTransport`s
(see stream.py for the transport contract); streams call back to send, acknowledge and reset.

Flow control, in both directions:
- Sending: a stream's queued bytes go out as DATA frames only while the peer's window allows,
  and only while the TCP transport has not paused us (`pause_writing`). Streams left with
  bytes are kept in `_blocked` and pumped again on WINDOW_UPDATE, a SETTINGS change, or
  `resume_writing`. A stream past its high-water mark pauses its own protocol.
- Receiving: DATA is acknowledged per stream when the stream's protocol has taken it. The
  connection window is opened to the maximum at start, so a paused stream never stalls its
  siblings (head-of-line blocking); memory stays bounded by each stream's window.

Limits against a hostile peer (`MuxLimits`, limits.py): a frame above `max_frame` is refused
at its header (`FrameGuard`), a header list above `max_header_list` is a protocol error (h2
enforces what we advertise); a flood of control
frames (PING, SETTINGS, PRIORITY, empty DATA, unknown types), of RST_STREAM or WINDOW_UPDATE
beyond a budget per `budget_window` (counted as frames arrive) ends the connection with
ENHANCE_YOUR_CALM; a TCP write buffer past `max_write_buffer` (a peer that does not read) ends
it; so does silence or an unanswered PING (keepalive.py: one timer per connection, a PING only
to a peer silent for `ping_interval`, dead after `silence_timeout`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import Any, Final

from h2.config import H2Configuration
from h2.connection import ConnectionState
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    PingAckReceived,
    RemoteSettingsChanged,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error, ProtocolError
from h2.settings import SettingCodes

from exitgate.hub.keepalive import plan
from exitgate.hub.limits import PREFACE, CountingH2, FrameGuard, Hostile, MuxLimits
from exitgate.hub.stream import Headers, StreamTransport

__all__ = ["Hostile", "Mux", "MuxLimits"]

log = logging.getLogger("exitgate.hub")

MAX_WINDOW: Final = 2**31 - 1
DEFAULT_WINDOW: Final = 65_535


_CONFIGS: Final = {
    side: H2Configuration(client_side=side, header_encoding=None, validate_inbound_headers=True)
    for side in (True, False)
}


class Mux(asyncio.Protocol):
    __slots__ = (
        "_answer_by",
        "_blocked",
        "_budget_at",
        "_dispatching",
        "_last_ping",
        "_opened",
        "_tcp_paused",
        "_timer",
        "closed",
        "failure",
        "guard",
        "h2",
        "last_rx",
        "limits",
        "loop",
        "ping_sent_at",
        "rtt",
        "started",
        "streams",
        "transport",
    )
    client_side = True

    def __init__(self, limits: MuxLimits) -> None:
        self.limits = limits
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.h2: CountingH2 | None = None
        self.guard: FrameGuard | None = None
        self.streams: dict[int, StreamTransport] = {}
        self._blocked: dict[int, StreamTransport] = {}
        self._tcp_paused = False
        self._dispatching = False
        self.closed = False
        self.failure = ""
        now = time.monotonic()
        self.started = now
        self.last_rx = now
        self._last_ping = now
        self.ping_sent_at: float | None = None
        self._answer_by: float | None = None  # an outstanding PING must be answered by then
        self.rtt = 0.0
        self._opened = 0  # streams we opened in this budget window
        self._budget_at = now  # start of the current budget window
        # the keepalive check (or, before HTTP/2 starts, whatever deadline the owner arms)
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # stream transports only

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_rx = time.monotonic()
        if self.h2 is None:
            self.preamble_received(data)
        else:
            self._receive(data)

    def eof_received(self) -> bool:
        return False  # the peer is gone: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._shutdown(self.failure or "connection lost")

    def pause_writing(self) -> None:
        self._tcp_paused = True

    def resume_writing(self) -> None:
        self._tcp_paused = False
        if self.h2 is None or self.closed:
            return
        for stream in list(self._blocked.values()):
            self._pump(stream)
        self._flush()

    # -- subclass hooks ----------------------------------------------------------------------
    def preamble_received(self, data: bytes) -> None:
        """Bytes before HTTP/2 starts (the hello line)."""
        raise NotImplementedError

    def on_request(self, stream: StreamTransport, headers: Headers) -> None:
        """A server-side stream opened by the peer."""
        stream.abort()

    def on_settings(self, changed: dict[int, int]) -> None:
        """The peer changed some of its settings (code → new value)."""

    def on_closed(self, reason: str) -> None:
        """Once, when the connection ended for any reason."""

    def dead(self, reason: str) -> None:
        """The keepalive gave up on the peer (silent, or its PING unanswered)."""
        log.warning("HTTP/2 peer dead: %s", reason)
        self.fail(reason, hard=True)

    # -- starting ------------------------------------------------------------------------------
    def start_h2(self, rest: bytes = b"") -> None:
        h2 = CountingH2(_CONFIGS[self.client_side])
        h2.initiate_connection()
        limits = self.limits
        settings: dict[SettingCodes | int, int] = {
            SettingCodes.INITIAL_WINDOW_SIZE: limits.stream_window,
            SettingCodes.MAX_FRAME_SIZE: limits.max_frame,
            SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list,
            SettingCodes.MAX_CONCURRENT_STREAMS: 0 if self.client_side else limits.max_streams,
        }
        if self.client_side:
            settings[SettingCodes.ENABLE_PUSH] = 0
        h2.update_settings(settings)
        h2.increment_flow_control_window(MAX_WINDOW - DEFAULT_WINDOW)
        self.h2 = h2
        self.guard = FrameGuard(limits.max_frame, 0 if self.client_side else len(PREFACE))
        self._flush()
        # the keepalive starts now: a hello may have waited in the hub's admission queue
        self.last_rx = time.monotonic()
        self.arm(self.last_rx + limits.ping_interval, self._keepalive)
        if rest:
            self._receive(rest)

    # -- receiving -----------------------------------------------------------------------------
    def _receive(self, data: bytes) -> None:
        h2, guard = self.h2, self.guard
        if h2 is None or guard is None:
            return
        if self.last_rx - self._budget_at >= self.limits.budget_window:
            h2.junk = h2.resets = h2.window_updates = 0
            self._opened = 0
            self._budget_at = self.last_rx
        self._dispatching = True
        try:
            guard.check(data)
            events = h2.receive_data(data)
            self._check_budget(h2)
            for event in events:
                self._dispatch(event)
        except Hostile as exc:
            self.fail(str(exc), goaway=ErrorCodes.ENHANCE_YOUR_CALM)
            return
        except ProtocolError as exc:
            # h2 has already queued a GOAWAY naming the error: send it, then go.
            self.fail(f"HTTP/2 protocol error: {exc}", goaway=None)
            return
        finally:
            self._dispatching = False
        self._flush()

    def _check_budget(self, h2: CountingH2) -> None:
        limits = self.limits
        if h2.junk > limits.control_budget:
            raise Hostile("control frame flood")
        if h2.resets > limits.reset_budget + self._opened:
            raise Hostile("RST_STREAM flood")
        if h2.window_updates > limits.window_update_budget:
            raise Hostile("WINDOW_UPDATE flood")

    def _dispatch(self, event: Event) -> None:
        streams = self.streams
        match event:
            case DataReceived():
                sid = event.stream_id or 0
                stream = streams.get(sid)
                flow = event.flow_controlled_length or 0
                if stream is None:
                    self.stream_ack(sid, flow)
                else:
                    stream.feed(event.data or b"", flow)
            case StreamEnded():
                stream = streams.get(event.stream_id or 0)
                if stream is not None:
                    stream.feed_eof()
            case WindowUpdated():
                if not event.stream_id:
                    self._pump_all()
                else:
                    stream = self._blocked.get(event.stream_id)
                    if stream is not None:
                        self._pump(stream)
            case ResponseReceived():
                stream = streams.get(event.stream_id or 0)
                if stream is not None and not stream.head.done():
                    stream.head.set_result(list(event.headers or ()))
            case RequestReceived():
                sid = event.stream_id or 0
                stream = StreamTransport(self, sid, self.loop, self.stream_extra())
                streams[sid] = stream
                self.on_request(stream, list(event.headers or ()))
            case StreamReset():
                stream = streams.get(event.stream_id or 0)
                if stream is not None:
                    stream.peer_reset(int(event.error_code or 0))
            case PingAckReceived():
                if self.ping_sent_at is not None:
                    self.rtt = time.monotonic() - self.ping_sent_at
                self.ping_sent_at = None
                self._answer_by = None
            case RemoteSettingsChanged():
                changed = {int(k): v.new_value for k, v in event.changed_settings.items()}
                if (
                    SettingCodes.INITIAL_WINDOW_SIZE in changed
                    or SettingCodes.MAX_FRAME_SIZE in changed
                ):
                    self._pump_all()
                self.on_settings(changed)
            case ConnectionTerminated():
                code = event.error_code
                self.failure = f"peer closed the connection ({getattr(code, 'name', code)})"
                self._shutdown(self.failure)
                if self.transport is not None:
                    self.transport.close()
            case _:
                pass  # pings are answered by h2; trailers, priorities and 1xx mean nothing here

    # -- sending ---------------------------------------------------------------------------------
    def _flush(self) -> None:
        h2, transport = self.h2, self.transport
        if h2 is None or transport is None or self._dispatching:
            return
        data = h2.data_to_send()
        if not data:
            return
        transport.write(data)
        if transport.get_write_buffer_size() > self.limits.max_write_buffer:
            self.fail("peer is not reading (write buffer over its cap)", goaway=None, hard=True)

    def _pump_all(self) -> None:
        for stream in list(self._blocked.values()):
            self._pump(stream)

    def _pump(self, stream: StreamTransport) -> None:
        h2 = self.h2
        if h2 is None or self.closed:
            return
        sid = stream.stream_id
        try:
            while stream.pending_out and not self._tcp_paused:
                window = h2.local_flow_control_window(sid)
                if window <= 0:
                    break
                h2.send_data(sid, stream.take(min(window, h2.max_outbound_frame_size)))
            if stream.wants_end:
                h2.end_stream(sid)
                stream.ended()
        except H2Error:
            # The stream closed under us (the peer reset it; its event comes next).
            stream.peer_reset(int(ErrorCodes.STREAM_CLOSED))
            self._blocked.pop(sid, None)
            return
        if stream.pending_out or stream.wants_end:
            self._blocked[sid] = stream
        else:
            self._blocked.pop(sid, None)
        stream.pumped()

    # -- StreamOwner -----------------------------------------------------------------------------
    def stream_pump(self, stream: StreamTransport) -> None:
        if self.closed:
            stream.lost(self.failure or "connection closed")
            return
        self._pump(stream)
        self._flush()

    def stream_ack(self, stream_id: int, size: int) -> None:
        h2 = self.h2
        if h2 is None or self.closed or size <= 0:
            return
        if h2.state_machine.state is ConnectionState.CLOSED:
            return
        h2.acknowledge_received_data(size, stream_id)
        self._flush()

    def stream_reset(self, stream_id: int, code: int) -> None:
        self._blocked.pop(stream_id, None)
        h2 = self.h2
        if h2 is None or self.closed:
            return
        try:
            h2.reset_stream(stream_id, code)
        except H2Error:
            return  # already closed
        self._flush()

    def stream_forget(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)
        self._blocked.pop(stream_id, None)

    def stream_extra(self) -> dict[str, Any]:
        """Extra info every stream starts with."""
        return {}

    # -- opening (client side) and answering (server side) ---------------------------------------
    def open_stream(self, headers: Headers, extra: dict[str, Any]) -> StreamTransport:
        """Send a request head on a new stream. H2Error when no stream can be opened."""
        h2 = self.h2
        if h2 is None or self.closed:
            raise ProtocolError("connection is not open")
        sid = h2.get_next_available_stream_id()
        h2.send_headers(sid, headers)
        self._opened += 1
        stream = StreamTransport(self, sid, self.loop, extra)
        self.streams[sid] = stream
        self._flush()
        return stream

    def respond(self, stream: StreamTransport, headers: Headers, *, end: bool = False) -> None:
        h2 = self.h2
        if h2 is None or self.closed:
            return
        try:
            h2.send_headers(stream.stream_id, headers, end_stream=end)
        except H2Error:
            stream.peer_reset(int(ErrorCodes.STREAM_CLOSED))
            return
        if end:
            stream.ended()
            stream.abort()  # nothing more to say; forget it (RST only if the peer still sends)
        self._flush()

    def refuse(self, stream: StreamTransport) -> None:
        stream.failure = "refused"
        self.stream_reset(stream.stream_id, int(ErrorCodes.REFUSED_STREAM))
        stream.peer_reset(int(ErrorCodes.REFUSED_STREAM))

    def update_settings(self, changes: dict[SettingCodes | int, int]) -> None:
        """Announce new local settings (e.g. MAX_CONCURRENT_STREAMS 0 to drain)."""
        h2 = self.h2
        if h2 is None or self.closed or h2.state_machine.state is ConnectionState.CLOSED:
            return
        h2.update_settings(changes)
        self._flush()

    # -- liveness ------------------------------------------------------------------------------
    def alive(self, now: float) -> bool:
        """Open and heard from within the silence timeout."""
        return not self.closed and now - self.last_rx <= self.limits.silence_timeout

    def arm(self, at: float, callback: Callable[[], None]) -> None:
        """Run `callback` at monotonic time `at`, instead of whatever was armed before."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(at, callback)

    def _keepalive(self) -> None:
        self._timer = None
        if self.h2 is None or self.closed:
            return
        limits = self.limits
        now = time.monotonic()
        step = plan(
            now, self.last_rx, self._last_ping, self._answer_by, busy=bool(self.streams),
            interval=limits.ping_interval, timeout=limits.silence_timeout,
        )
        if step.dead:
            self.dead(step.dead)
            return
        if step.ping:
            self._ping(now, now + limits.silence_timeout - limits.ping_interval)
        self.arm(step.next_at, self._keepalive)

    def _ping(self, now: float, answer_by: float) -> None:
        h2 = self.h2
        if h2 is None or h2.state_machine.state is ConnectionState.CLOSED:
            return
        self._last_ping = self.ping_sent_at = now
        self._answer_by = answer_by
        h2.ping(os.urandom(8))
        self._flush()

    def probe(self, within: float) -> None:
        """PING now (unless a PING is out) and give up on the peer unless something comes back
        within `within` seconds: a tunnel is waiting on a peer that has been quiet, or a
        newcomer claims its id. Cheap for a live peer; a silently dead one is found out in
        `within` instead of `silence_timeout`."""
        if self.h2 is None or self.closed:
            return
        now = time.monotonic()
        answer_by = now + within
        if self._answer_by is None:
            self._ping(now, answer_by)
        elif self._answer_by > answer_by:
            self._answer_by = answer_by
        else:
            return
        self.arm(min(answer_by, self.last_rx + self.limits.silence_timeout), self._keepalive)

    # -- ending ------------------------------------------------------------------------------------
    def fail(self, reason: str, *, goaway: ErrorCodes | None = None, hard: bool = False) -> None:
        """End the connection: GOAWAY when asked (and possible), fail every stream, close."""
        if self.closed:
            return
        self.failure = reason
        h2, transport = self.h2, self.transport
        if h2 is not None and transport is not None and not hard:
            if goaway is not None and h2.state_machine.state is not ConnectionState.CLOSED:
                h2.close_connection(goaway)
            data = h2.data_to_send()
            if data:
                transport.write(data)
        self._shutdown(reason)
        if transport is not None:
            if hard:
                transport.abort()
            else:
                transport.close()
                # a peer that never reads must not keep the buffer (and socket) alive
                self.loop.call_later(2.0, transport.abort)

    def _shutdown(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.failure = self.failure or reason
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._blocked.clear()
        for stream in list(self.streams.values()):
            stream.lost(f"agent connection lost: {self.failure}")
        self.streams.clear()
        self.on_closed(self.failure)
