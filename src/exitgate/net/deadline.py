"""`within(seconds)`: `asyncio.timeout` for the per-connection hot path.

`asyncio.timeout` (3.11) is an async context manager with a state machine; entering and
leaving one costs about 29,000 interpreter instructions under uvloop, a quarter of what the
whole Python floor proxy spends per tunnel, and exitgate entered one per dial and one per
forwarded request. `within` is a plain (synchronous) context manager around one timer handle
and a flag: about a quarter of the cost (bench/instr.py figures in the commit message).

Same contract as `asyncio.timeout` for what the callers rely on: when the delay passes, the
current task is cancelled, and the `CancelledError` that this causes leaves the block as
`TimeoutError`; a cancellation from anywhere else (shutdown) stays a `CancelledError`, even
if the timer fired too (the task's cancel count tells them apart, as asyncio's does).
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class within:  # lowercase: used like asyncio.timeout
    __slots__ = ("_cancelling", "_expired", "_handle", "_task")

    def __init__(self, delay: float) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("within() must be used inside a task")
        self._task = task
        self._expired = False
        self._cancelling = task.cancelling()
        self._handle = task.get_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
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
        self._handle.cancel()
        if not self._expired:
            return
        # our cancel is spent here, whatever the block ended with
        if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc
