"""Routing a request to a working exit: the `Router`'s attempt loop, with dialing.

`routing.failover` decides (sessions, rotation, onerror policies, health, lookalike); this
module only dials what it is told and reports back. Target errors (`GatewayError` from the
dialer) end the attempt at once: another node would meet the same target, and the node gets
no verdict. The `Route` holds the node's health lease until the tunnel or request ends
(`Connector.done`), so selection sees in-flight load.

A forwarded request may reuse the client's kept target connection: when the router picks
the node that connection goes through, no new dial is needed (`reuse`).

Per-domain choice and bans (issue 13): the router gets the target's domain, so it spreads
sessionless requests over the domain's exits and avoids banned ones; `ban_requested` applies
an `X-Exitgate-Ban` request header and `response_status` a package's automatic bans.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from exitgate.admission import Admitted
from exitgate.errors import GatewayError
from exitgate.model import Node
from exitgate.net.conn import Conn
from exitgate.net.dial import Dialer, NodeFailure
from exitgate.observe.node_figures import ConnectFigures
from exitgate.observe.stats import LiveStats
from exitgate.routing.attempts import Fail
from exitgate.routing.domains import domain_of
from exitgate.routing.failover import Router
from exitgate.routing.health import Lease
from exitgate.routing.index import NodeIndex
from exitgate.routing.sessions import SessionOutcome

Reuse = Callable[[Node], Conn | None]


class Route:
    """A request's way out: the exit connection, its node, and what the router holds for it.

    Written out, not a frozen dataclass: one is made per request, and a dataclass's generated
    __init__ stays interpreted in the compiled build (docs/decisions.md)."""

    __slots__ = ("conn", "connect_started", "connected", "exit", "lease", "node", "session")
    conn: Final[Conn]
    node: Final[Node]
    session: Final[SessionOutcome | None]  # None: the request has no session
    lease: Final[Lease | None]  # the node's in-flight slot, for `Connector.done`
    # time.monotonic() when routing began and when the exit connection was ready (0.0: a kept
    # connection, no routing); the exit IP the target sees, when known. For the access log.
    connect_started: Final[float]
    connected: Final[float]
    exit: Final[str | None]

    def __init__(
        self,
        conn: Conn,
        node: Node,
        *,
        session: SessionOutcome | None = None,
        lease: Lease | None = None,
        connect_started: float = 0.0,
        connected: float = 0.0,
        exit: str | None = None,  # the exit address, as the access log names it
    ) -> None:
        self.conn = conn
        self.node = node
        self.session = session
        self.lease = lease
        self.connect_started = connect_started
        self.connected = connected
        self.exit = exit


class Connector:
    def __init__(
        self,
        index: NodeIndex,
        dialer: Dialer,
        router: Router,
        stats: LiveStats | None = None,
        figures: ConnectFigures | None = None,
    ) -> None:
        self.index = index
        self.dialer = dialer
        self.router = router
        self.stats = stats if stats is not None else LiveStats()
        self.figures = figures if figures is not None else ConnectFigures()  # the dashboard's

    async def connect(self, admitted: Admitted, reuse: Reuse | None = None) -> Route:
        """Gates 6 (session rules) and 7 (select, dial, fail over) for one request."""
        try:
            return await self._connect(admitted, reuse)
        except GatewayError as exc:
            exc.package_id = admitted.package.id
            raise

    async def _connect(self, admitted: Admitted, reuse: Reuse | None) -> Route:
        began = time.monotonic()
        attempt = await self.router.begin(
            admitted.package.id,
            admitted.rules,
            admitted.filters,
            domain_of(admitted.target.host),
            admitted.timings,
        )
        try:
            while True:
                step = await attempt.next()
                if isinstance(step, Fail):
                    raise step.error()
                conn = reuse(step.node) if reuse is not None else None
                if conn is None:
                    dialing = time.monotonic()
                    try:
                        conn = await self.dialer.dial(step.node, admitted.target)
                    except NodeFailure as exc:
                        self.figures.failed(step.node.id)
                        attempt.failed(exc.detail)
                        continue
                    except GatewayError:
                        await attempt.target_failed()
                        raise
                    took = time.monotonic() - dialing
                    self.stats.observe_connect(step.node.kind, took)
                    self.figures.connected(step.node.id, took)
                ok = await attempt.succeeded()
                return Route(
                    conn,
                    ok.node,
                    session=ok.session,
                    lease=ok.lease,
                    connect_started=began,
                    connected=time.monotonic(),
                    exit=ok.node.ip or None,
                )
        finally:
            attempt.close()

    async def ban_requested(self, admitted: Admitted, value: str) -> None:
        """An `X-Exitgate-Ban` header on a request: ban before this request is routed.
        GatewayError ERR_INVALID_VALUE for a malformed header or an unknown exit."""
        bans = self.router.bans
        if bans is None:
            return
        try:
            await bans.request(
                admitted.package.id,
                admitted.target.host,
                value,
                lambda node_id: self.index.get(node_id) is not None,
            )
        except GatewayError as exc:
            exc.package_id = admitted.package.id
            raise

    async def response_status(self, admitted: Admitted, node: Node, status: int) -> None:
        """A forwarded response's status: the package's automatic ban, if configured."""
        autoban = admitted.package.autoban
        bans = self.router.bans
        if autoban is None or bans is None or status not in autoban.statuses:
            return
        domain = domain_of(admitted.target.host)
        await bans.ban(admitted.package.id, domain, node.id, autoban.ttl, f"status {status}")

    def done(self, route: Route) -> None:
        """The tunnel or request is over: give the node's in-flight slot back."""
        if route.lease is not None:
            self.router.health.release(route.lease)
