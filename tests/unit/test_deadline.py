"""`within`: asyncio.timeout's contract at a quarter of its cost (net/deadline.py)."""

from __future__ import annotations

import asyncio

import pytest

from exitgate.net.deadline import RESOLUTION, wheel_of, within


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


# -- the wheel -------------------------------------------------------------------------------


class _Item:
    def __init__(self, loop: asyncio.AbstractEventLoop, done: asyncio.Future[float]) -> None:
        self.loop = loop
        self.done = done
        self.calls = 0

    def _deadline_due(self) -> None:
        self.calls += 1
        if not self.done.done():
            self.done.set_result(self.loop.time())


def test_a_deadline_fires_once_never_early_and_at_most_a_bucket_late() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        wheel = wheel_of(loop)
        fired: list[tuple[float, float, _Item]] = []
        for delay in (0.0, 0.01, 0.07, 0.12):
            item = _Item(loop, loop.create_future())
            at = loop.time() + delay
            wheel.add(item, at)
            fired.append((at, delay, item))
        for at, _, item in fired:
            when = await asyncio.wait_for(item.done, 2)
            assert when >= at
            # a bucket late at most, plus the loop's own wake-up slack
            assert when - at <= RESOLUTION + 0.05
        await asyncio.sleep(RESOLUTION * 3)
        assert [item.calls for _, _, item in fired] == [1, 1, 1, 1]
        assert len(wheel) == 0

    asyncio.run(main())


def test_a_discarded_deadline_does_not_fire_and_its_item_is_let_go() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        wheel = wheel_of(loop)
        kept = _Item(loop, loop.create_future())
        dropped = _Item(loop, loop.create_future())
        slot = wheel.add(dropped, loop.time() + 0.02)
        wheel.add(kept, loop.time() + 0.02)
        wheel.discard(dropped, slot)
        assert len(wheel) == 1
        await asyncio.wait_for(kept.done, 2)
        await asyncio.sleep(RESOLUTION * 2)
        assert dropped.calls == 0
        assert kept.calls == 1

    asyncio.run(main())


def test_an_item_may_schedule_itself_again_when_due() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        wheel = wheel_of(loop)
        times: list[float] = []
        finished: asyncio.Future[None] = loop.create_future()

        class Again:
            def _deadline_due(self) -> None:
                times.append(loop.time())
                if len(times) < 3:
                    wheel.add(self, loop.time() + 0.01)
                else:
                    finished.set_result(None)

        wheel.add(Again(), loop.time())
        await asyncio.wait_for(finished, 2)
        assert len(times) == 3
        assert times == sorted(times)

    asyncio.run(main())


def test_each_loop_has_its_own_wheel() -> None:
    seen: list[object] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert wheel_of(loop) is wheel_of(loop)
        seen.append(wheel_of(loop))

    asyncio.run(main())
    asyncio.run(main())
    assert seen[0] is not seen[1]
