"""Hourly usage per package, gathered in memory and handed to the store in batches.

Theory of operation. Nothing on the proxy path waits for a database. Bytes are ticked on the
`Metering` accounts (see `policy.metering`); requests and errors are counted here, in dicts
keyed by package id (one dict update per request, never per chunk). Every flush interval
(`services.UsageService`, 1 s by default) `take()` empties all of it into one `UsageBatch`:

- one `UsageDelta` per (package, hour): bytes up and down, requests, errors by code;
- the credits to debit per organization: bytes * price of the node's network / 10^9.

The flush writes a batch in one store transaction (`AccountStore.record_usage`). If that
fails, the batch comes back (`failed`) and is merged into the next one, so a database outage
delays usage and debits, never loses them; a graceful stop flushes whatever is left; a kill -9
loses at most the last interval.

Hours. A batch covers the time since the previous take and is filed under the UTC hour in
which that interval *started*. The flusher wakes at each hour boundary (`delay`), so an
interval never spans a boundary by more than the event loop's lateness: 10:59:59.6-11:00:00
goes to 10:00, the next interval to 11:00.

The admin API reads totals and buckets from the store plus what is still here
(`unflushed`, `unflushed_rows`, `merge_buckets`), so a read right after a request sees it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from exitgate.policy.metering import Metering, Traffic
from exitgate.store.base import HOUR, UsageBucket, UsageDelta, UsageTotals, hour_of


@dataclass(frozen=True, slots=True)
class UsageBatch:
    """One flush: what to add to the store, and what to tell the meters afterwards."""

    rows: tuple[UsageDelta, ...]  # at most one per (package, hour)
    debits: Mapping[str, float] = field(default_factory=dict)  # org id → credits to subtract
    traffic: tuple[Traffic, ...] = ()  # for `Metering.committed`

    def merged(self, other: UsageBatch) -> UsageBatch:
        rows: dict[tuple[str, int], UsageDelta] = {}
        for row in (*self.rows, *other.rows):
            key = (row.package_id, row.hour)
            rows[key] = _add(rows[key], row) if key in rows else row
        debits = dict(self.debits)
        for org_id, amount in other.debits.items():
            debits[org_id] = debits.get(org_id, 0.0) + amount
        return UsageBatch(tuple(rows.values()), debits, (*self.traffic, *other.traffic))


def _add(a: UsageDelta, b: UsageDelta) -> UsageDelta:
    errors = dict(a.errors)
    for code, n in b.errors.items():
        errors[code] = errors.get(code, 0) + n
    return UsageDelta(
        a.package_id,
        a.hour,
        a.bytes_up + b.bytes_up,
        a.bytes_down + b.bytes_down,
        a.requests + b.requests,
        errors,
    )


class UsageBook:
    def __init__(self, metering: Metering, clock: Callable[[], float] = time.time) -> None:
        self.metering = metering
        self.clock = clock
        self._since = clock()
        self._requests: dict[str, int] = {}
        self._errors: dict[str, dict[str, int]] = {}
        self._retry: UsageBatch | None = None

    # -- the proxy side -----------------------------------------------------------------------
    def request(self, package_id: str) -> None:
        """One admitted request, tunnel or SOCKS connection that reached a node."""
        self._requests[package_id] = self._requests.get(package_id, 0) + 1

    def error(self, package_id: str, code: str) -> None:
        errors = self._errors.get(package_id)
        if errors is None:
            errors = self._errors[package_id] = {}
        errors[code] = errors.get(code, 0) + 1

    # -- the flush side -----------------------------------------------------------------------
    def delay(self, interval: float) -> float:
        """Seconds until the next take: the interval, cut short at the next hour boundary."""
        now = self.clock()
        return max(0.0, min(self._since + interval, hour_of(now) + HOUR) - now)

    def take(self) -> UsageBatch | None:
        """Everything not yet handed out (and any failed batch), or None when there is none."""
        hour = hour_of(self._since)
        self._since = self.clock()
        traffic = self.metering.take()
        rows: dict[str, UsageDelta] = {}
        debits: dict[str, float] = {}
        for t in traffic:
            row = UsageDelta(t.package_id, hour, t.bytes_up, t.bytes_down)
            rows[t.package_id] = _add(rows[t.package_id], row) if t.package_id in rows else row
            cost = self.metering.cost(t)
            if cost:
                debits[t.org_id] = debits.get(t.org_id, 0.0) + cost
        for package_id, n in self._requests.items():
            row = UsageDelta(package_id, hour, requests=n)
            rows[package_id] = _add(rows[package_id], row) if package_id in rows else row
        for package_id, errors in self._errors.items():
            row = UsageDelta(package_id, hour, errors=errors)
            rows[package_id] = _add(rows[package_id], row) if package_id in rows else row
        self._requests = {}
        self._errors = {}
        batch = UsageBatch(tuple(rows.values()), debits, tuple(traffic))
        if self._retry is not None:
            batch = self._retry.merged(batch)
            self._retry = None
        if not batch.rows and not batch.debits:
            return None
        return batch

    def failed(self, batch: UsageBatch) -> None:
        """The store refused `batch`: keep it for the next take."""
        self._retry = batch if self._retry is None else batch.merged(self._retry)

    # -- reads --------------------------------------------------------------------------------
    def unflushed_rows(self, package_id: str) -> list[UsageDelta]:
        """The package's usage not in the store yet, as the rows a flush would write."""
        found: list[UsageDelta] = []
        if self._retry is not None:
            found.extend(r for r in self._retry.rows if r.package_id == package_id)
        up, down = self.metering.unflushed(package_id)
        now = UsageDelta(
            package_id,
            hour_of(self._since),
            up,
            down,
            self._requests.get(package_id, 0),
            dict(self._errors.get(package_id, {})),
        )
        if not now.empty:
            found.append(now)
        return found

    def unflushed(self, package_id: str) -> UsageTotals:
        total = UsageTotals()
        for row in self.unflushed_rows(package_id):
            total += UsageTotals(row.bytes_up, row.bytes_down, row.requests)
        return total


def merge_buckets(
    stored: Iterable[UsageBucket],
    live: Iterable[UsageDelta],
    since: int | None = None,
    until: int | None = None,
    limit: int | None = None,
) -> list[UsageBucket]:
    """Stored buckets plus unflushed rows, newest first, within [since, until), at most
    `limit`."""
    by_hour = {b.hour: b for b in stored}
    for row in live:
        if (since is not None and row.hour < since) or (until is not None and row.hour >= until):
            continue
        old = by_hour.get(row.hour, UsageBucket(row.hour))
        errors = dict(old.errors)
        for code, n in row.errors.items():
            errors[code] = errors.get(code, 0) + n
        by_hour[row.hour] = UsageBucket(
            row.hour,
            old.bytes_up + row.bytes_up,
            old.bytes_down + row.bytes_down,
            old.requests + row.requests,
            dict(sorted(errors.items())),
        )
    merged = sorted(by_hour.values(), key=lambda b: b.hour, reverse=True)
    return merged if limit is None else merged[:limit]
