"""Account operations for the admin API (and the CLI through it): store first, then registry;
and the background services of the policy layer: the usage flusher and the lease keeper.

Each write runs the blocking store call in a worker thread, then puts the stored record into
the `Registry` on the loop, so the proxy sees the change on its next request. Writes hold one
`asyncio.Lock` from the store call to the registry update: without it two concurrent updates
of one package could reach the registry in the opposite order from the database. Admin writes
are rare, so one lock costs nothing. Reads go to the store (the source of truth).

Input validation is the API schemas' job (422 naming the field); this layer trusts its typed
arguments and raises `NotFound` for unknown ids.

`UsageService` runs the usage flush (see `policy.usage` for the theory): every `interval`
seconds, and at each hour boundary, one `UsageBatch` goes to the store in one transaction
through `AccountService.record_usage`, which holds the same write lock as the admin writes, so
the registry's organizations (and their credits) change in store order, and which tells the
meters about the debit in the same event-loop step as it updates the registry. A write runs in
its own task, shielded: cancelling a flush never leaves a batch half-known (written, but not
marked so). `close()` stops the loop and flushes what is left.

`LeaseKeeper` renews the concurrency leases a `Limiter` holds, every TTL/3.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from exitgate import events
from exitgate.errors import GatewayError
from exitgate.events import EventBus
from exitgate.model import Network, Node, NodeKind, NodeState, Org, Package
from exitgate.policy.metering import Metering
from exitgate.policy.ratelimit import Limiter
from exitgate.policy.usage import UsageBatch, UsageBook, merge_buckets
from exitgate.registry import Registry
from exitgate.settings import BillingSettings
from exitgate.store.base import (
    AccountStore,
    NewNode,
    NewPackage,
    NodeUpdate,
    OrgUpdate,
    PackageUpdate,
    UsageBucket,
    UsageDelta,
    UsageRecorded,
    UsageTotals,
    hour_of,
)
from exitgate.store.keys import hash_key, new_key
from exitgate.tasks import spawn

log = logging.getLogger("exitgate.usage")


@dataclass(frozen=True, slots=True)
class NodeFilter:
    """Node list filters; None: any. Names are compared as stored (lowercase, `_`)."""

    kind: NodeKind | None = None
    state: NodeState | None = None
    country: str | None = None
    region: str | None = None
    city: str | None = None
    isp: str | None = None
    asn: int | None = None
    network: Network | None = None

    def matches(self, node: Node) -> bool:
        a = node.attrs
        checks = (
            (self.kind, node.kind),
            (self.state, node.state),
            (self.country, a.country),
            (self.region, a.region),
            (self.city, a.city),
            (self.isp, a.isp),
            (self.asn, a.asn),
            (self.network, a.network),
        )
        return all(want is None or want == have for want, have in checks)


class AccountService:
    def __init__(self, store: AccountStore, registry: Registry) -> None:
        self.store = store
        self.registry = registry
        self._write = asyncio.Lock()
        self.events = EventBus()  # the gateway's bus (app.py); alone, events go nowhere

    # organizations

    async def create_org(self, name: str, credits: float | None) -> Org:
        async with self._write:
            org = await asyncio.to_thread(self.store.create_org, name, credits)
            self.registry.put_org(org)
        return org

    async def get_org(self, org_id: str) -> Org:
        return await asyncio.to_thread(self.store.get_org, org_id)

    async def update_org(self, org_id: str, update: OrgUpdate) -> Org:
        async with self._write:
            org = await asyncio.to_thread(self.store.update_org, org_id, update)
            self.registry.put_org(org)
        return org

    async def add_credits(self, org_id: str, delta: float) -> Org:
        async with self._write:
            org = await asyncio.to_thread(self.store.add_credits, org_id, delta)
            self.registry.put_org(org)
        return org

    async def list_orgs(self) -> list[Org]:
        return await asyncio.to_thread(self.store.list_orgs)

    async def record_usage(
        self,
        deltas: Sequence[UsageDelta],
        debits: Mapping[str, float],
        after: Callable[[UsageRecorded], None] | None = None,
    ) -> UsageRecorded:
        """Write one usage flush; put the debited orgs in the registry and call `after` in the
        same event-loop step (nothing else sees the registry in between)."""
        async with self._write:
            result = await asyncio.to_thread(self.store.record_usage, deltas, debits)
            for org in result.orgs:
                self.registry.put_org(org, quiet=True)
            if after is not None:
                try:
                    after(result)
                except Exception:  # the write happened: never report it as failed
                    log.exception("after-commit step of a usage flush failed")
        return result

    # packages

    async def create_package(self, new: NewPackage) -> tuple[Package, str]:
        """The stored package and its key: the only time the key exists in clear."""
        key = new_key()
        async with self._write:
            package = await asyncio.to_thread(self.store.create_package, new, hash_key(key))
            self.registry.put_package(package)
        return package, key

    async def get_package(self, package_id: str) -> Package:
        return await asyncio.to_thread(self.store.get_package, package_id)

    async def update_package(self, package_id: str, update: PackageUpdate) -> Package:
        async with self._write:
            before = self.registry.package(package_id)
            package = await asyncio.to_thread(self.store.update_package, package_id, update)
            self.registry.put_package(package)
        if before is not None and before.status is not package.status:
            change = {"from": before.status.value, "to": package.status.value}
            data = {"package_id": package.id, "org_id": package.org_id, **change}
            self.events.emit(events.PACKAGE_STATUS_CHANGED, package.org_id, data)
        return package

    async def rotate_key(self, package_id: str) -> str:
        """A new key for the package; the old one fails from the next request on."""
        key = new_key()
        async with self._write:
            package = await asyncio.to_thread(self.store.set_key_hash, package_id, hash_key(key))
            self.registry.put_package(package)
        return key

    async def list_packages(self, org_id: str | None = None) -> list[Package]:
        return await asyncio.to_thread(self.store.list_packages, org_id)

    # nodes

    async def create_node(self, new: NewNode) -> Node:
        async with self._write:
            node = await asyncio.to_thread(self.store.create_node, new)
            self.registry.put_node(node)
        return node

    async def get_node(self, node_id: str) -> Node:
        return await asyncio.to_thread(self.store.get_node, node_id)

    async def list_nodes(self, filters: NodeFilter | None = None) -> list[Node]:
        found = await asyncio.to_thread(self.store.list_nodes)
        if filters is None:
            return found
        return [n for n in found if filters.matches(n)]

    async def update_node(self, node_id: str, update: NodeUpdate) -> Node:
        async with self._write:
            node = await asyncio.to_thread(self.store.update_node, node_id, update)
            self.registry.put_node(node)
        return node

    async def sync_agent_nodes(
        self, online: Sequence[NewNode], offline: Sequence[str]
    ) -> list[Node]:
        """Many agent nodes in one store transaction (the hub's batched writes): one turn of
        the write lock for a burst of registrations instead of one each."""
        async with self._write:
            found = await asyncio.to_thread(self.store.sync_agents, online, offline)
            for node in found:
                self.registry.put_node(node)
        return found

    async def delete_node(self, node_id: str) -> None:
        async with self._write:
            await asyncio.to_thread(self.store.delete_node, node_id)
            self.registry.remove_node(node_id)


# -- usage


class UsageService:
    """The usage flush, and reads of usage for the admin API."""

    def __init__(
        self,
        accounts: AccountService,
        billing: BillingSettings | None = None,
        *,
        interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.accounts = accounts
        self.interval = interval
        prices = billing.price_per_gb if billing is not None else None
        self.metering = Metering(accounts.registry.org, prices)
        self.book = UsageBook(self.metering, clock)
        self._lock = asyncio.Lock()  # one flush at a time; reads never see a batch in flight
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[bool]] = set()
        self.shared = False  # several instances write this store: re-base caps every interval
        # wall time of the last flush that left nothing behind (`/metrics` shows the lag)
        self.flushed_at = time.time()

    # -- life ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Seed the traffic caps with the stored totals, then flush in the background."""
        totals = await asyncio.to_thread(self.accounts.store.usage_totals)
        self.metering.load({package_id: t.traffic for package_id, t in totals.items()})
        self._task = spawn(self._run(), "usage-flush")

    async def close(self) -> None:
        """Stop the loop and flush what is left (the relays should be closed first)."""
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
            self._task = None
        if not await self.flush():
            log.error("usage not written at shutdown: the last interval is lost")
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.book.delay(self.interval))
            if self._stop.is_set():
                return  # close() does the last flush
            await self.flush()
            if self.shared:
                await self.rebase()

    async def rebase(self) -> None:
        """Several instances: take in the other instances' bytes of every capped package.

        A flush re-bases the packages it wrote; this covers the packages this instance did
        not relay for lately, so a package over its cap is refused (and its open tunnels cut
        at their next byte) on every instance within one interval of the instance that
        crossed it writing its usage. Overshoot: at most what each instance relays for the
        package in one flush interval plus one metering slice (docs/deploy.md)."""
        capped = [
            p.id for p in self.accounts.registry.packages.values() if p.limits.traffic_bytes
        ]
        if not capped:
            return
        async with self._lock:
            try:
                totals = await asyncio.to_thread(self.accounts.store.usage_totals, capped)
            except Exception as exc:
                log.debug("usage totals not re-read: %s", exc)
                return
            self.metering.load({package_id: t.traffic for package_id, t in totals.items()})

    # -- the proxy side -----------------------------------------------------------------------
    def request(self, package_id: str) -> None:
        self.book.request(package_id)

    def error(self, package_id: str, code: str) -> None:
        self.book.error(package_id, code)

    def limit_reached(self, err: GatewayError) -> None:
        """`package.limit.reached` for a limit rejection, at most once a minute per package
        and limit (the bus throttles by key); anything else is ignored, cheaply."""
        limit = events.limit_of(err)
        package = self.accounts.registry.package(err.package_id or "") if limit else None
        if package is not None:
            data = {"package_id": package.id, "org_id": package.org_id, "limit": limit}
            self.accounts.events.emit(
                events.PACKAGE_LIMIT_REACHED, package.org_id, data, key=(package.id, limit)
            )

    # -- flushing -----------------------------------------------------------------------------
    async def flush(self) -> bool:
        """Write everything not yet written; False when the store failed (kept for later)."""
        async with self._lock:
            taken = time.time()
            batch = self.book.take()
            if batch is None:
                self.flushed_at = taken
                return True
            write = spawn(self._write(batch), "usage-write")
            self._writes.add(write)
            write.add_done_callback(self._writes.discard)
            ok = await asyncio.shield(write)
            if ok:
                self.flushed_at = taken
            return ok

    async def _write(self, batch: UsageBatch) -> bool:
        def after(result: UsageRecorded) -> None:
            self.metering.committed(batch.traffic, result.totals)

        try:
            await self.accounts.record_usage(batch.rows, batch.debits, after)
        except Exception as exc:
            log.warning("usage flush failed, retrying with the next one: %s", exc)
            self.book.failed(batch)
            return False
        return True

    # -- reads --------------------------------------------------------------------------------
    async def totals(self, package_id: str) -> dict[str, int]:
        """{bytes_up, bytes_down, requests}: the store's totals plus what is not written yet
        (the admin API's `usage_provider`)."""
        async with self._lock:
            stored = await asyncio.to_thread(self.accounts.store.usage_totals, [package_id])
            live = self.book.unflushed(package_id)
        return (stored.get(package_id, UsageTotals()) + live).as_dict()

    async def buckets(
        self,
        package_id: str,
        since: float | None = None,
        until: float | None = None,
        limit: int = 1000,
    ) -> list[UsageBucket]:
        """Hourly buckets overlapping [since, until) (epoch seconds), newest first."""
        first = None if since is None else hour_of(since)
        # A bucket starting before `until` overlaps [.., until): an exclusive bound, rounded up.
        last = None if until is None else -int(-until // 1)
        store = self.accounts.store
        async with self._lock:
            stored = await asyncio.to_thread(store.usage_buckets, package_id, first, last, limit)
            live = self.book.unflushed_rows(package_id)
        return merge_buckets(stored, live, first, last, limit)


# -- limits


class LeaseKeeper:
    """Renews a limiter's concurrency leases well before they expire."""

    def __init__(self, limiter: Limiter, interval: float | None = None) -> None:
        self.limiter = limiter
        self.interval = interval if interval is not None else limiter.lease_ttl / 3
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = spawn(self._run(), "lease-renewal")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.limiter.renew()
            except Exception as exc:  # a backend hiccup: the next round tries again
                log.warning("lease renewal failed: %s", exc)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
