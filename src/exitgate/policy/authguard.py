"""Brute-force defence: failed authentications throttled per client address, pure.

`AuthThrottle` counts the failures (AUTH_FAILED: a wrong key, on HTTP or RFC 1929) of each
client address in a sliding window. The `max_failures`-th failure within `window` seconds
blocks the address for `cooldown` seconds: admission then answers AUTH_THROTTLED (429; SOCKS5
status 0x01) before it looks at any key, so a blocked guesser learns nothing. Other addresses
are unaffected. `max_failures = 0` turns blocking off (failures are still counted for the log).

An IPv6 client is keyed by its /64: one host holds a whole /64 and could otherwise rotate
through it. Memory is bounded: at most `max_addresses` addresses are tracked, least recently
failing first out, and each keeps at most `max_failures` timestamps.

The log is aggregated too: `reports()` hands out, at most once per `report_every` seconds per
address, one summary of the failures (and throttled refusals) since its last summary; the
caller logs it. Never one line per failure, never a key.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    max_failures: int = 20  # failures within `window` that block; 0: never block
    window: float = 60.0
    cooldown: float = 60.0
    report_every: float = 10.0
    max_addresses: int = 10_000


@dataclass(frozen=True, slots=True)
class FailureReport:
    """One log summary: `failed` wrong keys and `refused` throttled tries in `seconds`."""

    address: str
    failed: int
    refused: int
    seconds: float
    blocked: bool

    def message(self) -> str:
        text = f"{self.address}: {self.failed:,} failed authentications"
        if self.refused:
            text += f" and {self.refused:,} throttled attempts"
        seconds = f"{self.seconds:.0f}" if self.seconds >= 10 else f"{self.seconds:.1f}"
        text += f" in the last {seconds} s"
        return text + (" (blocked)" if self.blocked else "")


@dataclass(slots=True)
class _Record:
    times: deque[float]
    blocked_until: float = float("-inf")
    failed: int = 0  # since the last report
    refused: int = 0
    reported_at: float = 0.0


def address_key(address: str) -> str:
    """The unit a client is throttled as: the IPv4 address, or the /64 of an IPv6 one."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass(slots=True)
class AuthThrottle:
    policy: ThrottlePolicy
    clock: Callable[[], float]
    _records: OrderedDict[str, _Record] = field(default_factory=OrderedDict)

    def blocked(self, address: str) -> bool:
        """True while `address` cools down (the try is counted as refused)."""
        records = self._records
        if not records:  # the usual case: nobody failed lately, no address to normalise
            return False
        record = records.get(address_key(address))
        if record is None or self.clock() >= record.blocked_until:
            return False
        record.refused += 1
        return True

    def failed(self, address: str) -> None:
        """One failed authentication from `address`."""
        now = self.clock()
        policy = self.policy
        key = address_key(address)
        record = self._records.get(key)
        if record is None:
            record = _Record(deque(maxlen=max(policy.max_failures, 1)), reported_at=now)
            self._records[key] = record
            while len(self._records) > policy.max_addresses:
                self._records.popitem(last=False)
        else:
            self._records.move_to_end(key)
        record.failed += 1
        if policy.max_failures <= 0:
            return
        times = record.times
        times.append(now)
        if len(times) == policy.max_failures and now - times[0] <= policy.window:
            record.blocked_until = now + policy.cooldown
            times.clear()

    def reports(self) -> list[FailureReport]:
        """Summaries due now; forgets addresses with nothing left to remember."""
        now = self.clock()
        due: list[FailureReport] = []
        stale: list[str] = []
        for key, record in self._records.items():
            if (record.failed or record.refused) and now - record.reported_at >= (
                self.policy.report_every
            ):
                due.append(
                    FailureReport(
                        key,
                        record.failed,
                        record.refused,
                        now - record.reported_at,
                        now < record.blocked_until,
                    )
                )
                record.failed = record.refused = 0
                record.reported_at = now
            elif (
                not record.failed
                and not record.refused
                and now >= record.blocked_until
                and (not record.times or now - record.times[-1] > self.policy.window)
            ):
                stale.append(key)
        for key in stale:
            del self._records[key]
        return due

    def __len__(self) -> int:
        return len(self._records)
