"""What every per-connection handler needs, built once by the application."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from exitgate.admission import Admission, Admitted
from exitgate.errors import Code, GatewayError
from exitgate.model import Node, Protocol
from exitgate.net.conn import Conn
from exitgate.net.connect import Connector, Route
from exitgate.net.loglimit import LogLimiter
from exitgate.observe.accesslog import AccessLog
from exitgate.observe.stats import LiveStats, Tally
from exitgate.policy.metering import Meter
from exitgate.recorder import Recorder
from exitgate.services import UsageService
from exitgate.settings import ExitSettings, ProxySettings

if TYPE_CHECKING:
    from exitgate.net.udp_assoc import UdpService

log = logging.getLogger("exitgate.proxy")
_SUMMARISED = frozenset({Code.AUTH_FAILED, Code.AUTH_THROTTLED})


def uncounted(n: int) -> None:
    """The tick of a byte count nobody keeps (metering off, or before a request)."""
    return None


def _nothing(conn: Conn) -> None:
    return None


@dataclass(slots=True)
class ProxyContext:
    proxy: ProxySettings
    exit: ExitSettings
    admission: Admission
    connector: Connector
    recorder: Recorder
    usage: UsageService
    # the listener's bookkeeping, told when a spliced tunnel (which has no task) is over
    on_tunnel_end: Callable[[Conn], None] = _nothing
    # warnings a client or website can repeat at will: at most one line per address a minute
    warnings: LogLimiter = field(default_factory=lambda: LogLimiter(log))
    # SOCKS5 UDP ASSOCIATE (net/udp_assoc.py); None: answered "command not supported"
    udp: UdpService | None = None
    stats: LiveStats = field(default_factory=LiveStats)  # the live figures /metrics reads
    accesslog: AccessLog | None = None  # None: `[accesslog] target = "off"`
    # node id → [up, down] relayed (the Nodes page); added once per request, never per chunk
    node_bytes: dict[str, list[int]] = field(default_factory=dict)

    def rejected(
        self,
        err: GatewayError,
        *,
        protocol: str,
        client: str,
        target: str = "",
        started: float = 0.0,
        final: bool = True,
    ) -> None:
        """Every error, whatever the protocol, lands in the package's recent-errors log.

        `final`: the error ends the request here (counted, one access-log line); False for
        a stop mid-relay, whose request is counted and logged once, where it ends (`served`).
        `started`: time.monotonic() when the request arrived (0.0: unknown)."""
        self.recorder.error(err.package_id, err, protocol=protocol, client=client, target=target)
        if err.package_id is not None:
            self.usage.error(err.package_id, err.code)
            self.usage.limit_reached(err)
        if err.code not in _SUMMARISED:  # those: one summary per address (auth_reports)
            log.info("%s %s %s: %s %s", protocol, client, target or "-", err.code, err.detail)
        stats = self.stats
        stats.refused(err)
        if not final:
            return
        stats.outcome(protocol, err.code)
        ended = time.monotonic()
        if started:
            stats.observe_request(protocol, ended - started)
        if self.accesslog is not None:
            if protocol != Protocol.SOCKS5:
                status = err.spec.status
            else:  # the reply byte, or RFC 1929's failure status for credential errors
                status = 1 if err.spec.socks_auth else int(err.socks_reply)
            self.accesslog.put(
                (time.time(), client, err.package_id, protocol, target, None, None, None,
                 err.code, status, 0, 0, started, 0.0, 0.0, ended)
            )  # fmt: skip

    def served(
        self,
        admitted: Admitted,
        client: str,
        route: Route,
        meter: Meter | Tally,
        *,
        started: float,
        code: str = "OK",
        status: int = 200,
    ) -> None:
        """A tunnel, SOCKS5 connection or forwarded request that was relayed has ended
        (`code`: OK, or the error that stopped it mid-relay). No formatting here: the access
        log gets the objects, its writer thread makes the line."""
        ended = time.monotonic()
        protocol = admitted.protocol
        stats = self.stats
        stats.outcome(protocol, code)
        if started:
            stats.observe_request(protocol, ended - started)
        counted = self.node_bytes.get(route.node.id)
        if counted is None:
            counted = self.node_bytes[route.node.id] = [0, 0]
        counted[0] += meter.up
        counted[1] += meter.down
        log = self.accesslog
        if log is None:
            return
        if len(log.queue) >= log.capacity:  # full: drop before building anything
            stats.accesslog_dropped += 1
            return
        log.put(
            (time.time(), client, admitted.package.id, protocol, admitted.target,
             admitted.rules, route.node.id, route.exit, code, status, meter.up, meter.down,
             started, route.connect_started, route.connected, ended)
        )  # fmt: skip

    def meter(
        self, admitted: Admitted, node: Node, on_stop: Callable[[GatewayError], None]
    ) -> Meter | Tally:
        """The live account one relayed connection ticks. With `[proxy] metering` off (a
        benchmark variant) a `Tally` only counts bytes; caps are not enforced."""
        self.usage.request(admitted.package.id)
        if not self.proxy.metering:
            return Tally(self.stats)
        return self.usage.metering.open(admitted.package, node.attrs.network, on_stop)

    @staticmethod
    def ticks(meter: Meter | Tally) -> tuple[Callable[[int], None], Callable[[int], None]]:
        return meter.tick_up, meter.tick_down
