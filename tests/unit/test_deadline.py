"""`within`: asyncio.timeout's contract at a quarter of its cost (net/deadline.py)."""

from __future__ import annotations

import asyncio

import pytest

from exitgate.net.deadline import within


def test_a_block_that_takes_too_long_raises_timeout_error() -> None:
    async def main() -> None:
        with pytest.raises(TimeoutError), within(0.01):
            await asyncio.sleep(5)
        # the task is usable afterwards: no cancellation is left pending
        await asyncio.sleep(0)
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]

    asyncio.run(main())


def test_a_block_in_time_is_untouched_and_its_timer_is_gone() -> None:
    async def main() -> None:
        with within(0.05):
            await asyncio.sleep(0)
        await asyncio.sleep(0.1)  # a timer left behind would cancel this sleep

    asyncio.run(main())


def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    async def body(started: asyncio.Event) -> None:
        with within(5):
            started.set()
            await asyncio.sleep(5)

    async def main() -> None:
        started = asyncio.Event()
        task = asyncio.get_running_loop().create_task(body(started))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelled()

    asyncio.run(main())


def test_an_exception_inside_passes_through() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="boom"), within(5):
            raise ValueError("boom")

    asyncio.run(main())
