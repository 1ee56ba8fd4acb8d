"""The pure parts of webhooks: signing, the retry schedule, level hysteresis, matching, the
event bus, destination rules."""

from __future__ import annotations

import base64
import ipaddress
import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from exitgate.errors import Code, GatewayError
from exitgate.events import Event, EventBus, limit_of
from exitgate.policy.ratelimit import concurrency_exceeded, rate_exceeded
from exitgate.store.webhooks import EndpointRecord
from exitgate.webhooks.delivery import pinned
from exitgate.webhooks.guard import Destination, DestinationRefused, check_url, is_public
from exitgate.webhooks.policy import (
    CREDITS_EXHAUSTED,
    CREDITS_LOW,
    CREDITS_OK,
    RetryPolicy,
    credit_level,
    pool_degraded,
    usage_level,
)
from exitgate.webhooks.service import body_of, matches
from exitgate.webhooks.signing import headers, key_of, new_secret, signature

# -- signing


@given(
    msg_id=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40),
    text=st.text(max_size=2000),  # bodies are JSON: UTF-8 text
)
def test_signature_verifies_with_the_reference_library(msg_id: str, text: str) -> None:
    body = text.encode("utf-8")
    secret = new_secret()
    signed = headers(key_of(secret), msg_id, int(time.time()), body)
    Webhook(secret).verify(body, signed, json_parse=False)  # raises when it does not verify


def test_signature_matches_the_spec_example() -> None:
    # the example of the Standard Webhooks spec (and its reference libraries' tests)
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    msg_id = "msg_p5jXN8AQM9LWM0D4loKWxJek"
    ts = 1614265330
    body = b'{"test": 2432232314}'
    assert signature(key_of(secret), msg_id, ts, body) == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_a_tampered_body_or_wrong_secret_fails() -> None:
    secret = new_secret()
    ts = int(time.time())
    body = b'{"type":"x"}'
    signed = headers(key_of(secret), "msg_1", ts, body)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b'{"type":"y"}', signed)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, signed)


def test_secrets() -> None:
    a, b = new_secret(), new_secret()
    assert a != b and a.startswith("whsec_") and len(key_of(a)) == 32
    for bad in ("secret", "whsec_!!!", "whsec_" + base64.b64encode(b"short").decode()):
        with pytest.raises(ValueError):
            key_of(bad)


# -- retry schedule


@given(st.integers(1, 200), st.floats(0, 1, exclude_max=True))
def test_retry_delay_bounds(attempt: int, draw: float) -> None:
    policy = RetryPolicy(base=5.0, max_delay=3600.0, max_attempts=10)
    nominal = policy.nominal(attempt)
    delay = policy.delay(attempt, draw)
    assert nominal / 2 <= delay <= nominal <= 3600.0
    assert policy.nominal(attempt + 1) >= nominal  # never shorter than the last


def test_retry_schedule_documented() -> None:
    policy = RetryPolicy()
    assert [policy.nominal(n) for n in range(1, 10)] == [
        5, 15, 45, 135, 405, 1215, 3600, 3600, 3600
    ]
    assert not policy.gives_up(9) and policy.gives_up(10)


# -- usage thresholds


@given(
    cap=st.integers(1, 10**12),
    steps=st.lists(st.integers(0, 10**11), min_size=1, max_size=40),
)
def test_growing_usage_fires_each_level_once_in_order(cap: int, steps: list[int]) -> None:
    fired, used, seen = 0, 0, []
    for step in steps:
        used += step
        fired, new = usage_level(fired, used, cap)
        seen.extend(new)
    assert seen == sorted(set(seen))  # each at most once, lowest first
    assert seen == [lv for lv in (50, 80, 90, 100) if used * 100 >= lv * cap]


@given(
    fired=st.sampled_from([0, 50, 80, 90, 100]),
    used=st.integers(0, 10**12),
    cap=st.one_of(st.none(), st.integers(1, 10**12)),
)
def test_usage_level_is_stable(fired: int, used: int, cap: int | None) -> None:
    level, new = usage_level(fired, used, cap)
    again, more = usage_level(level, used, cap)
    assert (again, more) == (level, ())  # the same figure never fires twice
    if new:
        assert level == new[-1] and all(lv > fired for lv in new)


def test_usage_hysteresis() -> None:
    cap = 1000
    level, new = usage_level(0, 500, cap)
    assert (level, new) == (50, (50,))
    # the cap is raised a little: 49 % is within the margin, nothing re-arms
    level, new = usage_level(level, 500, 1020)
    assert (level, new) == (50, ())
    level, new = usage_level(level, 520, 1020)
    assert new == ()
    # raised a lot: 500 of 2000 is 25 %, the 50 % level re-arms and fires again at 50 %
    level, new = usage_level(level, 500, 2000)
    assert (level, new) == (0, ())
    assert usage_level(level, 1000, 2000) == (50, (50,))
    # no cap: every level re-arms
    assert usage_level(100, 10**9, None) == (0, ())
    # crossing several at once fires them together
    assert usage_level(0, 950, 1000) == (90, (50, 80, 90))


# -- credits


def test_credit_levels() -> None:
    low, margin = 10.0, 2.0
    assert credit_level(CREDITS_OK, 50.0, low, margin) == (CREDITS_OK, ())
    assert credit_level(CREDITS_OK, 9.0, low, margin) == (CREDITS_LOW, (CREDITS_LOW,))
    assert credit_level(CREDITS_LOW, 11.0, low, margin) == (CREDITS_LOW, ())  # inside margin
    assert credit_level(CREDITS_LOW, 12.5, low, margin) == (CREDITS_OK, ())  # re-armed
    assert credit_level(CREDITS_LOW, 0.0, low, margin) == (
        CREDITS_EXHAUSTED, (CREDITS_EXHAUSTED,)
    )
    assert credit_level(CREDITS_OK, -1.0, low, margin) == (
        CREDITS_EXHAUSTED, (CREDITS_LOW, CREDITS_EXHAUSTED)
    )
    assert credit_level(CREDITS_EXHAUSTED, 5.0, low, margin) == (CREDITS_LOW, ())  # top-up
    assert credit_level(CREDITS_EXHAUSTED, None, low, margin) == (CREDITS_OK, ())


@given(
    st.lists(st.floats(-100, 100, allow_nan=False), min_size=1, max_size=50),
    st.floats(0, 50),
    st.floats(0, 10),
)
def test_credit_events_alternate(values: list[float], low: float, margin: float) -> None:
    """Between two `low` events the pool must have gone above low + margin."""
    level, since_low_max = CREDITS_OK, float("inf")
    for left in values:
        level, fired = credit_level(level, left, low, margin)
        if CREDITS_LOW in fired:
            assert since_low_max > low + margin
            since_low_max = float("-inf")
        since_low_max = max(since_low_max, left)


# -- pools


@given(st.lists(st.integers(0, 20), min_size=1, max_size=60), st.integers(1, 10), st.integers(0, 5))
def test_pool_fires_once_per_dip(counts: list[int], minimum: int, margin: int) -> None:
    degraded, fired, dips = False, 0, 0
    armed = True
    for n in counts:
        degraded, fire = pool_degraded(degraded, n, minimum, margin)
        if n < minimum and armed:
            dips += 1
            armed = False
        if n >= minimum + margin:
            armed = True
        fired += fire
    assert fired == dips


# -- matching and payloads


def _endpoint(org_id: str | None, events: tuple[str, ...], enabled: bool = True) -> EndpointRecord:
    return EndpointRecord("whe_1", org_id, "http://x", "", events, enabled, "", "", 0.0)


def test_matching_scopes() -> None:
    org_event = Event("msg_1", "package.status.changed", "org_a", {}, 0.0)
    node_event = Event("msg_2", "node.down", None, {}, 0.0)
    assert matches(_endpoint("org_a", ("*",)), org_event)
    assert not matches(_endpoint("org_b", ("*",)), org_event)
    assert not matches(_endpoint("org_a", ("*",), enabled=False), org_event)
    assert not matches(_endpoint("org_a", ("node.down",)), org_event)
    assert not matches(_endpoint("org_a", ("*",)), node_event)  # system: only when named
    assert matches(_endpoint("org_a", ("node.down",)), node_event)
    assert matches(_endpoint(None, ("*",)), node_event)
    assert matches(_endpoint(None, ("*",)), org_event)
    assert not matches(_endpoint(None, ("node.recovered",)), node_event)


def test_body_is_the_standard_payload() -> None:
    body = body_of(Event("msg_1", "node.down", None, {"node_id": "n1"}, 1700000000.5))
    assert json.loads(body) == {
        "type": "node.down", "timestamp": "2023-11-14T22:13:20.500Z", "data": {"node_id": "n1"}
    }


# -- the bus


def test_bus_throttles_by_key_and_bounds_its_queue() -> None:
    now = [1000.0]
    bus = EventBus(capacity=3, throttle=60.0, clock=lambda: now[0])
    woken = []
    bus.on_emit(lambda: woken.append(1))
    for _ in range(5):
        bus.emit("package.limit.reached", "org", {"n": 1}, key=("pkg", "rps"))
    assert len(bus) == 1
    bus.emit("package.limit.reached", "org", {}, key=("pkg", "concurrency"))
    now[0] += 61
    bus.emit("package.limit.reached", "org", {}, key=("pkg", "rps"))
    assert len(bus) == 3
    bus.emit("node.down", None, {})
    assert len(bus) == 3 and bus.dropped == 1
    taken = bus.take()
    assert [e.type for e in taken] == ["package.limit.reached"] * 3 and len(woken) == 3
    bus.put_back(taken[1:])
    assert [e.id for e in bus.take()] == [e.id for e in taken[1:]]


def test_bus_never_raises() -> None:
    bus = EventBus(clock=lambda: 1 / 0)
    bus.emit("node.down", None, {})  # the clock fails: logged, swallowed
    assert len(bus) == 0


def test_limit_of() -> None:
    assert limit_of(rate_exceeded(3)) == "rps"
    assert limit_of(concurrency_exceeded(2)) == "concurrency"
    assert limit_of(GatewayError(Code.TRAFFIC_LIMIT_EXCEEDED)) == "traffic"
    assert limit_of(GatewayError(Code.NODE_NOT_FOUND)) is None


# -- destinations


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("127.0.0.1", False), ("10.1.2.3", False), ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("::1", False), ("fe80::1", False), ("fc00::1", False), ("::ffff:127.0.0.1", False),
        ("0.0.0.0", False), ("224.0.0.1", False), ("100.64.0.1", False),
        ("8.8.8.8", True), ("2606:4700:4700::1111", True), ("::ffff:8.8.8.8", True),
    ],
)
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize(
    "url", ["ftp://x/y", "http://", "https://user:pw@example.com/", "http://e.com/#frag", "nope"]
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(DestinationRefused):
        check_url(url)


def test_good_url() -> None:
    assert check_url("https://hooks.example.com/in") == ("https", "hooks.example.com", 443)
    assert check_url("http://[2001:db8::1]:8080/x") == ("http", "2001:db8::1", 8080)


def test_delivery_is_pinned_to_a_checked_address() -> None:
    dest = Destination("https", "hooks.example.com", 8443, ("2606:4700::1111", "1.1.1.1"))
    url, extra, extensions = pinned("https://hooks.example.com:8443/in?x=1", dest)
    assert url == "https://[2606:4700::1111]:8443/in?x=1"
    assert extra == {"host": "hooks.example.com:8443"}
    assert extensions == {"sni_hostname": "hooks.example.com"}  # TLS checks the name
    plain = Destination("http", "example.com", 80, ("93.184.216.34",))
    assert pinned("http://example.com/in", plain) == (
        "http://93.184.216.34/in", {"host": "example.com"}, {}
    )
