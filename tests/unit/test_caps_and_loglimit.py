"""`ConnectionCaps` counting and `LogLimiter` aggregation (no sockets: both are plain state)."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exitgate.net.caps import ConnectionCaps, derived_cap
from exitgate.net.loglimit import LogLimiter


@given(st.lists(st.tuples(st.booleans(), st.sampled_from("abcd")), max_size=200))
def test_caps_count_exactly_and_never_exceed(ops: list[tuple[bool, str]]) -> None:
    caps = ConnectionCaps(limit=5, per_address=2)
    open_: list[str] = []
    for opening, address in ops:
        if opening:
            if caps.admit(address) is None:
                open_.append(address)
        elif address in open_:
            open_.remove(address)
            caps.release(address)
        assert caps.total == len(open_) <= 5
        assert all(caps.by_address.get(a, 0) == open_.count(a) <= 2 for a in "abcd")
        assert all(n > 0 for n in caps.by_address.values())  # no empty entries kept


def test_which_cap_refuses() -> None:
    caps = ConnectionCaps(limit=3, per_address=2)
    assert [caps.admit("a"), caps.admit("a"), caps.admit("a")] == [None, None, "address"]
    assert caps.admit("b") is None
    assert caps.admit("c") == "global"
    unlimited = ConnectionCaps(limit=0, per_address=0)
    assert all(unlimited.admit("a") is None for _ in range(1000))


def test_derived_cap() -> None:
    assert derived_cap(1024) == 480
    assert derived_cap(20) == 16


def test_log_limiter_aggregates_per_key(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limiter = LogLimiter(logging.getLogger("t"), interval=60, max_keys=3, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING):
        assert limiter.warning("bad body", "10.0.0.1", "x")
        assert not any(limiter.warning("bad body", "10.0.0.1", "x") for _ in range(99))
        assert limiter.warning("bad body", "10.0.0.2", "x")  # another address
        assert limiter.warning("bad head", "10.0.0.1", "x")  # another kind
        now[0] = 61
        assert limiter.warning("bad body", "10.0.0.1", "y")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4
    assert lines[-1] == "bad body from 10.0.0.1: y (and 99 more since 61s)"


def test_log_limiter_table_is_bounded() -> None:
    now = [0.0]
    limiter = LogLimiter(logging.getLogger("t"), interval=60, max_keys=8, clock=lambda: now[0])
    for i in range(1000):
        now[0] = i / 10
        limiter.warning("k", f"10.0.{i // 256}.{i % 256}", "x")
        assert len(limiter._seen) <= 8
