"""How the dialer maps resolution and connection failures (no network: a fake resolver)."""

from __future__ import annotations

import socket

import pytest

from exitgate.admission import DestinationPolicy
from exitgate.errors import Code, GatewayError, SocksReply
from exitgate.model import Node, NodeAttrs, NodeKind, Target
from exitgate.net.dial import Dialer, NodeFailure

DIRECT = Node("n1", NodeKind.DIRECT, NodeAttrs(country="us"))


def _resolver(answer: list[str] | Exception):
    async def resolve(host: str, port: int, family: int):
        if isinstance(answer, Exception):
            raise answer
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in answer]
    return resolve


async def test_dns_failure_is_target_unreachable_with_dns_error() -> None:
    dialer = Dialer(DestinationPolicy(), 2.0, resolver=_resolver(socket.gaierror(-2, "x")))
    with pytest.raises(GatewayError) as err:
        await dialer.dial(DIRECT, Target("nothing.example", 80))
    assert err.value.code is Code.TARGET_UNREACHABLE
    assert err.value.proxy_status == "dns_error"
    assert "nothing.example" in err.value.detail


async def test_a_name_resolving_to_a_private_address_is_disallowed() -> None:
    dialer = Dialer(DestinationPolicy(allow_private=False), 2.0,
                    resolver=_resolver(["127.0.0.1", "10.1.2.3"]))
    with pytest.raises(GatewayError) as err:
        await dialer.dial(DIRECT, Target("rebind.example", 80))
    assert err.value.code is Code.DISALLOWED


async def test_refused_is_target_unreachable_with_socks_reply_05() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dialer = Dialer(DestinationPolicy(allow_private=True), 2.0)
    with pytest.raises(GatewayError) as err:
        await dialer.dial(DIRECT, Target("127.0.0.1", port))
    assert err.value.code is Code.TARGET_UNREACHABLE
    assert err.value.socks_reply is SocksReply.CONNECTION_REFUSED


async def test_an_unusable_source_address_is_a_node_failure() -> None:
    node = Node("n2", NodeKind.DIRECT, NodeAttrs(), bind_address="192.0.2.1")  # not local
    dialer = Dialer(DestinationPolicy(allow_private=True), 2.0)
    with pytest.raises(NodeFailure):
        await dialer.dial(node, Target("127.0.0.1", 9))


async def test_address_family_mismatch_is_target_unreachable() -> None:
    node = Node("n3", NodeKind.DIRECT, NodeAttrs(), bind_address="127.0.0.1")
    dialer = Dialer(DestinationPolicy(allow_private=True), 2.0)
    with pytest.raises(GatewayError) as err:
        await dialer.dial(node, Target("::1", 80))
    assert err.value.code is Code.TARGET_UNREACHABLE


async def test_agent_node_without_hub_is_a_node_failure() -> None:
    node = Node("a1", NodeKind.AGENT, NodeAttrs())
    with pytest.raises(NodeFailure):
        await Dialer(DestinationPolicy(), 2.0).dial(node, Target("1.1.1.1", 80))
