"""Rate and concurrency limits (policy.ratelimit over store.counters.MemoryCounters), with an
injected clock: exact refills, burst, slots under cancellation at the worst moments."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Sequence
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exitgate.errors import Code, GatewayError
from exitgate.model import Limits, Package
from exitgate.policy.ratelimit import UNLIMITED, Limiter, slot_key
from exitgate.store.counters import TOKEN, MemoryCounters, bucket_take

S = 1_000_000  # microseconds


class Clock:
    def __init__(self, now: int = 1_700_000_000 * S) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, us: int) -> None:
        self.now += us


def pkg(rps: int | None = None, conc: int | None = None, pid: str = "pkg_1") -> Package:
    return Package(pid, "org_1", "p", "h", limits=Limits(rps=rps, concurrency=conc))


@pytest.fixture
def clock() -> Clock:
    return Clock()


class AwaitingCounters(MemoryCounters):
    """The in-process arithmetic behind awaits that yield, as a network backend's do: the
    limiter then takes its awaited path, not the synchronous one it uses for MemoryCounters."""

    async def take(self, key: str, rate: int, burst: int, now: int) -> int:
        await asyncio.sleep(0)
        return await super().take(key, rate, burst, now)

    async def acquire(self, key: str, holder: str, limit: int, ttl: int, now: int) -> bool:
        await asyncio.sleep(0)
        return await super().acquire(key, holder, limit, ttl, now)


@pytest.fixture(params=["in-process", "awaiting"])
def counters(request: pytest.FixtureRequest) -> MemoryCounters:
    return MemoryCounters() if request.param == "in-process" else AwaitingCounters()


@pytest.fixture
def limiter(counters: MemoryCounters, clock: Clock) -> Limiter:
    return Limiter(counters, clock=clock, lease_ttl=60.0, instance="t")


async def passes(limiter: Limiter, package: Package) -> bool:
    try:
        await limiter.check_rate(package)
    except GatewayError as err:
        assert err.code is Code.RATE_LIMIT_EXCEEDED
        assert err.detail == f"Requests per second limit reached ({package.limits.rps}/s)"
        return False
    return True


# -- token bucket ------------------------------------------------------------------------------


def test_bucket_arithmetic_is_exact() -> None:
    level, stamp = 2 * TOKEN, 0
    level, stamp, wait = bucket_take(level, stamp, 2, 2, 0)
    assert (level, wait) == (TOKEN, 0)
    level, stamp, wait = bucket_take(level, stamp, 2, 2, 0)
    assert (level, wait) == (0, 0)
    level, stamp, wait = bucket_take(level, stamp, 2, 2, 0)
    assert wait == 500_000  # half a second for one token at 2/s
    level, stamp, wait = bucket_take(level, stamp, 2, 2, 499_999)
    assert wait == 1
    level, stamp, wait = bucket_take(level, stamp, 2, 2, 500_000)
    assert (level, stamp, wait) == (0, 500_000, 0)
    # a clock stepping back refills nothing and never moves the stamp back
    level, stamp, wait = bucket_take(level, stamp, 2, 2, 100_000)
    assert (level, stamp) == (0, 500_000) and wait == 500_000


async def test_burst_equals_rate_then_exact_refill(limiter: Limiter, clock: Clock) -> None:
    p = pkg(rps=10)
    assert [await passes(limiter, p) for _ in range(11)] == [True] * 10 + [False]
    clock.advance(100_000 - 1)
    assert not await passes(limiter, p)
    clock.advance(1)  # exactly 1/10 s after the bucket ran dry: exactly one token
    assert await passes(limiter, p)
    assert not await passes(limiter, p)
    clock.advance(10 * S)  # idle for long: full again, never more than the burst
    assert [await passes(limiter, p) for _ in range(11)] == [True] * 10 + [False]


async def test_non_integer_interval_refills_exactly(limiter: Limiter, clock: Clock) -> None:
    p = pkg(rps=3)
    for _ in range(3):
        assert await passes(limiter, p)
    got = 0
    for _ in range(1000):  # one second in 1 ms steps: exactly three tokens come back
        clock.advance(1000)
        got += await passes(limiter, p)
    assert got == 3


async def test_buckets_are_per_package(limiter: Limiter) -> None:
    a, b = pkg(rps=1, pid="a"), pkg(rps=1, pid="b")
    assert await passes(limiter, a) and not await passes(limiter, a)
    assert await passes(limiter, b)


async def test_rate_zero_and_none(limiter: Limiter, counters: MemoryCounters) -> None:
    assert not await passes(limiter, pkg(rps=0))
    for _ in range(1000):
        await limiter.check_rate(pkg(rps=None))
    assert counters._buckets == {}  # no limit: nothing counted at all


@given(
    rate=st.integers(1, 50),
    gaps=st.lists(st.integers(0, 400_000), min_size=1, max_size=80),
)
def test_bucket_matches_an_exact_rational_model(rate: int, gaps: Sequence[int]) -> None:
    level, stamp, now = rate * TOKEN, 0, 0
    tokens, last = Fraction(rate), 0
    for gap in gaps:
        now += gap
        level, stamp, wait = bucket_take(level, stamp, rate, rate, now)
        tokens = min(Fraction(rate), tokens + Fraction((now - last) * rate, S))
        last = now
        expect = tokens >= 1
        if expect:
            tokens -= 1
        assert (wait == 0) == expect
        assert Fraction(level, TOKEN) == tokens


# -- concurrency -------------------------------------------------------------------------------


class EagerSemaphore:
    """The semaphore's meaning, written plainly: every call drops the expired holders first."""

    def __init__(self) -> None:
        self.held: dict[str, int] = {}

    def sweep(self, now: int) -> None:
        self.held = {h: until for h, until in self.held.items() if until > now}

    def acquire(self, holder: str, limit: int, ttl: int, now: int) -> bool:
        self.sweep(now)
        if holder not in self.held and len(self.held) >= limit:
            return False
        self.held[holder] = now + ttl
        return True

    def count(self, now: int) -> int:
        self.sweep(now)
        return len(self.held)


@given(
    limit=st.integers(0, 4),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["acquire", "release", "renew"]),
            st.sampled_from("abcdef"),
            st.integers(0, 12 * S),  # time passing before the step
        ),
        max_size=60,
    ),
)
def test_semaphore_sweeps_lazily_and_agrees_with_the_eager_model(
    limit: int, steps: Sequence[tuple[str, str, int]]
) -> None:
    """`acquire_now` drops expired holders only when they would refuse someone: every answer
    and count must still be the eager model's."""
    counters, model = MemoryCounters(), EagerSemaphore()
    ttl, now = 10 * S, 0
    for op, holder, gap in steps:
        now += gap
        if op == "acquire":
            assert counters.acquire_now("k", holder, limit, ttl, now) == model.acquire(
                holder, limit, ttl, now
            )
        elif op == "release":
            counters.release("k", holder)
            model.held.pop(holder, None)
        else:
            asyncio.run(counters.renew([("k", holder)], ttl, now))
            model.held[holder] = now + ttl
        assert asyncio.run(counters.count("k", now)) == model.count(now)


async def held(counters: MemoryCounters, package: Package, clock: Clock) -> int:
    return await counters.count(slot_key(package.id), clock())


async def test_concurrency_acquire_release(
    limiter: Limiter, counters: MemoryCounters, clock: Clock
) -> None:
    p = pkg(conc=2)
    one = await limiter.acquire(p)
    two = await limiter.acquire(p)
    with pytest.raises(GatewayError) as info:
        await limiter.acquire(p)
    assert info.value.code is Code.RATE_LIMIT_EXCEEDED
    assert info.value.detail == "Concurrent connection limit reached (2)"
    assert await held(counters, p, clock) == 2 and limiter.held == 2
    one.release()
    one.release()  # a second release must not free somebody else's slot
    assert await held(counters, p, clock) == 1
    three = await limiter.acquire(p)
    with pytest.raises(GatewayError):
        await limiter.acquire(p)
    with two, three:
        pass
    assert await held(counters, p, clock) == 0 and limiter.held == 0
    assert counters._slots == {}  # nothing left behind


async def test_slot_as_async_context_and_limits_none_or_zero(
    limiter: Limiter, counters: MemoryCounters, clock: Clock
) -> None:
    p = pkg(conc=1)
    async with await limiter.acquire(p) as slot:
        assert not slot.released and await held(counters, p, clock) == 1
    assert slot.released and await held(counters, p, clock) == 0
    free = await limiter.acquire(pkg(conc=None))
    assert free is UNLIMITED and counters._slots == {}
    free.release()
    with pytest.raises(GatewayError, match=r"limit reached \(0\)"):
        await limiter.acquire(pkg(conc=0))


async def test_admit_orders_rate_then_concurrency_then_check(
    limiter: Limiter, counters: MemoryCounters, clock: Clock
) -> None:
    p = pkg(rps=5, conc=2)

    def over_cap(_: Package) -> None:
        raise GatewayError(Code.TRAFFIC_LIMIT_EXCEEDED)

    with pytest.raises(GatewayError) as info:
        await limiter.admit(p, over_cap)  # token 1
    assert info.value.code is Code.TRAFFIC_LIMIT_EXCEEDED
    assert await held(counters, p, clock) == 0  # the slot taken before the check went back
    first = await limiter.admit(p)  # token 2
    second = await limiter.admit(p, lambda _: None)  # token 3
    with pytest.raises(GatewayError, match="Concurrent"):
        await limiter.admit(p)  # token 4
    first.release()
    (await limiter.admit(p)).release()  # token 5
    with pytest.raises(GatewayError, match="Requests per second"):
        await limiter.admit(p)  # rate first: no token left, though a slot is free
    assert await held(counters, p, clock) == 1
    second.release()


# -- cancellation at the worst moments ---------------------------------------------------------


class SlowCounters(MemoryCounters):
    """A backend whose `acquire` suspends before or after granting, like a network round trip."""

    def __init__(self, grant_first: bool, yields: int = 0) -> None:
        super().__init__()
        self.grant_first = grant_first
        self.yields = yields
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def acquire(self, key: str, holder: str, limit: int, ttl: int, now: int) -> bool:
        if self.grant_first:
            granted = await super().acquire(key, holder, limit, ttl, now)
            self.entered.set()
            await self.gate.wait()  # the answer is "on the wire" when the task is cancelled
            for _ in range(self.yields):
                await asyncio.sleep(0)
            return granted
        self.entered.set()
        await self.gate.wait()
        return await super().acquire(key, holder, limit, ttl, now)


@pytest.mark.parametrize("grant_first", [True, False])
async def test_cancel_inside_acquire_leaks_nothing(grant_first: bool, clock: Clock) -> None:
    counters = SlowCounters(grant_first)
    limiter = Limiter(counters, clock=clock, instance="t")
    p = pkg(conc=1)
    task = asyncio.get_running_loop().create_task(limiter.acquire(p))
    await counters.entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await held(counters, p, clock) == 0 and limiter.held == 0
    counters.gate.set()
    async with await limiter.acquire(p):  # the one slot is free
        assert await held(counters, p, clock) == 1


async def test_cancel_while_holding_releases(
    limiter: Limiter, counters: MemoryCounters, clock: Clock
) -> None:
    p = pkg(conc=3)
    started = asyncio.Event()

    async def relay() -> None:
        with await limiter.admit(p):
            started.set()
            await asyncio.sleep(3600)

    tasks = [asyncio.get_running_loop().create_task(relay()) for _ in range(3)]
    await started.wait()
    await asyncio.sleep(0)
    assert await held(counters, p, clock) == 3
    with pytest.raises(GatewayError):
        await limiter.acquire(p)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert await held(counters, p, clock) == 0 and limiter.held == 0


async def test_cancel_at_every_step_of_many_tasks(clock: Clock) -> None:
    """Tasks acquire through a slow backend and hold; cancel each after a different number of
    event-loop steps: whichever await it is in, nothing leaks."""
    counters = SlowCounters(grant_first=True, yields=2)
    counters.gate.set()
    limiter = Limiter(counters, clock=clock, instance="t")
    p = pkg(conc=1000)
    holding: list[int] = []

    async def user() -> None:
        await asyncio.sleep(0)
        async with await limiter.admit(p):
            holding.append(await held(counters, p, clock))
            for _ in range(3):
                await asyncio.sleep(0)

    loop = asyncio.get_running_loop()
    for steps in range(8):
        tasks = [loop.create_task(user()) for _ in range(20)]
        for _ in range(steps):
            await asyncio.sleep(0)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert await held(counters, p, clock) == 0, steps
        assert limiter.held == 0
    assert holding and max(holding) == 20  # some were cancelled holding, others acquiring


# -- leases ------------------------------------------------------------------------------------


async def test_leases_expire_unless_renewed(counters: MemoryCounters, clock: Clock) -> None:
    crashed = Limiter(counters, clock=clock, lease_ttl=10.0, instance="dead")
    alive = Limiter(counters, clock=clock, lease_ttl=10.0, instance="live")
    p = pkg(conc=2)
    await crashed.acquire(p)  # never released: its instance died
    keep = await alive.acquire(p)
    clock.advance(9 * S)
    assert await alive.renew() == 1
    clock.advance(2 * S)  # the dead instance's lease is past its TTL; the renewed one is not
    assert await held(counters, p, clock) == 1
    other = await alive.acquire(p)
    with pytest.raises(GatewayError):
        await alive.acquire(p)
    keep.release()
    other.release()
    assert await held(counters, p, clock) == 0


async def test_release_during_renewal_is_not_undone(clock: Clock) -> None:
    class SlowRenew(MemoryCounters):
        def __init__(self) -> None:
            super().__init__()
            self.gate = asyncio.Event()

        async def renew(self, leases: Sequence[tuple[str, str]], ttl: int, now: int) -> None:
            await self.gate.wait()
            await super().renew(leases, ttl, now)

    counters = SlowRenew()
    limiter = Limiter(counters, clock=clock, instance="t")
    p = pkg(conc=1)
    slot = await limiter.acquire(p)
    renewal = asyncio.get_running_loop().create_task(limiter.renew())
    await asyncio.sleep(0)
    slot.release()
    counters.gate.set()
    assert await renewal == 1
    assert await held(counters, p, clock) == 0


def test_policy_modules_are_pure() -> None:
    code = (
        "import sys, exitgate.policy, exitgate.store.counters; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('asyncio', 'socket', 'sqlalchemy', 'redis', 'uvloop', 'exitgate.net')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
