"""The keepalive planner (hub/keepalive.py): when a PING goes out, when a peer is dead."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from exitgate.hub.keepalive import plan, slack

INTERVAL, TIMEOUT = 10.0, 20.0


def step(now: float, last_rx: float, last_ping: float = 0.0, answer_by: float | None = None,
         busy: bool = False):  # type: ignore[no-untyped-def]
    return plan(now, last_rx, last_ping, answer_by, busy=busy, interval=INTERVAL, timeout=TIMEOUT)


def test_a_peer_heard_recently_is_left_alone_until_the_interval() -> None:
    s = step(103.0, 100.0)
    assert not s.ping and not s.dead and s.next_at == 110.0


def test_a_peer_silent_for_the_interval_is_pinged_with_the_rest_of_the_timeout_to_answer() -> None:
    s = step(110.0, 100.0)
    assert s.ping and not s.dead and s.next_at == 120.0


def test_a_check_landing_just_short_of_the_interval_pings_now() -> None:
    s = step(110.0 - slack(INTERVAL) / 2, 100.0)
    assert s.ping


def test_an_outstanding_ping_is_waited_for_then_fatal() -> None:
    s = step(115.0, 100.0, last_ping=110.0, answer_by=120.0)
    assert not s.ping and not s.dead and s.next_at == 120.0
    s = step(120.0, 100.0, last_ping=110.0, answer_by=120.0)
    assert s.dead.startswith("silent for 20.0")


def test_a_probe_deadline_is_fatal_even_while_frames_arrive() -> None:
    s = step(113.0, 112.9, last_ping=110.0, answer_by=113.0, busy=True)
    assert s.dead.startswith("no answer to PING for 3.0")


def test_a_busy_peer_is_pinged_every_interval_despite_its_traffic() -> None:
    assert not step(105.0, 104.9, last_ping=100.0, busy=True).ping
    s = step(110.0, 109.9, last_ping=100.0, busy=True)
    assert s.ping and s.next_at == 120.0
    assert step(105.0, 104.9, last_ping=100.0, busy=True).next_at == 110.0


def test_an_idle_peer_costs_no_ping_while_it_talks() -> None:
    assert not step(110.0, 109.9, last_ping=100.0).ping


@settings(max_examples=300, deadline=None)
@given(
    interval=st.floats(0.1, 30.0),
    extra=st.floats(0.05, 60.0),
    rtt=st.floats(0.0, 0.5),
    dies_at=st.floats(0.0, 300.0),
)
def test_simulated_peer_found_dead_within_the_timeout_never_before(
    interval: float, extra: float, rtt: float, dies_at: float
) -> None:
    """An idle peer answers every PING after `rtt` until `dies_at`, then goes silent. The
    keepalive never declares it dead while it answers, pings it about once per interval,
    and declares it dead no later than `timeout` after its last frame."""
    timeout = interval + max(extra, rtt * 2 + 0.01)
    now = last_rx = last_ping = 0.0
    answer_by: float | None = None
    pending_ack: float | None = None
    pings = 0
    for _ in range(100_000):
        s = plan(now, last_rx, last_ping, answer_by, busy=False, interval=interval,
                 timeout=timeout)
        if s.dead:
            assert now >= dies_at, "declared dead while answering"
            assert now - last_rx <= timeout + 1e-6
            break
        if s.ping:
            pings += 1
            last_ping = now
            answer_by = now + timeout - interval
            if now + rtt < dies_at:
                pending_ack = now + rtt
        assert s.next_at > now, "no progress"
        nxt = s.next_at
        if pending_ack is not None and pending_ack <= nxt:
            last_rx, answer_by, pending_ack = pending_ack, None, None
        now = nxt
    else:
        raise AssertionError("never concluded")
    alive_for = min(dies_at, now)
    assert pings <= alive_for / (interval - slack(interval)) + 2
