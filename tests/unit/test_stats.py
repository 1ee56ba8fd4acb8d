"""LiveStats: histogram buckets, the closed label sets of refusals, byte totals."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from exitgate.errors import Code, GatewayError
from exitgate.observe.stats import (
    AUTH_REASONS,
    LIMIT_KINDS,
    Histogram,
    LiveStats,
    Tally,
    auth_reason,
    limit_kind,
)
from exitgate.policy.ratelimit import concurrency_exceeded, rate_exceeded


@given(st.lists(st.floats(min_value=0, max_value=1000, allow_nan=False)))
def test_histogram_buckets_are_cumulative_like_prometheus_le(values: list[float]) -> None:
    bounds = (0.01, 0.1, 1.0, 10.0)
    hist = Histogram(bounds)
    for v in values:
        hist.observe(v)
    buckets = hist.cumulative()
    assert [le for le, _ in buckets] == ["0.01", "0.1", "1.0", "10.0", "+Inf"]
    for (le, count), bound in zip(buckets, (*bounds, float("inf")), strict=True):
        assert count == sum(1 for v in values if v <= bound), le
    assert abs(hist.sum - sum(values)) < 1e-6 * max(1.0, sum(values))


def test_a_value_on_a_bound_falls_in_that_bucket() -> None:
    hist = Histogram((1.0, 2.0))
    hist.observe(1.0)
    assert hist.cumulative() == [("1.0", 1), ("2.0", 1), ("+Inf", 1)]


def test_every_refusal_maps_into_the_closed_label_sets() -> None:
    kinds = {
        limit_kind(rate_exceeded(5)),
        limit_kind(concurrency_exceeded(2)),
        limit_kind(GatewayError(Code.TRAFFIC_LIMIT_EXCEEDED)),
        limit_kind(GatewayError(Code.PACKAGE_NO_CREDITS)),
        limit_kind(GatewayError(Code.TOO_MANY_CONNECTIONS)),
    }
    assert kinds == set(LIMIT_KINDS)
    reasons = {
        auth_reason(GatewayError(Code.ERR_AUTH_REQUIRED)),
        auth_reason(GatewayError(Code.AUTH_FAILED)),
        auth_reason(GatewayError(Code.AUTH_FAILED, "Malformed Proxy-Authorization header")),
        auth_reason(GatewayError(Code.IP_NOT_ALLOWED)),
        auth_reason(GatewayError(Code.AUTH_THROTTLED)),
    }
    assert reasons == set(AUTH_REASONS)
    for code in Code:  # anything else is neither
        err = GatewayError(code)
        assert limit_kind(err) in (*LIMIT_KINDS, None)
        assert auth_reason(err) in (*AUTH_REASONS, None)
    stats = LiveStats()
    stats.refused(GatewayError(Code.NODE_NOT_FOUND))
    assert not stats.limit_rejections and not stats.auth_failures


def test_bytes_add_the_metered_and_the_unmetered_parts() -> None:
    stats = LiveStats()
    stats.metered = lambda: (1000, 2000)
    tally = Tally(stats)
    tally.tick_up(5)
    tally.tick_down(7)
    assert (tally.up, tally.down) == (5, 7)
    assert stats.bytes() == (1005, 2007)
    snap = stats.snapshot()
    assert (snap["bytes_up"], snap["bytes_down"]) == (1005, 2007)
