"""Mux limits without sockets: the frame-length guard and the flood budgets."""

from __future__ import annotations

import struct

import pytest

from exitgate.hub.limits import PREFACE, FrameGuard, Hostile, MuxLimits
from tests.unit.test_hub_stream import pair, settle


def frame(kind: int, stream: int, payload: bytes = b"", length: int | None = None) -> bytes:
    size = len(payload) if length is None else length
    return struct.pack(">I", size)[1:] + bytes([kind, 0]) + struct.pack(">I", stream) + payload


def feed(guard: FrameGuard, data: bytes, step: int) -> None:
    for i in range(0, len(data), step):
        guard.check(data[i : i + step])


@pytest.mark.parametrize("step", [1, 2, 7, 9, 10, 4096, 1 << 20])
def test_guard_follows_frames_across_any_split(step: int) -> None:
    stream = PREFACE + frame(4, 0) + frame(0, 1, b"x" * 16_384) + frame(6, 0, b"p" * 8)
    guard = FrameGuard(16_384, len(PREFACE))
    feed(guard, stream, step)
    assert guard.body == 0 and guard.head == b""
    with pytest.raises(Hostile, match="16385"):
        feed(guard, frame(0, 1, length=16_385) + b"y" * 100, step)


def test_guard_stops_at_the_header_not_after_the_body() -> None:
    guard = FrameGuard(16_384, 0)
    with pytest.raises(Hostile):
        guard.check(frame(0, 1, length=(1 << 24) - 1))  # nothing of the body was sent


async def test_ping_flood_ends_the_connection_with_enhance_your_calm() -> None:
    client, server, a, _ = await pair(MuxLimits(control_budget=50))
    flood = b"".join(frame(6, 0, b"12345678") for _ in range(51))
    assert a.peer is not None
    a.write(flood)  # arrives at the server as if the client had sent it
    await settle()
    assert server.closed and "flood" in server.failure
    assert client.closed  # it got the GOAWAY and the close


async def test_budgets_reset_every_tick() -> None:
    client, server, a, _ = await pair(MuxLimits(control_budget=50))
    for _ in range(5):
        a.write(b"".join(frame(6, 0, b"12345678") for _ in range(40)))
        await settle()
        assert server.heartbeat(server.last_rx) is None
        assert client.heartbeat(client.last_rx) is None  # it got 40 PING ACKs
    assert not server.closed and not client.closed


async def test_silence_and_unanswered_ping_are_reported() -> None:
    limits = MuxLimits(ping_interval=0.0, silence_timeout=1.0)
    client, _, _, b = await pair(limits)
    now = client.last_rx
    assert client.heartbeat(now + 0.1) is None  # sends a PING
    assert client.ping_sent_at is not None
    await settle()
    assert client.ping_sent_at is None  # answered
    b.pause_reading()  # the server's side stops reading: no answers come back
    client.last_rx = now + 0.2  # pretend the peer's last frame came just now
    assert client.heartbeat(now + 0.2) is None  # another PING, never answered
    sent = client.ping_sent_at
    assert sent is not None
    await settle()
    client.last_rx = sent + 1.2  # frames keep coming (a stalled reader still sends)...
    reason = client.heartbeat(sent + 1.5)  # ...but the PING is not answered
    assert reason is not None and "PING" in reason
