"""The brute-force throttle's pure core: sliding window, cool-down, isolation between
addresses, bounded memory, aggregated reports."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from exitgate.policy.authguard import AuthThrottle, ThrottlePolicy, address_key


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def make(**policy: float) -> tuple[AuthThrottle, Clock]:
    clock = Clock()
    return AuthThrottle(ThrottlePolicy(**policy), clock), clock  # type: ignore[arg-type]


def test_blocks_after_n_failures_in_the_window_for_the_cooldown() -> None:
    throttle, clock = make(max_failures=5, window=10, cooldown=30)
    for _ in range(4):
        throttle.failed("127.0.0.2")
        clock.now += 1
    assert not throttle.blocked("127.0.0.2")
    throttle.failed("127.0.0.2")
    assert throttle.blocked("127.0.0.2")
    assert not throttle.blocked("127.0.0.3")  # another address is not touched
    clock.now += 29.9
    assert throttle.blocked("127.0.0.2")
    clock.now += 0.1
    assert not throttle.blocked("127.0.0.2")
    throttle.failed("127.0.0.2")  # a fresh start after the cool-down, not an instant block
    assert not throttle.blocked("127.0.0.2")


def test_slow_failures_never_block() -> None:
    """A client with a typo retrying now and then is never throttled."""
    throttle, clock = make(max_failures=5, window=10, cooldown=30)
    for _ in range(1000):
        throttle.failed("10.0.0.1")
        assert not throttle.blocked("10.0.0.1")
        clock.now += 2.6  # 5 failures span 10.4 s > window


def test_zero_turns_blocking_off() -> None:
    throttle, _ = make(max_failures=0)
    for _ in range(10_000):
        throttle.failed("10.0.0.1")
    assert not throttle.blocked("10.0.0.1")


def test_ipv6_is_throttled_by_its_64() -> None:
    assert address_key("2001:db8::1") == address_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert address_key("2001:db8:0:1::1") != address_key("2001:db8::1")
    assert address_key("::ffff:10.1.2.3") == "10.1.2.3"
    throttle, _ = make(max_failures=3)
    for host in ("2001:db8::1", "2001:db8::2", "2001:db8::3"):
        throttle.failed(host)
    assert throttle.blocked("2001:db8::99")
    assert not throttle.blocked("2001:db8:1::1")


def test_reports_aggregate_per_address_per_interval() -> None:
    throttle, clock = make(max_failures=5, window=10, cooldown=60, report_every=10)
    for _ in range(1234):
        if not throttle.blocked("127.0.0.2"):
            throttle.failed("127.0.0.2")
        clock.now += 0.001
    assert throttle.reports() == []  # not yet an interval since the first failure
    clock.now += 10
    (report,) = throttle.reports()
    assert (report.address, report.failed, report.refused) == ("127.0.0.2", 5, 1229)
    assert report.blocked
    assert report.message() == (
        "127.0.0.2: 5 failed authentications and 1,229 throttled attempts in the last 11 s"
        " (blocked)"
    )
    assert throttle.reports() == []  # nothing new: nothing said
    clock.now += 100
    assert throttle.reports() == [] and len(throttle) == 0  # forgotten once quiet


events = st.lists(
    st.tuples(
        st.sampled_from(["fail", "try", "report"]),
        st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3", "2001:db8::1"]),
        st.floats(min_value=0, max_value=5),
    ),
    max_size=300,
)


@given(events, st.integers(min_value=1, max_value=6))
def test_matches_a_reference_model(script: list[tuple[str, str, float]], n: int) -> None:
    """Against a plain model: the last n failures since the last block, within the window,
    block for the cool-down; reports add up to every failure; memory stays bounded."""
    window, cooldown = 8.0, 12.0
    throttle, clock = make(max_failures=n, window=window, cooldown=cooldown, report_every=3,
                           max_addresses=10)
    fails: dict[str, list[float]] = {}
    until: dict[str, float] = {}
    total = 0
    reported = 0
    for action, address, step in script:
        clock.now += step
        key = address_key(address)
        expected_blocked = clock.now < until.get(key, float("-inf"))
        if action == "try":
            assert throttle.blocked(address) == expected_blocked
        elif action == "fail":
            if throttle.blocked(address):
                assert expected_blocked
                continue
            assert not expected_blocked
            throttle.failed(address)
            total += 1
            log = fails.setdefault(key, [])
            log.append(clock.now)
            if len(log) >= n and clock.now - log[-n] <= window:
                until[key] = clock.now + cooldown
                log.clear()
        else:
            reported += sum(r.failed for r in throttle.reports())
        assert len(throttle) <= 10
    clock.now += 1000
    reported += sum(r.failed for r in throttle.reports())
    assert reported == total


@given(st.lists(st.integers(min_value=0, max_value=2**32 - 1), max_size=400))
def test_memory_is_bounded_by_max_addresses(addresses: list[int]) -> None:
    throttle, _ = make(max_failures=3, max_addresses=50)
    for number in addresses:
        throttle.failed(f"10.{number >> 16 & 255}.{number >> 8 & 255}.{number & 255}")
        assert len(throttle) <= 50
