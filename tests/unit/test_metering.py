"""Live traffic accounts (policy.metering): exact counts, caps, credits, stop callbacks."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exitgate.errors import Code, GatewayError
from exitgate.model import Limits, Network, Org, Package
from exitgate.policy.metering import GB, SLICE, Metering
from exitgate.store.base import UsageTotals

MiB = 1024 * 1024
CHUNK = 256 * 1024  # the largest read a transport hands to data_received


class Orgs:
    """The registry's org lookup."""

    def __init__(self, *orgs: Org) -> None:
        self.by_id = {o.id: o for o in orgs}

    def __call__(self, org_id: str) -> Org | None:
        return self.by_id.get(org_id)

    def put(self, org: Org) -> None:
        self.by_id[org.id] = org


def pkg(cap: int | None = None, pid: str = "pkg_1", org: str = "org_1") -> Package:
    return Package(pid, org, "p", "h", limits=Limits(traffic_bytes=cap))


class Stops:
    def __init__(self) -> None:
        self.seen: list[GatewayError] = []

    def __call__(self, err: GatewayError) -> None:
        self.seen.append(err)

    @property
    def codes(self) -> list[Code]:
        return [e.code for e in self.seen]


def test_counts_are_exact_per_direction_and_network() -> None:
    m = Metering(Orgs(Org("org_1", "o", None)))
    p = pkg()
    with m.open(p, Network.RES) as a, m.open(p, Network.DC) as b:
        for n in (1, 2, 3):
            a.tick_up(n)
            b.tick_down(n * 10)
        a.tick_down(7)
    assert m.used(p.id) == 6 + 60 + 7
    assert m.unflushed(p.id) == (6, 67)
    taken = {(t.network, t.bytes_up, t.bytes_down) for t in m.take()}
    assert taken == {(Network.RES, 6, 7), (Network.DC, 0, 60)}
    assert m.unflushed(p.id) == (0, 0) and m.take() == []
    assert m.used(p.id) == 73  # taking for a flush does not change what was used


def test_cap_check_at_admission() -> None:
    m = Metering(Orgs(Org("org_1", "o", None)))
    p = pkg(cap=1000)
    meter = m.open(p, Network.DC)
    meter.tick_up(999)
    m.check(p)  # 1 byte left: admitted
    meter.tick_down(1)
    with pytest.raises(GatewayError) as info:
        m.check(p)
    assert info.value.code is Code.TRAFFIC_LIMIT_EXCEEDED
    assert info.value.detail == "Traffic limit reached (1000 bytes)"
    m.check(replace(p, limits=Limits(traffic_bytes=1001)))  # a raised cap admits again
    with pytest.raises(GatewayError):
        m.check(pkg(cap=0, pid="zero"))  # 0: nothing at all


def test_stop_fires_on_the_crossing_chunk_once_for_every_connection() -> None:
    m = Metering(Orgs(Org("org_1", "o", None)))
    p = pkg(cap=10 * MiB)
    stops = [Stops() for _ in range(3)]
    meters = [m.open(p, Network.RES, s) for s in stops]
    quiet = m.open(p, Network.RES)  # a meter with no stop callback is only counted
    sent = 0
    while not stops[0].seen:
        meters[sent // CHUNK % 3].tick_up(CHUNK - 1)
        sent += CHUNK - 1
        assert sent < 11 * MiB
    assert sent >= 10 * MiB > sent - (CHUNK - 1)  # stopped by exactly the chunk that crossed
    assert all(s.codes == [Code.TRAFFIC_LIMIT_EXCEEDED] for s in stops)
    for meter in meters:
        meter.tick_down(CHUNK)  # bytes still in flight while closing: counted, no second stop
    quiet.tick_up(1)
    assert all(len(s.seen) == 1 for s in stops)
    assert m.used(p.id) == sent + 3 * CHUNK + 1


def test_closed_meters_are_not_stopped_and_close_twice_is_safe() -> None:
    m = Metering(Orgs(Org("org_1", "o", None)))
    p = pkg(cap=100)
    gone, live = Stops(), Stops()
    first = m.open(p, Network.DC, gone)
    first.tick_up(50)
    first.close()
    first.close()
    m.open(p, Network.DC, live).tick_up(50)
    assert gone.seen == [] and live.codes == [Code.TRAFFIC_LIMIT_EXCEEDED]


@given(
    cap=st.integers(0, 3 * MiB),
    chunks=st.lists(st.tuples(st.integers(0, 3), st.integers(1, CHUNK)), min_size=1),
)
def test_overshoot_is_at_most_the_crossing_chunk(cap: int, chunks: list[tuple[int, int]]) -> None:
    m = Metering(Orgs(Org("org_1", "o", None)))
    p = pkg(cap=cap)
    stops = Stops()
    nets = list(Network)
    meters = [m.open(p, nets[i % 3], stops) for i in range(4)]
    sent = 0
    for which, n in chunks:
        before = sent
        (meters[which].tick_up if n % 2 else meters[which].tick_down)(n)
        sent += n
        if stops.seen:
            assert before < cap <= sent or cap == 0  # the first chunk at/over the cap stops
            break
        assert sent < cap
    assert m.used(p.id) == sent


def test_credits_view_is_live_and_priced_per_network() -> None:
    orgs = Orgs(Org("org_1", "o", 10.0))
    m = Metering(orgs, {"res": 2.0, "mob": 4.0, "dc": 0.5})
    p = pkg()
    with m.open(p, Network.RES) as res, m.open(p, Network.DC) as dc:
        res.tick_up(GB // 2)  # 1.0 credit
        dc.tick_down(GB)  # 0.5 credit
        m.check(p)  # settle folds the package's bytes into the org's pending cost
    assert m.credits_left(orgs.by_id["org_1"]) == pytest.approx(8.5)
    assert not m.out_of_credits(orgs.by_id["org_1"])
    assert m.credits_left(Org("org_2", "x", 3.0)) == 3.0  # no traffic yet
    assert m.credits_left(Org("org_3", "x", None)) is None
    assert m.out_of_credits(Org("org_4", "x", 0.0)) and m.out_of_credits(Org("o", "x", -1.0))


def test_out_of_credits_stops_every_package_of_the_org() -> None:
    # 0.001 credit at 1.0 per GB buys 1_000_000 bytes
    orgs = Orgs(Org("org_1", "o", 0.001), Org("org_2", "other", 0.001))
    m = Metering(orgs, {"res": 1.0, "mob": 1.0, "dc": 1.0})
    a, b, other = pkg(pid="a"), pkg(pid="b"), pkg(pid="c", org="org_2")
    sa, sb, so = Stops(), Stops(), Stops()
    ma = m.open(a, Network.RES, sa)
    m.open(b, Network.DC, sb)
    m.open(other, Network.RES, so)
    sent = 0
    while not sa.seen:
        ma.tick_up(4096)
        sent += 4096
        assert sent < 2_000_000
    assert sa.codes == sb.codes == [Code.PACKAGE_NO_CREDITS]
    assert so.seen == []
    # one package active: at most one chunk past the 1_000_000 bytes the credits bought
    assert 1_000_000 <= sent < 1_000_000 + 4096
    assert m.out_of_credits(orgs.by_id["org_1"])


def test_org_overshoot_is_bounded_by_a_slice_per_active_package() -> None:
    orgs = Orgs(Org("org_1", "o", 0.01))  # 10_000_000 bytes
    m = Metering(orgs)
    packages = [pkg(pid=f"p{i}") for i in range(4)]
    stops = [Stops() for _ in packages]
    meters = [m.open(p, Network.DC, s) for p, s in zip(packages, stops, strict=True)]
    sent = 0
    while not stops[0].seen:
        for meter in meters:
            meter.tick_down(8192)
            sent += 8192
    assert all(s.codes == [Code.PACKAGE_NO_CREDITS] for s in stops)
    assert sent - 10_000_000 <= len(packages) * (SLICE + 8192)


def test_flush_commit_moves_pending_into_the_registry() -> None:
    orgs = Orgs(Org("org_1", "o", 5.0))
    m = Metering(orgs)
    p = pkg()
    meter = m.open(p, Network.MOB)
    meter.tick_up(GB)
    taken = m.take()
    assert [m.cost(t) for t in taken] == [1.0]
    meter.tick_up(GB // 2)  # relayed while the flush is in flight
    m.check(p)
    assert m.credits_left(orgs.by_id["org_1"]) == pytest.approx(3.5)
    # the store debited 1.0 and the registry got the new org in the same step as `committed`
    orgs.put(Org("org_1", "o", 4.0))
    m.committed(taken, {p.id: UsageTotals(GB, 0, 0)})
    assert m.credits_left(orgs.by_id["org_1"]) == pytest.approx(3.5)
    assert m.used(p.id) == GB + GB // 2


def test_totals_from_the_store_rebase_the_cap() -> None:
    m = Metering(Orgs(Org("org_1", "o", None)))
    m.load({"pkg_1": 900})  # durable usage from before a restart
    p = pkg(cap=1000)
    m.check(p)
    meter = m.open(p, Network.DC)
    meter.tick_up(50)
    taken = m.take()
    meter.tick_up(10)
    # another instance sharing the database flushed 40 bytes of the same package meanwhile
    m.committed(taken, {p.id: UsageTotals(bytes_up=990, bytes_down=0, requests=0)})
    assert m.used(p.id) == 1000
    with pytest.raises(GatewayError):
        m.check(p)


def test_lowered_cap_is_enforced_from_the_next_chunk() -> None:
    m = Metering(Orgs(Org("org_1", "o", None)))
    stops = Stops()
    meter = m.open(pkg(cap=10 * MiB), Network.DC, stops)
    meter.tick_up(1 * MiB)
    m.account(pkg(cap=MiB))  # an admin lowered the cap; admission sees the new package value
    meter.tick_up(1)
    assert stops.codes == [Code.TRAFFIC_LIMIT_EXCEEDED]
