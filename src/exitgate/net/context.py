"""What every per-connection handler needs, built once by the application."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from exitgate.admission import Admission, Admitted
from exitgate.errors import Code, GatewayError
from exitgate.model import Node
from exitgate.net.conn import Conn
from exitgate.net.connect import Connector
from exitgate.observe.stats import LiveStats
from exitgate.policy.metering import Meter
from exitgate.recorder import Recorder
from exitgate.services import UsageService
from exitgate.settings import ExitSettings, ProxySettings

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
    # live figures for the dashboard (issue 11); the minimum wiring, the metrics work owns more
    stats: LiveStats = field(default_factory=LiveStats)
    node_bytes: dict[str, list[int]] = field(default_factory=dict)  # node id → [up, down]

    def rejected(self, err: GatewayError, *, protocol: str, client: str, target: str = "") -> None:
        """Every error, whatever the protocol, lands in the package's recent-errors log."""
        self.recorder.error(err.package_id, err, protocol=protocol, client=client, target=target)
        self.stats.outcome(protocol, str(err.code))
        if err.package_id is not None:
            self.usage.error(err.package_id, err.code)
        if err.code not in _SUMMARISED:  # those: one summary per address (auth_reports)
            log.info("%s %s %s: %s %s", protocol, client, target or "-", err.code, err.detail)

    def meter(
        self, admitted: Admitted, node: Node, on_stop: Callable[[GatewayError], None]
    ) -> Meter | None:
        """The live account one relayed connection ticks (None with `[proxy] metering` off,
        a benchmark variant: then nothing is counted and caps are not enforced)."""
        self.usage.request(admitted.package.id)
        stats = self.stats
        stats.outcome(str(admitted.protocol), "OK")
        if not self.proxy.metering:
            return None
        meter = self.usage.metering.open(admitted.package, node.attrs.network, on_stop)
        up, down = meter.tick_up, meter.tick_down
        cell = self.node_bytes.setdefault(node.id, [0, 0])

        def tick_up(n: int) -> None:
            stats.bytes_up += n
            cell[0] += n
            up(n)

        def tick_down(n: int) -> None:
            stats.bytes_down += n
            cell[1] += n
            down(n)

        meter.tick_up, meter.tick_down = tick_up, tick_down
        return meter

    @staticmethod
    def ticks(meter: Meter | None) -> tuple[Callable[[int], None], Callable[[int], None]]:
        if meter is None:
            return uncounted, uncounted
        return meter.tick_up, meter.tick_down
