"""When to PING an HTTP/2 peer and when to give up on it: the pure half of the keepalive.

Every `Mux` (agent links on the hub, the agent's link to the hub, interlink peers) has one
timer of its own; each time it fires, `plan` says what to do and when to look again. The
cost of an idle connection is therefore one timer event and one PING round trip per
`interval`, not a visit every tick: a hub with 10,000 idle agents handles about
10,000 / `interval` PINGs a second and nothing else.

Rules (`interval` < `timeout`):
- A peer that sent any frame within `interval` is alive: no PING. A connection with open
  streams is PINGed every `interval` anyway (round-trip time, and a peer that sends but no
  longer reads is caught by its unanswered PING).
- A peer silent for `interval` gets a PING, to be answered by `answer_by`
  (sent + `timeout` - `interval`, or sooner when a probe asked for it).
- Dead: nothing received for `timeout`, or the PING unanswered at `answer_by`.

Detection bound: a peer that dies silently (host gone, cable cut) is declared dead at most
`timeout` after its last frame, plus the timer's lateness (one event-loop turn). A closed
TCP connection is noticed at once, without any of this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# Timers may fire a hair early (clock and float rounding): a deadline this close counts as met.
EPSILON: Final = 1e-3


@dataclass(frozen=True, slots=True)
class Step:
    ping: bool  # send a PING now
    dead: str  # non-empty: why the peer is dead (then nothing else matters)
    next_at: float  # when to look again (monotonic seconds)


def slack(interval: float) -> float:
    """How early a PING may go: a check that lands just short of `interval` after the last
    frame (the previous PING's answer) PINGs now instead of waking again a moment later."""
    return min(0.5, interval / 10)


def plan(
    now: float,
    last_rx: float,
    last_ping: float,
    answer_by: float | None,
    *,
    busy: bool,
    interval: float,
    timeout: float,
) -> Step:
    """What to do at `now` for a peer last heard from at `last_rx`, last PINGed at
    `last_ping`, with a PING outstanding until `answer_by` (None: none outstanding)."""
    silent = now - last_rx
    give_up = last_rx + timeout
    if silent >= timeout - EPSILON:
        return Step(False, f"silent for {silent:.1f} s", now)
    if answer_by is not None:
        if now >= answer_by - EPSILON:
            return Step(False, f"no answer to PING for {now - last_ping:.1f} s", now)
        return Step(False, "", min(answer_by, give_up))
    early = slack(interval)
    due = silent >= interval - early or (busy and now - last_ping >= interval - early)
    if due:
        answer = now + (timeout - interval)
        return Step(True, "", min(answer, give_up))
    next_at = last_rx + interval
    if busy:
        next_at = min(next_at, last_ping + interval)
    return Step(False, "", max(next_at, now + early))
