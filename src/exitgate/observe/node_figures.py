"""Per-node connect figures for the dashboard: how long a node takes to reach a target.

`ConnectFigures` is kept by the `Connector`, which times every dial anyway (for the connect
histogram): a successful connect updates the node's last and smoothed (EWMA, weight 0.2)
connect time and its count; a `NodeFailure` counts a failed connect. Target errors (the
target refused, whatever the node) are not the node's and are not counted. One dict update
per connect, none per byte, and no layer of its own around the dial. Per-node figures are
for the dashboard and the API only, never a metric label (unbounded).
"""

from __future__ import annotations

from dataclasses import dataclass

from mypy_extensions import mypyc_attr

WEIGHT = 0.2  # of the newest sample in the smoothed connect time


@dataclass(slots=True)
class NodeConnects:
    connects: int = 0
    failures: int = 0
    last_ms: float = 0.0
    avg_ms: float = 0.0  # exponentially weighted


@mypyc_attr(native_class=False)  # a dict subclass: mypyc cannot make it native
class ConnectFigures(dict[str, NodeConnects]):
    """node id → its connect figures."""

    def connected(self, node_id: str, seconds: float) -> None:
        ms = seconds * 1000
        f = self.get(node_id)
        if f is None:
            f = self[node_id] = NodeConnects()
        f.avg_ms = ms if f.connects == 0 else f.avg_ms + WEIGHT * (ms - f.avg_ms)
        f.connects += 1
        f.last_ms = ms

    def failed(self, node_id: str) -> None:
        f = self.get(node_id)
        if f is None:
            f = self[node_id] = NodeConnects()
        f.failures += 1
