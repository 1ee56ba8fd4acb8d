"""The agent's side of a tunnel: connect to the target from the agent's own address.

The connecting itself is the gateway's direct dialer (`net.dial.Dialer` with a direct node
bound to `--bind`): one implementation of resolve, address policy, bind and error mapping.
Its outcome is translated into the hub protocol's failure kinds here:

    GatewayError dns_error                  → dns
    GatewayError connection_refused         → refused
    GatewayError GATEWAY_TIMEOUT            → timeout
    GatewayError DISALLOWED                 → denied
    GatewayError TARGET_UNREACHABLE (other) → unreachable (with the reason)
    NodeFailure (the bind address is unusable) → bind: the gateway treats it as a node failure
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from exitgate.admission import DestinationPolicy
from exitgate.errors import GatewayError
from exitgate.hub.protocol import ConnectRequest, Failure, failure_of
from exitgate.model import HostKind, Node, NodeAttrs, NodeKind
from exitgate.net.conn import Conn
from exitgate.net.dial import Dialer, NodeFailure


class ExitFailure(Exception):
    def __init__(self, kind: Failure, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ExitPolicy:
    bind: str = ""  # local source address; "" the system's choice
    allow_private: bool = False  # names may resolve to loopback/private addresses


async def open_target(request: ConnectRequest, policy: ExitPolicy) -> Conn:
    """A connected `Conn` to the request's target, or ExitFailure with the kind."""
    allow = policy.allow_private and request.allow_private
    dialer = Dialer(DestinationPolicy(allow_private=allow), request.timeout)
    node = Node("self", NodeKind.DIRECT, NodeAttrs(), bind_address=policy.bind)
    target = request.target
    if target.kind is not HostKind.DOMAIN:
        # The dialer checks the addresses a name resolves to; a literal is checked here.
        try:
            dialer.policy.check_address(ipaddress.ip_address(target.host))
        except GatewayError as exc:
            raise ExitFailure(Failure.DENIED, exc.detail) from None
    try:
        return await dialer.dial(node, target)
    except NodeFailure as exc:
        raise ExitFailure(Failure.BIND, exc.detail) from None
    except GatewayError as exc:
        raise ExitFailure(failure_of(exc), _reason(exc)) from None


def _reason(exc: GatewayError) -> str:
    _, sep, reason = exc.detail.partition("unreachable: ")
    return reason if sep else exc.detail
