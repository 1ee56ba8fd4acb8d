"""The composition root: builds every part from `Settings` and runs them in one event loop.

    store ─▶ registry (in memory) ─▶ admission, node index ─▶ proxy listeners
                      ▲
    admin API ─▶ services (write store, then registry)

Nothing else constructs long-lived objects; tests start a `Gateway` in-process with a
`Settings` of their own (port 0 everywhere) and read the bound addresses back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Awaitable
from dataclasses import dataclass

import uvicorn
from redis.asyncio import Redis

from exitgate.admission import Admission, DestinationPolicy, Lease
from exitgate.app_admin import start_admin
from exitgate.auth_reports import report_failures, throttle_from
from exitgate.cluster.directory import AgentDirectory
from exitgate.cluster.health import HealthBoard
from exitgate.cluster.interlink import Interlink
from exitgate.events import EventBus
from exitgate.hub.server import Hub, build_hub
from exitgate.model import Node, Package
from exitgate.net.connect import Connector
from exitgate.net.context import ProxyContext
from exitgate.net.dial import Dialer
from exitgate.net.server import ProxyServer, tls_context
from exitgate.net.udp_assoc import UdpService
from exitgate.observe.accesslog import AccessLog
from exitgate.observe.node_figures import ConnectFigures, NodeConnects
from exitgate.observe.stats import LiveStats
from exitgate.policy.ratelimit import Limiter
from exitgate.recorder import Recorder
from exitgate.registry import Registry, Snapshot
from exitgate.routing.domains import BanTable, DomainMemory
from exitgate.routing.failover import Router
from exitgate.routing.health import NodeHealth
from exitgate.routing.index import NodeIndex
from exitgate.routing.sessions import SessionTable
from exitgate.services import AccountService, LeaseKeeper, UsageService
from exitgate.settings import Settings
from exitgate.store.bans import MemoryBanStore
from exitgate.store.base import AccountStore, open_store
from exitgate.store.changes import ChangeFeed
from exitgate.store.counters import Counters, open_counters
from exitgate.store.degraded import FailoverCounters
from exitgate.store.history import HistoryStore, HistoryWriter
from exitgate.store.redis_errors import RedisErrorLog
from exitgate.store.redis_sessions import RedisClock, RedisSessionStore
from exitgate.store.sessions import MemorySessionStore
from exitgate.tasks import spawn
from exitgate.webhooks.service import WebhookService
from exitgate.webhooks.vault import Vault

log = logging.getLogger("exitgate")
TOKEN_FILE = "admin.token"  # noqa: S105 - a file name
HUB_TOKEN_FILE = "hub.token"  # noqa: S105 - a file name
WEBHOOK_KEY_FILE = "webhooks.key"
REFRESH_SECONDS = 2.0  # how often an instance on a shared database re-reads accounts
CLOCK_SYNC_SECONDS = 30.0  # how often the session clock re-measures its offset to Redis


@dataclass(frozen=True, slots=True)
class Bound:
    proxy: tuple[str, int]
    admin: tuple[str, int]
    extra: tuple[tuple[str, int], ...] = ()
    hub: tuple[str, int] | None = None

    @property
    def proxy_url(self) -> str:
        return f"{self.proxy[0]}:{self.proxy[1]}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.admin[0]}:{self.admin[1]}"


def stored_secret(settings: Settings, configured: str, name: str) -> tuple[str, bool]:
    """The configured secret, else the one stored in the data dir, else a new one (0600).

    Returns (secret, generated): a generated admin token is printed once by `serve`.
    """
    if configured:
        return configured, False
    path = settings.data_dir / name
    with contextlib.suppress(FileNotFoundError):
        stored = path.read_text().strip()
        if stored:
            return stored, False
    secret = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    return secret, True


def webhook_key(settings: Settings) -> str:
    """What seals webhook secrets: `[webhooks] secret_key`, else the `webhooks.key` file; an
    in-memory store gets a key of its own (its secrets die with it anyway)."""
    if settings.store.url in ("sqlite://", "sqlite:///:memory:"):
        return settings.webhooks.secret_key or secrets.token_urlsafe(32)
    return stored_secret(settings, settings.webhooks.secret_key, WEBHOOK_KEY_FILE)[0]


def admin_token(settings: Settings) -> tuple[str, bool]:
    return stored_secret(settings, settings.admin.token, TOKEN_FILE)


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store: AccountStore | None = None
        self.registry = Registry(
            extra_regions=settings.geo.regions,
            extra_cities=settings.geo.cities,
            extra_isps=settings.geo.isps,
        )
        self.index = NodeIndex()
        self.health = NodeHealth(time.monotonic)
        self.sessions = SessionTable(
            MemorySessionStore(settings.sessions.idle_timeout), time.time
        )
        self.router: Router | None = None
        domains = settings.domains
        self.bans = BanTable(
            MemoryBanStore(domains.max_bans),
            DomainMemory(domains.memory, domains.exits_per_domain),
            time.time,
        )
        self.hub: Hub | None = None
        self._expiry: asyncio.Task[None] | None = None
        self._refresh: asyncio.Task[None] | None = None
        self._clock_sync: asyncio.Task[None] | None = None
        self.interlink: Interlink | None = None
        self.changes: ChangeFeed | None = None
        self.error_log: RedisErrorLog | None = None
        self.instance_id = f"inst-{secrets.token_hex(6)}"  # this process, in shared state
        self.health_board: HealthBoard | None = None
        self.recorder = Recorder()
        self.throttle = throttle_from(settings.auth)  # failed authentications per address
        self._auth_log: asyncio.Task[None] | None = None
        self.stats = LiveStats()  # the data path's live figures: /metrics, the dashboard
        self.accesslog: AccessLog | None = None
        hooks = settings.webhooks
        # webhooks off: a bus that keeps nothing (every emit is a counted drop)
        capacity = 10_000 if hooks.enabled else 0
        self.events = EventBus(capacity=capacity, throttle=hooks.limit_event_interval)
        self.webhooks: WebhookService | None = None
        self.proxy: ProxyServer | None = None
        self.service: AccountService | None = None
        self.usage: UsageService | None = None
        self.counters: Counters | None = None
        self.limiter: Limiter | None = None
        self.keeper: LeaseKeeper | None = None
        self.token = ""
        self.token_generated = False
        self.admin_server: uvicorn.Server | None = None
        self.admin_task: asyncio.Task[None] | None = None
        self.history: HistoryWriter | None = None  # the dashboard's per-minute sampler
        self.proxy_bound: tuple[str, int] = ("127.0.0.1", 0)
        self.node_connects: dict[str, NodeConnects] = ConnectFigures()
        self.node_bytes: dict[str, list[int]] = {}  # node id → [up, down], by ProxyContext

    def _on_node(self, node: Node | None, node_id: str) -> None:
        if node is None:
            self.index.remove(node_id)
            self.health.forget(node_id)
            self.node_bytes.pop(node_id, None)  # per-node figures: as many as there are nodes
            self.node_connects.pop(node_id, None)
        else:
            self.index.upsert(node)

    async def _refresh_registry(self, store: AccountStore) -> None:
        """Re-read the shared database when another instance announced a change (`ChangeFeed`),
        and every REFRESH_SECONDS whatever. A snapshot read while a local write landed is
        dropped and read again: it may predate that write."""
        nudge = self.changes.wanted if self.changes is not None else asyncio.Event()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(nudge.wait(), REFRESH_SECONDS)
            nudge.clear()
            for _ in range(5):
                generation = self.registry.generation
                try:
                    snapshot = await asyncio.to_thread(Snapshot.read, store)
                except Exception as exc:
                    log.warning("registry refresh failed: %s", exc)
                    break
                if self.registry.generation == generation:
                    self.registry.apply(snapshot)
                    break

    async def _expire_sessions(self) -> None:
        interval = min(5.0, self.settings.sessions.idle_timeout / 2)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sessions.expire()
                await self.bans.expire()
            except Exception as exc:  # a shared backend's hiccup: the next round retries
                log.warning("session expiry failed: %s", exc)

    async def _share_sessions(self) -> None:
        """Sessions in Redis (issue 9): any instance keeps, rotates, lists and ends any session,
        on Redis's clock rather than this host's."""
        store = RedisSessionStore(
            self.settings.store.redis_url,
            self.settings.sessions.idle_timeout,
            prefix=self.settings.store.redis_prefix,
            server_time=True,  # every script reads Redis's TIME (issue 9)
        )
        clock = RedisClock(store.redis)  # the table's own `now`; the scripts read TIME
        try:
            await clock.sync()
        except Exception as exc:  # Redis down at start: local time until the next sync
            log.warning("Redis clock not read (%s): using this host's clock for now", exc)
        self.sessions = SessionTable(store, clock)
        self._clock_sync = spawn(self._sync_clock(clock), "redis-clock")

    async def _sync_clock(self, clock: RedisClock) -> None:
        while True:
            await asyncio.sleep(CLOCK_SYNC_SECONDS)
            try:
                await clock.sync()
            except Exception as exc:
                log.warning("Redis clock sync failed: %s", exc)

    async def _join_cluster(self, hub: Hub, hub_token: str) -> None:
        """The agent directory and the interlink (issue 9): agents held here serve the other
        instances' requests, and theirs serve ours."""
        cluster = self.settings.cluster
        redis = Redis.from_url(self.settings.store.redis_url)
        directory = AgentDirectory(
            redis, self.instance_id, "",
            prefix=self.settings.store.redis_prefix, ttl=cluster.directory_ttl,
        )
        self.interlink = Interlink(hub, directory, cluster.token or hub_token)
        host, port = await self.interlink.start(cluster.listen)
        advertise = cluster.advertise
        if advertise.endswith(":0"):  # `--workers`: the advertised host, with the port we got
            advertise = f"{advertise[:-2]}:{port}"
        directory.addr = advertise or f"{host}:{port}"
        log.info("cluster interlink on %s:%d as %s", host, port, directory.instance)

    async def start(self) -> Bound:
        settings = self.settings
        self.store = store = await asyncio.to_thread(open_store, settings.store.url)
        self.registry.on_node_change(self._on_node)
        await asyncio.to_thread(self.registry.load, store)
        self.service = AccountService(store, self.registry)
        self.service.events = self.events
        self.usage = UsageService(self.service, settings.billing)
        await self.usage.start()
        self.counters = open_counters(settings.store.redis_url, settings.store.redis_prefix)
        if isinstance(self.counters, FailoverCounters):
            self.counters.instance = self.instance_id
            self.counters.start()
        self.limiter = Limiter(self.counters, lease_ttl=settings.store.lease_ttl)
        if settings.store.redis_url:
            await self._share_sessions()
            self.changes = ChangeFeed(
                Redis.from_url(settings.store.redis_url), prefix=settings.store.redis_prefix
            )
            self.registry.on_write = self.changes.changed
            self.changes.start()
            self.error_log = RedisErrorLog(
                Redis.from_url(settings.store.redis_url), prefix=settings.store.redis_prefix
            )
            self.recorder.sink = self.error_log.add
            self.health_board = HealthBoard(
                Redis.from_url(settings.store.redis_url), self.instance_id, self.health.summary,
                prefix=settings.store.redis_prefix,
            )
            self.health_board.start()
        self.keeper = LeaseKeeper(self.limiter)
        await self.keeper.start()
        metering = self.usage.metering
        self.stats.metered = metering.relayed
        limiter = self.limiter

        def gate5(package: Package) -> Awaitable[Lease]:
            return limiter.admit(package, then=metering.check)

        policy = DestinationPolicy(
            allow_private=settings.exit.allow_private,
            allow_ports=frozenset(settings.exit.allow_ports),
        )
        admission = Admission(
            self.registry,
            policy,
            limits=gate5,
            credits_exhausted=metering.out_of_credits,
            throttle=self.throttle,
        )
        self._auth_log = spawn(report_failures(self.throttle), "auth-failure-log")
        hub_token, _ = stored_secret(settings, settings.hub.token, HUB_TOKEN_FILE)
        # other instances (or `--workers`) write the same store: PostgreSQL, or SQLite + Redis
        shared = bool(settings.store.redis_url) or not settings.store.url.startswith("sqlite")
        self.usage.shared = shared
        self.hub = build_hub(
            settings.hub.model_copy(update={"token": hub_token}),
            self.service,
            self.registry,
            allow_private=settings.exit.allow_private,
            # several instances on one database: never sweep agents another instance holds
            shared_store=shared,
        )
        dialer = Dialer(policy, settings.exit.connect_timeout, agent_dialer=self.hub.dial)
        figures = ConnectFigures()
        self.node_connects = figures  # per-node connect times for the dashboard
        self.router = Router(
            self.index, self.health, self.sessions, bans=self.bans, memory=self.bans.memory
        )
        self._expiry = spawn(self._expire_sessions(), "session-expiry")
        if shared:
            # A shared database: other instances write too. Re-read it (the registry's
            # `apply` notifies only real changes, so the node index follows cheaply).
            self._refresh = spawn(self._refresh_registry(store), "registry-refresh")
        if settings.accesslog.target != "off":
            self.accesslog = AccessLog(
                settings.accesslog.target,
                self.stats,
                capacity=settings.accesslog.queue,
                interval=settings.accesslog.flush_interval,
            )
            self.accesslog.start()
        ctx = ProxyContext(
            proxy=settings.proxy,
            exit=settings.exit,
            admission=admission,
            connector=Connector(self.index, dialer, self.router, self.stats, figures),
            recorder=self.recorder,
            usage=self.usage,
            stats=self.stats,
            accesslog=self.accesslog,
            node_bytes=self.node_bytes,
        )
        ctx.udp = UdpService.build(
            settings.udp, self.router, policy, settings.exit.connect_timeout, self.hub
        )
        tls = None
        if settings.proxy.tls_cert:
            tls = tls_context(settings.proxy.tls_cert, settings.proxy.tls_key)
        self.proxy = ProxyServer(ctx, tls)
        self.stats.clients = self.proxy.clients
        proxy_bound = await self.proxy.listen(settings.proxy.listen)
        self.proxy_bound = proxy_bound
        extra = []
        if settings.proxy.http_listen:
            extra.append(await self.proxy.listen(settings.proxy.http_listen, "http"))
        if settings.proxy.socks5_listen:
            extra.append(await self.proxy.listen(settings.proxy.socks5_listen, "socks5"))

        hub_bound = await self.hub.start() if settings.hub.listen else None
        if settings.cluster.listen and settings.store.redis_url:
            await self._join_cluster(self.hub, hub_token)
        self.webhooks = WebhookService(
            settings.webhooks, store, Vault(webhook_key(settings)), self.events, self.stats
        )
        await self.webhooks.start(self.registry, self.usage.metering, self.health)
        self.token, self.token_generated = admin_token(settings)
        if settings.dashboard.enabled:
            self._start_history()  # every worker samples its own traffic into the store
        admin_bound = await start_admin(self)
        return Bound(proxy_bound, admin_bound, tuple(extra), hub_bound)

    def _start_history(self) -> None:
        """The dashboard's per-minute history of `self.stats`, written to the store."""
        settings = self.settings.dashboard
        store = HistoryStore(self.settings.store.url, getattr(self.store, "engine", None))
        self.history = HistoryWriter(
            self.stats,
            store,
            interval=settings.sample_interval,
            retention=settings.retention_days * 86400,
        )
        self.history.start()

    async def stop(self, grace: float = 5.0) -> None:
        """Drain the proxy first, so the last usage flush sees every relayed byte."""
        if self.proxy is not None:
            await self.proxy.close(grace)
        if self.hub is not None:
            await self.hub.close(grace)  # the directory still answers `held_elsewhere` here
        if self.interlink is not None:
            await self.interlink.close()
            await self.interlink.directory.redis.aclose()
        if self.error_log is not None:
            self.recorder.sink = None
            await self.error_log.close()
            await self.error_log.redis.aclose()
        if self.health_board is not None:
            await self.health_board.close()
            await self.health_board.redis.aclose()
        if self.changes is not None:
            self.registry.on_write = None
            await self.changes.close()
            await self.changes.redis.aclose()
        for task in (self._expiry, self._refresh, self._clock_sync, self._auth_log):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.keeper is not None:
            await self.keeper.close()
        if self.history is not None:
            await self.history.close()
        if self.usage is not None:
            await self.usage.close()
        if self.accesslog is not None:
            await asyncio.to_thread(self.accesslog.close, grace)
        if self.counters is not None:
            await self.counters.close()
        closer = getattr(self.sessions.store, "close", None)
        if closer is not None:
            await closer()
        if self.webhooks is not None:  # after the edges: their last events reach the outbox
            await self.webhooks.close()
        if self.admin_server is not None and self.admin_task is not None:
            self.admin_server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.admin_task, timeout=grace)
        if self.store is not None:
            await asyncio.to_thread(self.store.close)
