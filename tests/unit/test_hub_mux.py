"""Mux limits without sockets: the frame-length guard, the flood budgets, the keepalive."""

from __future__ import annotations

import asyncio
import struct
import time

import pytest

from exitgate.hub.limits import PREFACE, FrameGuard, Hostile, MuxLimits
from tests.unit.test_hub_stream import open_tunnel, pair, settle


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


PATIENT = MuxLimits(ping_interval=5.0, silence_timeout=10.0)


async def test_budgets_are_per_window() -> None:
    client, server, a, _ = await pair(MuxLimits(control_budget=50))
    for _ in range(5):
        a.write(b"".join(frame(6, 0, b"12345678") for _ in range(40)))
        await settle()
        # the next bytes start a new window (as if budget_window had passed)
        server._budget_at -= server.limits.budget_window
        client._budget_at -= client.limits.budget_window  # it got 40 PING ACKs
    assert not server.closed and not client.closed


async def test_an_idle_peer_is_pinged_and_stays_up() -> None:
    limits = MuxLimits(ping_interval=0.05, silence_timeout=0.3)
    client, server, _, _ = await pair(limits)
    await asyncio.sleep(0.5)
    assert not client.closed and not server.closed
    assert client.rtt > 0  # PINGs went out and came back


async def test_a_silent_peer_is_dead_within_the_timeout() -> None:
    limits = MuxLimits(ping_interval=0.05, silence_timeout=0.3)
    client, server, _, b = await pair(limits)
    server.limits = PATIENT  # the stalled side must not give up first
    await asyncio.sleep(0.1)
    b.pause_reading()  # the server's side stops reading: no answers come back
    stopped = time.monotonic()
    while not client.closed and time.monotonic() - stopped < 2:
        await asyncio.sleep(0.01)
    assert client.closed
    assert "PING" in client.failure or "silent" in client.failure
    assert time.monotonic() - stopped < limits.silence_timeout + 0.2


async def test_a_peer_that_sends_but_never_answers_a_ping_is_dead() -> None:
    """Open streams: the peer is PINGed every interval even while its frames keep coming, so
    one that still sends but no longer reads is caught by its unanswered PING."""
    limits = MuxLimits(ping_interval=0.05, silence_timeout=0.3)
    client, server, _, b = await pair(limits)
    server.limits = PATIENT
    _, _, server_stream, _ = await open_tunnel(client, server)
    b.pause_reading()
    started = time.monotonic()
    while not client.closed and time.monotonic() - started < 2:
        server_stream.write(b"x")  # the server keeps sending (the client keeps hearing it)
        await asyncio.sleep(0.01)
    assert client.closed and "PING" in client.failure
    assert time.monotonic() - started < limits.silence_timeout + 0.2


async def test_a_probe_finds_a_dead_peer_before_the_timeout() -> None:
    limits = MuxLimits(ping_interval=5.0, silence_timeout=10.0)
    client, _, _, b = await pair(limits)
    b.pause_reading()
    started = time.monotonic()
    client.probe(0.1)
    while not client.closed and time.monotonic() - started < 2:
        await asyncio.sleep(0.01)
    assert client.closed and "PING" in client.failure
    assert time.monotonic() - started < 0.5


async def test_a_probe_answered_changes_nothing() -> None:
    limits = MuxLimits(ping_interval=5.0, silence_timeout=10.0)
    client, _, _, _ = await pair(limits)
    client.probe(0.1)
    await asyncio.sleep(0.3)
    assert not client.closed and client.rtt > 0


def test_keepalive_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="ping_interval"):
        MuxLimits(ping_interval=5.0, silence_timeout=5.0)
