"""The one place tasks are spawned: every task has a name and a strong reference.

asyncio keeps only weak references to tasks, so a fire-and-forget task can be collected
mid-flight; and an unnamed task that dies is hard to trace. `spawn` keeps each task in a set
until it ends and logs an exception nobody awaited.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("exitgate.tasks")
_live: set[asyncio.Task[Any]] = set()


def _done(task: asyncio.Task[Any]) -> None:
    _live.discard(task)
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("task %s failed", task.get_name(), exc_info=exc)


def spawn(coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _live.add(task)
    task.add_done_callback(_done)
    return task


def live_tasks() -> frozenset[asyncio.Task[Any]]:
    return frozenset(_live)
