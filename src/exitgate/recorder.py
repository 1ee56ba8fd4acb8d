"""The recent-errors log: what went wrong for each package, newest first (SPEC 6).

Kept in memory, bounded per package, for every protocol, so a SOCKS5 user (who sees only a
reply byte) can read the exact code. Counts of errors by code go to the durable hourly usage.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

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


class Recorder:
    def __init__(self) -> None:
        self.recent: dict[str, deque[ErrorEvent]] = {}
        # set with a shared store: every event also goes there (store/redis_errors.py)
        self.sink: Callable[[str, ErrorEvent], None] | None = None

    def error(
        self,
        package_id: str | None,
        err: GatewayError,
        *,
        protocol: str,
        client: str,
        target: str = "",
    ) -> None:
        if package_id is None:
            return  # no package to show it to (an unknown key, say): the log line is all
        event = ErrorEvent(time.time(), str(err.code), err.detail, protocol, client, target)
        log = self.recent.get(package_id)
        if log is None:
            log = self.recent[package_id] = deque(maxlen=RECENT_ERRORS)
        log.append(event)
        if self.sink is not None:
            self.sink(package_id, event)

    def recent_errors(self, package_id: str) -> list[dict[str, object]]:
        return [event.as_dict() for event in reversed(self.recent.get(package_id, ()))]
