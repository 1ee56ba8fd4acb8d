"""Deadlines for the per-connection hot path: `Wheel` and `within(seconds)`.

A proxy sets a deadline on nearly every connection (the handshake, a kept-alive connection's
idle wait, a dial, a response) and nearly every one is met. A loop timer per deadline costs
about 5,000 instructions to make and again to cancel under uvloop, several per cent of a
whole tunnel. The `Wheel` keeps them instead in buckets of `RESOLUTION` seconds (a set per
bucket, a heap of bucket numbers) behind one loop timer, armed for the earliest bucket: adding
or dropping a deadline is a set operation, and the loop wakes at most once per bucket. A
deadline fires between its time and `RESOLUTION` later, never before: right for timeouts
measured in seconds.

An item is any object with a `_deadline_due()` method, called once when its bucket is due
(`Conn`'s re-arms itself when its deadline moved meanwhile).

`within(seconds)` is `asyncio.timeout` on the wheel, as a plain (synchronous) context
manager: `asyncio.timeout` (3.11) costs about 29,000 interpreter instructions to enter and
leave under uvloop. Same contract as `asyncio.timeout` for what the callers rely on: when the
delay passes, the current task is cancelled, and the `CancelledError` that this causes leaves
the block as `TimeoutError`; a cancellation from anywhere else (shutdown) stays a
`CancelledError`, even if the deadline fired too (the task's cancel count tells them apart,
as asyncio's does).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import weakref
from types import TracebackType
from typing import Any, Final

RESOLUTION: Final = 0.05  # seconds per bucket: how late a deadline may fire

log = logging.getLogger("exitgate.deadline")


def bucket_of(at: float) -> int:
    """The wheel's bucket for a deadline at `at` (loop time): the first that ends after it."""
    return int(at / RESOLUTION) + 1


class Wheel:
    """Deadlines of one event loop, in buckets of `RESOLUTION` seconds (see the module doc)."""

    __slots__ = ("_armed", "_buckets", "_heap", "_loop", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # weak: the loops' registry holds the wheels, and a value that held its key would
        # keep every loop ever used (tests make one per test) alive
        self._loop = weakref.ref(loop)
        self._buckets: dict[int, set[Any]] = {}
        self._heap: list[int] = []  # bucket numbers, each once while its bucket exists
        self._timer: asyncio.TimerHandle | None = None
        self._armed = 0  # the bucket the timer is set for; 0: none

    def add(self, item: Any, at: float) -> int:
        """Call `item._deadline_due()` once, at `at` (loop time) or up to RESOLUTION later.
        Returns the bucket, for `discard`."""
        slot = bucket_of(at)
        bucket = self._buckets.get(slot)
        if bucket is not None:
            bucket.add(item)
            return slot
        self._buckets[slot] = {item}
        heapq.heappush(self._heap, slot)
        if self._armed == 0 or slot < self._armed:
            self._arm(slot)
        return slot

    def discard(self, item: Any, slot: int) -> None:
        """The deadline `add` put in `slot` is no longer wanted (the item is let go now)."""
        bucket = self._buckets.get(slot)
        if bucket is not None:
            bucket.discard(item)

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets.values())

    def _arm(self, slot: int) -> None:
        loop = self._loop()
        if loop is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._armed = slot
        self._timer = loop.call_at(slot * RESOLUTION, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._armed = 0
        loop = self._loop()
        if loop is None:
            return
        now = loop.time()
        heap = self._heap
        buckets = self._buckets
        due: list[set[Any]] = []
        while heap and heap[0] * RESOLUTION <= now:
            bucket = buckets.pop(heapq.heappop(heap), None)
            if bucket:
                due.append(bucket)
        if heap:
            self._arm(heap[0])
        for bucket in due:
            for item in bucket:
                try:
                    item._deadline_due()
                except Exception:
                    log.exception("deadline callback failed")


_wheels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Wheel] = (
    weakref.WeakKeyDictionary()
)
# the last loop asked for (weakly) and its wheel: the answer nearly every time
_last: list[Any] = [None, None]


def wheel_of(loop: asyncio.AbstractEventLoop) -> Wheel:
    """The loop's wheel (made on first use; gone with the loop)."""
    last = _last[0]
    if last is not None and last() is loop:
        wheel: Wheel = _last[1]
        return wheel
    found = _wheels.get(loop)
    if found is None:
        found = _wheels[loop] = Wheel(loop)
    _last[0] = weakref.ref(loop)
    _last[1] = found
    return found


class within:  # lowercase: used like asyncio.timeout
    __slots__ = ("_cancelling", "_expired", "_slot", "_task", "_wheel")

    def __init__(self, delay: float) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("within() must be used inside a task")
        self._task = task
        self._expired = False
        self._cancelling = task.cancelling()
        loop = task.get_loop()
        self._wheel = wheel_of(loop)
        self._slot = self._wheel.add(self, loop.time() + delay)

    def _deadline_due(self) -> None:
        self._slot = 0
        self._expired = True
        self._task.cancel()

    def __enter__(self) -> within:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._slot:
            self._wheel.discard(self, self._slot)
            self._slot = 0
        if not self._expired:
            return
        # our cancel is spent here, whatever the block ended with
        if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc
