"""UDP pieces below the wire tests: the agent framing, the ASSOCIATE request, exit capability,
the UDP network filter, and the hub's stream marker."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exitgate.admission import Admitted, DestinationPolicy
from exitgate.errors import Code, GatewayError
from exitgate.hub.protocol import is_udp, parse_connect, udp_allows_private, udp_headers
from exitgate.hub.udp_frames import MAX_FRAME, FrameDecoder, encode_frame
from exitgate.model import Network, Node, NodeAttrs, NodeKind, Package, Protocol, Target
from exitgate.net.udp_assoc import UdpService
from exitgate.net.udp_route import UdpRouter, udp_capable
from exitgate.routing.failover import Router
from exitgate.routing.health import NodeHealth
from exitgate.routing.index import NodeIndex
from exitgate.routing.select import Filters
from exitgate.routing.sessions import SessionTable
from exitgate.rules import Catalogue, Entitlements, parse_rules
from exitgate.settings import UdpSettings
from exitgate.store.sessions import MemorySessionStore
from exitgate.wire.socks5 import Command, Request, Socks5Server
from exitgate.wire.socks5_udp import parse_datagram

# -- framing ---------------------------------------------------------------------------------


def test_frames_round_trip_split_anywhere() -> None:
    frames = [encode_frame("127.0.0.1", 53, b"a" * n) for n in (0, 1, 300)]
    frames.append(encode_frame("example.com", 443, b"quic"))
    stream = b"".join(frames)
    for cut in range(len(stream) + 1):
        decoder = FrameDecoder()
        got = decoder.feed(stream[:cut]) + decoder.feed(stream[cut:])
        assert [parse_datagram(g).payload for g in got] == [b"", b"a", b"a" * 300, b"quic"]
    assert parse_datagram(FrameDecoder().feed(frames[-1])[0]).target == Target("example.com", 443)


def test_a_frame_is_bounded() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        encode_frame("127.0.0.1", 53, b"x" * MAX_FRAME)


@given(st.lists(st.binary(max_size=200), max_size=20), st.integers(1, 50))
def test_frames_in_any_chunking(payloads: list[bytes], chunk: int) -> None:
    stream = b"".join(encode_frame("10.0.0.1", 9, p) for p in payloads)
    decoder = FrameDecoder()
    got: list[bytes] = []
    for at in range(0, len(stream), chunk):
        got += decoder.feed(stream[at : at + chunk])
    assert [parse_datagram(g).payload for g in got] == payloads


@given(st.lists(st.binary(max_size=3000), max_size=30))
def test_junk_never_breaks_the_decoder_and_stays_bounded(chunks: list[bytes]) -> None:
    decoder = FrameDecoder()
    for chunk in chunks:
        for frame in decoder.feed(chunk):
            assert len(frame) <= MAX_FRAME
        assert len(decoder._buf) < 2 + MAX_FRAME  # at most one partial frame is held


def test_the_udp_stream_marker() -> None:
    headers = udp_headers(allow_private=True)
    assert is_udp(headers) and udp_allows_private(headers)
    assert not udp_allows_private(udp_headers(allow_private=False))
    plain = [(b":method", b"CONNECT"), (b":authority", b"example.com:443")]
    assert not is_udp(plain)
    # an agent that predates UDP reads it as a TCP tunnel to a name that never resolves
    assert parse_connect(headers, 10).target.host.endswith(".invalid")


# -- the ASSOCIATE request -------------------------------------------------------------------


def _request(raw: bytes) -> Request:
    srv = Socks5Server()
    srv.receive_data(b"\x05\x01\x00")
    srv.next_event()
    srv.select_method(0)
    srv.receive_data(raw)
    event = srv.next_event()
    assert isinstance(event, Request)
    return event


def test_udp_associate_request() -> None:
    got = _request(b"\x05\x03\x00\x01\x7f\x00\x00\x01\x30\x39")
    assert got == Request(Command.UDP_ASSOCIATE, Target("127.0.0.1", 12345))


def test_an_unusable_associate_address_is_unspecified_with_its_port() -> None:
    # PySocks declares ("0", port) as a name
    got = _request(b"\x05\x03\x00\x03\x010\x30\x39")
    assert got == Request(Command.UDP_ASSOCIATE, Target("0.0.0.0", 12345))


# -- capability and networks -----------------------------------------------------------------


def _router(index: NodeIndex) -> Router:
    clock = time.monotonic
    return Router(index, NodeHealth(clock), SessionTable(MemorySessionStore(60.0), clock))


def _node(node_id: str, kind: NodeKind, url: str = "", network: Network = Network.RES) -> Node:
    return Node(node_id, kind, NodeAttrs(country="us", network=network), url=url)


def test_udp_capability_by_kind() -> None:
    assert udp_capable(_node("d", NodeKind.DIRECT))
    assert udp_capable(_node("a", NodeKind.AGENT))
    assert udp_capable(_node("s", NodeKind.UPSTREAM, "socks5://u:p@127.0.0.1:1080"))
    assert not udp_capable(_node("h", NodeKind.UPSTREAM, "http://127.0.0.1:3128"))
    assert not udp_capable(_node("x", NodeKind.UPSTREAM, "garbage"))


async def test_selection_never_returns_an_http_upstream() -> None:
    index = NodeIndex()
    for i in range(30):
        index.upsert(_node(f"h{i}", NodeKind.UPSTREAM, f"http://127.0.0.1:{3000 + i}"))
    index.upsert(_node("s", NodeKind.UPSTREAM, "socks5://127.0.0.1:1080"))
    router = UdpRouter.sharing(_router(index))
    for _ in range(20):
        node = router.select(Filters(), (), None)
        assert node is not None and node.id == "s"
    assert router.select(Filters(), ("s",), None) is None


def _admitted(username: str) -> Admitted:
    package = Package("p", "o", "n", "h")
    rules = parse_rules(username, Catalogue(frozenset(), frozenset(), frozenset()), Entitlements())
    filters = Filters(networks=rules.networks)
    return Admitted(package, rules, Target("udp-associate", 0), Protocol.UDP, filters)


async def test_udp_networks_narrow_the_filters_or_refuse() -> None:
    router = _router(NodeIndex())
    service = UdpService.build(UdpSettings(), router, DestinationPolicy(), 1.0)
    assert service.filters(_admitted("country-us")).networks == {Network.RES, Network.MOB}
    assert service.filters(_admitted("country-us-network-mob")).networks == {Network.MOB}
    with pytest.raises(GatewayError) as caught:
        service.filters(_admitted("country-us-network-dc"))
    assert caught.value.code is Code.DISALLOWED
    assert "dc" in caught.value.detail
    await asyncio.sleep(0)
