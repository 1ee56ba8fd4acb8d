"""The pure rules of webhooks: the retry schedule and the hysteresis of level events.

Retry schedule. Attempt n (1-based) failed: the next one waits
`min(max_delay, base * FACTOR**(n-1))` scaled by a jitter factor in [0.5, 1.0) ("equal
jitter": never later than the nominal delay, never sooner than half of it, so receivers
coming back from an outage are not hit by every sender in the same second). With the
defaults (base 5 s, factor 3, max 1 h, 10 attempts) the nominal waits are
5 s, 15 s, 45 s, 2 min 15 s, 6 min 45 s, 20 min 15 s, 1 h, 1 h, 1 h: about 3.5 hours from the
first attempt to the last.

Level events with hysteresis. A watcher measures a figure (percent of a traffic cap, credits
left, healthy nodes) and keeps one `level` per subject: how far down the ladder the subject
is. Rising to a level fires its event once; the level is re-armed only after the figure
moved back past it by a margin, so a figure hovering around a threshold fires once, not at
every wobble.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

FACTOR: Final = 3.0
USAGE_LEVELS: Final = (50, 80, 90, 100)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base: float = 5.0
    max_delay: float = 3600.0
    max_attempts: int = 10

    def nominal(self, attempt: int) -> float:
        """The wait after failed attempt `attempt` (1-based), before jitter."""
        exponent = min(max(attempt - 1, 0), 64)  # 3**64 * base is past any max_delay
        return min(self.max_delay, self.base * FACTOR**exponent)

    def delay(self, attempt: int, draw: float) -> float:
        """The jittered wait; `draw` is uniform in [0, 1)."""
        return self.nominal(attempt) * (0.5 + 0.5 * draw)

    def gives_up(self, attempts: int) -> bool:
        return attempts >= self.max_attempts


def usage_level(
    fired: int, used: int, cap: int | None, levels: Sequence[int] = USAGE_LEVELS, margin: int = 5
) -> tuple[int, tuple[int, ...]]:
    """(highest level now fired, levels that fire now) for `used` bytes of `cap`.

    `fired` is the highest level fired so far (0: none). A fired level stays fired while usage
    is at or above `level - margin` percent; below that it re-arms (only a raised cap lowers
    the percentage, since usage only grows). No cap: nothing fires and every level re-arms.
    Several levels crossed at once fire together, lowest first. Integer arithmetic only.
    """
    if cap is None or cap <= 0:
        return 0, ()
    kept = 0
    for level in levels:
        if level <= fired and used * 100 >= (level - margin) * cap:
            kept = level
    new = tuple(lv for lv in levels if lv > kept and used * 100 >= lv * cap)
    return (new[-1] if new else kept), new


CREDITS_OK: Final = 0
CREDITS_LOW: Final = 1
CREDITS_EXHAUSTED: Final = 2


def credit_level(
    level: int, left: float | None, low: float, margin: float
) -> tuple[int, tuple[int, ...]]:
    """(new level, levels that fire now) for `left` credits (None: unlimited).

    Exhausted at `left <= 0`, re-armed once `left > 0` again. Low at `left <= low`, re-armed
    once `left > low + margin`.
    """
    if left is None:
        return CREDITS_OK, ()
    if left <= 0:
        raw = CREDITS_EXHAUSTED
    elif left <= low or (level >= CREDITS_LOW and left <= low + margin):
        raw = CREDITS_LOW
    else:
        raw = CREDITS_OK
    fired = tuple(lv for lv in (CREDITS_LOW, CREDITS_EXHAUSTED) if level < lv <= raw)
    return raw, fired


def pool_degraded(degraded: bool, healthy: int, minimum: int, margin: int) -> tuple[bool, bool]:
    """(degraded now, fire now): degraded below `minimum` healthy nodes, re-armed at
    `minimum + margin` or more."""
    if minimum <= 0:
        return False, False
    if healthy < minimum:
        return True, not degraded
    if degraded and healthy < minimum + margin:
        return True, False
    return False, False
