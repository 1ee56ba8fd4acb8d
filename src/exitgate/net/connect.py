"""Routing a request to a working exit: select, dial, replace on node failure.

Without a session every request may take a different node; a node that fails before any byte
of the target's answer was relayed is replaced by another matching node, up to
`MAX_REPLACEMENTS` times. Target errors (`GatewayError` from the dialer) end the attempt at
once: another node would meet the same target.
"""

from __future__ import annotations

from dataclasses import dataclass

from exitgate.admission import Admitted
from exitgate.errors import Code, GatewayError
from exitgate.model import Node
from exitgate.net.conn import Conn
from exitgate.net.dial import Dialer, NodeFailure
from exitgate.routing.index import NodeIndex

MAX_REPLACEMENTS = 3


@dataclass(frozen=True, slots=True)
class Route:
    conn: Conn
    node: Node


class Connector:
    def __init__(self, index: NodeIndex, dialer: Dialer) -> None:
        self.index = index
        self.dialer = dialer

    async def connect(self, admitted: Admitted) -> Route:
        try:
            return await self._connect(admitted)
        except GatewayError as exc:
            exc.package_id = admitted.package.id
            raise

    async def _connect(self, admitted: Admitted) -> Route:
        tried: list[str] = []
        last: NodeFailure | None = None
        for _ in range(MAX_REPLACEMENTS + 1):
            node = self.index.select(admitted.filters, exclude=tried)
            if node is None:
                break
            try:
                conn = await self.dialer.dial(node, admitted.target)
            except NodeFailure as exc:
                tried.append(node.id)
                last = exc
                continue
            return Route(conn, node)
        if last is None:
            raise GatewayError(
                Code.NODE_NOT_FOUND, f"No nodes matching {admitted.filters.describe()}"
            )
        raise GatewayError(Code.NODE_UNAVAILABLE, last.detail)
