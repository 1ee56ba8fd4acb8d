"""The agent's identity and attributes: id state file, flag checks, learned values, backoff."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from exitgate.agent.client import backoff
from exitgate.agent.identity import (
    Flags,
    Learned,
    agent_id,
    check_flags,
    merge,
    parse_ipinfo,
    with_ip,
)
from exitgate.model import Network, NodeAttrs


def test_given_id_wins_and_is_checked(tmp_path: Path) -> None:
    assert agent_id("home-1", tmp_path / "id") == "home-1"
    assert not (tmp_path / "id").exists()
    with pytest.raises(ValueError, match="--id"):
        agent_id("bad id", tmp_path / "id")


def test_generated_id_is_kept_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "state" / "agent-id"
    first = agent_id("", path)
    assert first.startswith("agent-")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert agent_id("", path) == first
    path.write_text("garbage id with spaces\n")
    assert agent_id("", path) != first  # unusable content: a fresh id


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (Flags(country="US"), "--country: country 'US'"),
        (Flags(city="New York"), "did you mean new_york?"),
        (Flags(isp="AT&T Wireless"), "did you mean at_t_wireless?"),
        (Flags(network="wifi"), "--network"),
        (Flags(asn=-5), "--asn"),
    ],
)
def test_flags_must_be_rule_values(flags: Flags, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("?", r"\?")):
        check_flags(flags)


def test_good_flags_pass() -> None:
    check_flags(Flags("us", "new_york", "new_york", "verizon", 701, "mob"))


def test_flags_win_over_learned_values() -> None:
    learned = Learned("198.51.100.4", "DE", "Bavaria", "München", "Deutsche Telekom AG", "")
    assert merge(Flags(), learned) == NodeAttrs(
        "de", "bavaria", "munchen", "deutsche_telekom_ag", 0, Network.RES
    )
    assert merge(Flags(country="at", city="vienna", network="dc"), learned) == NodeAttrs(
        "at", "bavaria", "vienna", "deutsche_telekom_ag", 0, Network.DC
    )


def test_a_carrier_means_mobile_unless_told_otherwise() -> None:
    learned = Learned(country="US", carrier="Verizon Wireless")
    assert merge(Flags(), learned).network is Network.MOB
    assert merge(Flags(), learned).isp == "verizon_wireless"
    assert merge(Flags(network="res"), learned).network is Network.RES


def test_bad_learned_values_are_dropped_not_fatal() -> None:
    learned = Learned(country="XX", city="!!!")
    assert merge(Flags(isp="comcast"), learned) == NodeAttrs(isp="comcast", network=Network.RES)


def test_parse_ipinfo() -> None:
    body = {
        "status": True,
        "reason": "",
        "data": {"ip": "127.0.0.5", "country_code": "US", "country_name": "United States",
                 "region": "California", "city": "Los Angeles", "isp": "", "carrier": ""},
    }
    learned = parse_ipinfo(body)
    assert learned == Learned("127.0.0.5", "US", "California", "Los Angeles", "", "")
    assert with_ip(learned, "10.0.0.1") == "127.0.0.5"
    assert with_ip(None, "10.0.0.1") == "10.0.0.1"
    for bad in ({"status": False}, [], {"status": True, "data": "x"},
                {"status": True, "data": {"ip": "nope"}}):
        with pytest.raises(ValueError):
            parse_ipinfo(bad)


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    for attempt in range(12):
        ceiling = min(30.0, 0.5 * 2**attempt)
        delays = [backoff(attempt, 0.5, 30.0) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        if attempt > 2:
            assert len({round(d, 6) for d in delays}) > 1  # jittered
    assert backoff(10_000, 0.5, 30.0) <= 30.0
