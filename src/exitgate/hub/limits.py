"""What one HTTP/2 peer may cost: the limits of a `Mux`, and the two guards enforcing them.

- `MuxLimits`: windows, frame and header sizes, stream count, write-buffer cap, keepalive
  timing (keepalive.py), and per-window budgets for the frames a flood is made of.
- `FrameGuard` refuses an oversized frame at its 9-byte header, before h2 would buffer it.
- `CountingH2` is h2's connection with per-kind frame counters that the mux checks against the
  budgets after each read, and a smaller memory of closed streams.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import Event
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    HeadersFrame,
    RstStreamFrame,
    WindowUpdateFrame,
)

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass(frozen=True, slots=True)
class MuxLimits:
    stream_window: int = 256 * 1024  # what a peer may send on one stream before we read it
    max_frame: int = 65_536  # largest frame accepted (advertised; fewer frames per MiB)
    max_header_list: int = 8 * 1024
    max_streams: int = 1024  # concurrent streams a server side accepts
    max_write_buffer: int = 8 * 1024 * 1024  # TCP bytes queued for a peer that does not read
    # keepalive (keepalive.py): a peer silent this long gets a PING...
    ping_interval: float = 10.0
    # ...and one silent this long is dead (so a PING has silence_timeout - ping_interval to
    # be answered): the bound on noticing a silently dead peer
    silence_timeout: float = 20.0
    budget_window: float = 0.25  # the budgets below are per window of this many seconds
    control_budget: int = 200  # PING, SETTINGS, PRIORITY, empty DATA, unknown
    reset_budget: int = 200  # on top of the streams we opened
    window_update_budget: int = 20_000

    def __post_init__(self) -> None:
        if not 0 < self.ping_interval < self.silence_timeout:
            raise ValueError("keepalive: need 0 < ping_interval < silence_timeout")


class Hostile(Exception):
    """The peer broke a resource limit; the connection ends."""


class CountingH2(H2Connection):
    """h2 with frame counters (for flood limits) and a smaller closed-stream memory."""

    # h2 remembers 65536 closed stream ids per connection (to tell a late frame on a reset
    # stream from a protocol error); 4096 covers in-flight frames at thousands of tunnels a
    # second and caps a busy agent's bookkeeping at a few hundred KiB.
    MAX_CLOSED_STREAMS = 4096

    def __init__(self, config: H2Configuration) -> None:
        super().__init__(config)
        self.junk = 0
        self.resets = 0
        self.window_updates = 0

    def _receive_frame(self, frame: Frame) -> list[Event]:
        kind = type(frame)
        if isinstance(frame, DataFrame):
            if not frame.data and "END_STREAM" not in frame.flags:
                self.junk += 1
        elif kind is WindowUpdateFrame:
            self.window_updates += 1
        elif kind is RstStreamFrame:
            self.resets += 1
        elif kind is not HeadersFrame and kind is not ContinuationFrame:
            self.junk += 1
        return super()._receive_frame(frame)


class FrameGuard:
    """Refuses an oversized frame at its header.

    h2 checks a frame's length only once the whole body has arrived, so a peer announcing a
    16 MiB frame would make it buffer 16 MiB first. This scan follows frame boundaries in the
    byte stream (9-byte headers, bodies skipped) and stops at the first header over the limit.
    """

    __slots__ = ("body", "head", "limit", "skip")

    def __init__(self, limit: int, skip: int) -> None:
        self.limit = limit
        self.skip = skip  # the client preface a server side receives first
        self.body = 0
        self.head = b""

    def check(self, data: bytes) -> None:
        pos, end = 0, len(data)
        if self.skip:
            taken = min(self.skip, end)
            self.skip -= taken
            pos = taken
        while pos < end:
            if self.body:
                taken = min(self.body, end - pos)
                self.body -= taken
                pos += taken
                continue
            need = 9 - len(self.head)
            self.head += data[pos : pos + need]
            pos += need
            if len(self.head) < 9:
                return
            length = int.from_bytes(self.head[:3], "big")
            self.head = b""
            if length > self.limit:
                raise Hostile(f"frame of {length} bytes (limit {self.limit})")
            self.body = length
