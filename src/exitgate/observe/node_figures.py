"""Per-node connect figures for the dashboard: how long a node takes to reach a target.

`TimedDialer` is the `Dialer` with a stopwatch around `dial`: a successful connect updates
the node's last and smoothed (EWMA, weight 0.2) connect time and its count; a `NodeFailure`
counts a failed connect. Target errors (the target refused, whatever the node) are not the
node's and are not counted. One dict update per connect, none per byte. Per-node figures
are for the dashboard and the API only, never a metric label (unbounded).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from exitgate.model import Node, Target
from exitgate.net.conn import Conn
from exitgate.net.dial import Dialer, NodeFailure

WEIGHT = 0.2  # of the newest sample in the smoothed connect time


@dataclass(slots=True)
class NodeConnects:
    connects: int = 0
    failures: int = 0
    last_ms: float = 0.0
    avg_ms: float = 0.0  # exponentially weighted


class TimedDialer(Dialer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.figures: dict[str, NodeConnects] = {}

    async def dial(self, node: Node, target: Target) -> Conn:
        figures = self.figures
        started = time.perf_counter()
        try:
            conn = await super().dial(node, target)
        except NodeFailure:
            figures.setdefault(node.id, NodeConnects()).failures += 1
            raise
        ms = (time.perf_counter() - started) * 1000
        f = figures.setdefault(node.id, NodeConnects())
        f.avg_ms = ms if f.connects == 0 else f.avg_ms + WEIGHT * (ms - f.avg_ms)
        f.connects += 1
        f.last_ms = ms
        return conn
