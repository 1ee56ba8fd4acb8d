"""What happened to each package: requests, bytes, and the recent-errors log.

The proxy edges call `Recorder` methods on the hot path; they only touch memory. Durable
hourly usage (flushed in batches) plugs in behind the same interface.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from exitgate.errors import GatewayError

RECENT_ERRORS = 200


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    at: float
    code: str
    detail: str
    protocol: str
    client: str
    target: str

    def as_dict(self) -> dict[str, object]:
        return {
            "time": self.at,
            "code": self.code,
            "detail": self.detail,
            "protocol": self.protocol,
            "client": self.client,
            "target": self.target,
        }


@dataclass(slots=True)
class Counters:
    bytes_up: int = 0
    bytes_down: int = 0
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class Recorder:
    def __init__(self) -> None:
        self.totals: dict[str, Counters] = {}
        self.recent: dict[str, deque[ErrorEvent]] = {}
        self.anonymous_errors: deque[ErrorEvent] = deque(maxlen=RECENT_ERRORS)

    def _counters(self, package_id: str) -> Counters:
        counters = self.totals.get(package_id)
        if counters is None:
            counters = self.totals[package_id] = Counters()
        return counters

    def request(self, package_id: str) -> None:
        self._counters(package_id).requests += 1

    def traffic(self, package_id: str, up: int, down: int) -> None:
        counters = self._counters(package_id)
        counters.bytes_up += up
        counters.bytes_down += down

    def error(
        self,
        package_id: str | None,
        err: GatewayError,
        *,
        protocol: str,
        client: str,
        target: str = "",
    ) -> None:
        event = ErrorEvent(time.time(), str(err.code), err.detail, protocol, client, target)
        if package_id is None:
            self.anonymous_errors.append(event)
            return
        log = self.recent.get(package_id)
        if log is None:
            log = self.recent[package_id] = deque(maxlen=RECENT_ERRORS)
        log.append(event)
        errors = self._counters(package_id).errors
        errors[err.code] = errors.get(err.code, 0) + 1

    def usage(self, package_id: str) -> dict[str, int]:
        counters = self.totals.get(package_id) or Counters()
        return {
            "bytes_up": counters.bytes_up,
            "bytes_down": counters.bytes_down,
            "requests": counters.requests,
        }

    def recent_errors(self, package_id: str) -> list[dict[str, object]]:
        return [event.as_dict() for event in reversed(self.recent.get(package_id, ()))]
