"""Warnings an attacker can repeat at will, written at most once per key and interval.

A hostile client (or website) can make the same warning happen thousands of times a second:
a malformed chunked body per request, a flood over the connection cap. One line per event
would let it fill the disk and drown everything else. `LogLimiter.warning` writes the first
event of a key (say, "malformed request body" from one address), counts the repeats for
`interval` seconds, and writes them as a count with the next event after the interval:

    WARNING malformed request body from 10.0.0.1: missing CRLF after chunk data
    WARNING malformed request body from 10.0.0.1: bad chunk size (and 2,311 more since 60s)

No timer and no task: the work happens on the event itself, a dict lookup and a compare. The
table is bounded (`max_keys`); when full, entries older than the interval go, and if that is
not enough the table is cleared, which at worst writes one extra line per key.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

_COUNT = 1


class LogLimiter:
    __slots__ = ("_clock", "_interval", "_log", "_max_keys", "_seen")

    def __init__(
        self,
        log: logging.Logger,
        interval: float = 60.0,
        max_keys: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._interval = interval
        self._max_keys = max_keys
        self._clock = clock
        self._seen: dict[tuple[str, str], list[float]] = {}  # key → [since, suppressed]

    def warning(self, kind: str, key: str, detail: str) -> bool:
        """Log `"{kind} from {key}: {detail}"` unless this (kind, key) was logged within the
        interval; True when a line was written."""
        now = self._clock()
        entry = self._seen.get((kind, key))
        if entry is not None and now - entry[0] < self._interval:
            entry[_COUNT] += 1
            return False
        if entry is None and len(self._seen) >= self._max_keys:
            self._prune(now)
        self._seen[(kind, key)] = [now, 0]
        if entry is not None and entry[_COUNT]:
            self._log.warning(
                "%s from %s: %s (and %d more since %.0fs)",
                kind, key, detail, int(entry[_COUNT]), now - entry[0],
            )
        else:
            self._log.warning("%s from %s: %s", kind, key, detail)
        return True

    def _prune(self, now: float) -> None:
        stale = [k for k, (since, _) in self._seen.items() if now - since >= self._interval]
        for k in stale:
            del self._seen[k]
        if len(self._seen) >= self._max_keys:
            self._seen.clear()
