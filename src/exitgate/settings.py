"""One settings schema: TOML file, then `EXITGATE_<SECTION>_<KEY>` environment variables.

The pydantic models below are the single source of truth. Unknown sections or keys, and
values of the wrong type, stop the start with a message naming the key (`SettingsError`).
Environment values are parsed as TOML values when they parse (`true`, `10.5`,
`{ res = 2.0 }`), else taken as strings, so `EXITGATE_PROXY_LISTEN=0.0.0.0:1337` works as is.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

ENV_PREFIX = "EXITGATE_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def split_hostport(value: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` → (host, port); ValueError with the reason."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected host:port, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"port must be a number in {value!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range in {value!r}")
    return host, number


def _check_listen(value: str) -> str:
    split_hostport(value)
    return value


class ProxySettings(_Section):
    listen: str = "127.0.0.1:1337"
    # extra single-protocol listeners; empty: none
    http_listen: str = ""
    socks5_listen: str = ""
    tls_cert: str = ""  # PEM; set: TLS clients (first byte 0x16) get HTTP proxying inside TLS
    tls_key: str = ""
    handshake_timeout: float = Field(default=10.0, gt=0)  # client head / SOCKS negotiation
    idle_timeout: float = Field(default=300.0, gt=0)  # kept-alive client connection
    max_head_size: int = Field(default=65536, ge=1024)
    reuse_port: bool = False  # SO_REUSEPORT: several workers share the port (`--workers`)
    backlog: int = Field(default=4096, ge=16)
    # open client connections: in all (0: derived from the descriptor limit, see net/caps.py)
    # and per client address (0: no cap); over a cap, HTTP 503 TOO_MANY_CONNECTIONS
    max_connections: int = Field(default=0, ge=0)
    max_connections_per_ip: int = Field(default=256, ge=0)
    # load balancers allowed to send a PROXY protocol (v1 or v2) header: addresses or CIDRs.
    # From these the header is required and names the client; from others it is refused.
    proxy_protocol_from: tuple[str, ...] = ()

    @field_validator("proxy_protocol_from")
    @classmethod
    def _networks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for item in v:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"not an address or CIDR: {item!r}") from None
        return v
    metering: bool = True

    @field_validator("listen", "http_listen", "socks5_listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        return v if v == "" else _check_listen(v)


class AdminSettings(_Section):
    listen: str = "127.0.0.1:8090"  # "": no admin listener (workers other than the first)
    token: str = ""
    # every request body, any path: larger → 413 (from Content-Length, or counted while read)
    max_body_bytes: int = Field(default=1 << 20, ge=1024)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        return v if v == "" else _check_listen(v)


class AuthSettings(_Section):
    """Brute-force defence (`policy.authguard`): `max_failures` wrong keys from one address
    (an IPv6 /64) within `window` seconds block it for `cooldown` seconds (AUTH_THROTTLED);
    0 turns blocking off. Failures are logged as one summary per address per `report_every`."""

    max_failures: int = Field(default=20, ge=0)
    window: float = Field(default=60.0, gt=0)
    cooldown: float = Field(default=60.0, gt=0)
    report_every: float = Field(default=10.0, gt=0)
    max_addresses: int = Field(default=10_000, ge=1)


class HubSettings(_Section):
    listen: str = "127.0.0.1:7443"
    token: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    reuse_port: bool = False  # SO_REUSEPORT: several workers share the port (`--workers`)
    # an agent silent this long gets a PING; one silent for keepalive_timeout is dead (the
    # bound on noticing a silently dead agent; hub/keepalive.py)
    keepalive: float = Field(default=10.0, ge=0.05, le=600.0)
    keepalive_timeout: float = Field(default=20.0, ge=0.1, le=1800.0)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        return v if v == "" else _check_listen(v)

    @field_validator("keepalive_timeout")
    @classmethod
    def _keepalive_timeout(cls, v: float, info: ValidationInfo) -> float:
        if v <= info.data.get("keepalive", 0.0):
            raise ValueError("must be longer than keepalive")
        return v


class ClusterSettings(_Section):
    """Several instances as one network (needs `[store] redis_url`): agents held by one
    instance serve requests admitted by any other, over the interlink."""

    listen: str = ""  # the interlink listener; "": this instance neither forwards nor carries
    advertise: str = ""  # host:port the other instances dial; "": the bound listen address
    token: str = ""  # shared by the instances; "": the hub token
    directory_ttl: float = Field(default=6.0, ge=1.0, le=300.0)  # a dead instance's agents
    # leave the directory within this

    @field_validator("listen", "advertise")
    @classmethod
    def _listen(cls, v: str) -> str:
        return v if v == "" else _check_listen(v)


class StoreSettings(_Section):
    url: str = "sqlite:///exitgate.db"
    redis_url: str = ""
    redis_prefix: str = Field(default="eg:", max_length=64)  # every Redis key starts with it
    # concurrency slots are leases renewed every lease_ttl/3: a killed instance's slots
    # return within lease_ttl
    lease_ttl: float = Field(default=15.0, ge=3.0, le=3600.0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("sqlite://", "postgresql://", "postgresql+psycopg://")):
            raise ValueError("must start with sqlite:// or postgresql://")
        return v


class ExitSettings(_Section):
    allow_private: bool = False
    allow_ports: tuple[int, ...] = ()  # opened among the denied mail ports 25, 465, 587
    connect_timeout: float = Field(default=10.0, gt=0)
    response_timeout: float = Field(default=30.0, gt=0)


class UdpSettings(_Section):
    """SOCKS5 UDP ASSOCIATE (docs/udp.md)."""

    # exit networks whose nodes may relay UDP (SPEC 2: residential and mobile)
    networks: tuple[str, ...] = ("res", "mob")
    idle_timeout: float = Field(default=120.0, gt=0)  # no datagram either way: association ends
    max_datagram: int = Field(default=8192, ge=512, le=65535)  # whole datagram, header included
    max_queued: int = Field(default=256, ge=1)  # datagrams in flight per association

    @field_validator("networks")
    @classmethod
    def _networks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            if name not in ("res", "mob", "dc"):
                raise ValueError(f"unknown network {name!r} (res, mob, dc)")
        return v


class SessionSettings(_Section):
    idle_timeout: float = Field(default=60.0, gt=0)


class DomainSettings(_Section):
    """Per-domain exit choice and bans (issue 13): bounds of the in-memory state."""

    memory: int = Field(default=10_000, ge=1)  # (package, domain) pairs whose exits are kept
    exits_per_domain: int = Field(default=64, ge=1)  # exits remembered per pair
    max_bans: int = Field(default=100_000, ge=1)


class BillingSettings(_Section):
    price_per_gb: dict[str, float] = Field(
        default_factory=lambda: {"res": 1.0, "mob": 1.0, "dc": 1.0}
    )

    @field_validator("price_per_gb")
    @classmethod
    def _prices(cls, v: dict[str, float]) -> dict[str, float]:
        for name, price in v.items():
            if name not in ("res", "mob", "dc"):
                raise ValueError(f"unknown network {name!r} (res, mob, dc)")
            if price < 0:
                raise ValueError(f"price for {name} must not be negative")
        return {"res": 1.0, "mob": 1.0, "dc": 1.0} | v


class GeoSettings(_Section):
    mmdb: str = ""  # a MaxMind-format database for the checker and agents
    regions: tuple[str, ...] = ()  # extra names accepted by the rule language
    cities: tuple[str, ...] = ()
    isps: tuple[str, ...] = ()


class LogSettings(_Section):
    level: str = "info"

    @field_validator("level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError("one of debug, info, warning, error")
        return v.lower()


class WebhookSettings(_Section):
    """Webhooks (issue 11); the decisions behind each default are in docs/decisions.md."""

    enabled: bool = True  # false: no watcher, no delivery (events are not recorded)
    allow_private: bool = False  # true: private and loopback destinations are allowed
    secret_key: str = ""  # seals endpoint secrets at rest; empty: the webhooks.key file
    timeout: float = Field(default=10.0, gt=0)  # one delivery attempt, connect to last byte
    concurrency: int = Field(default=8, ge=1)  # deliveries in flight
    max_attempts: int = Field(default=10, ge=1)
    retry_base: float = Field(default=5.0, gt=0)  # first retry after ~this many seconds
    retry_max_delay: float = Field(default=3600.0, gt=0)
    watch_interval: float = Field(default=1.0, gt=0)  # thresholds, credits, nodes, pools
    usage_levels: tuple[int, ...] = (50, 80, 90, 100)  # percent of a package's traffic cap
    usage_hysteresis: int = Field(default=5, ge=0, le=50)  # percentage points to re-arm
    credits_low: float = Field(default=10.0, ge=0)  # org.credits.low at or below this
    credits_hysteresis: float = Field(default=1.0, ge=0)  # re-armed above low + this
    limit_event_interval: float = Field(default=60.0, ge=0)  # per package and limit
    pool_min_healthy: dict[str, int] = Field(default_factory=dict)  # network → minimum
    pool_hysteresis: int = Field(default=1, ge=0)  # re-armed at minimum + this

    @field_validator("usage_levels")
    @classmethod
    def _levels(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(not 0 < x <= 100 for x in v):
            raise ValueError("percentages between 1 and 100")
        return tuple(sorted(set(v)))

    @field_validator("pool_min_healthy")
    @classmethod
    def _pools(cls, v: dict[str, int]) -> dict[str, int]:
        for name, n in v.items():
            if name not in ("res", "mob", "dc"):
                raise ValueError(f"unknown network {name!r} (res, mob, dc)")
            if n < 0:
                raise ValueError(f"minimum for {name} must not be negative")
        return v


class AccessLogSettings(_Section):
    """`[accesslog]`: one JSON line per tunnel, SOCKS5 connection and forwarded request.

    `target`: "off" (default), "stdout", "stderr", or a file path (appended to; a FIFO
    works). `queue`: lines held for the writer; past it lines are dropped and counted
    (`exitgate_accesslog_dropped_total`). `flush_interval`: seconds between writes."""

    target: str = "off"
    queue: int = Field(default=65536, ge=1)
    flush_interval: float = Field(default=0.2, gt=0, le=10)

    @field_validator("target")
    @classmethod
    def _target(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError('"off", "stdout", "stderr" or a file path')
        return v
class DashboardSettings(_Section):
    enabled: bool = True  # the web dashboard at the admin listener's `/`
    sample_interval: float = Field(default=10.0, gt=0)  # seconds between history samples
    retention_days: float = Field(default=8.0, gt=0)  # per-minute history kept this long
    session_ttl: float = Field(default=12 * 3600.0, gt=0)  # seconds a login lasts


class Settings(_Section):
    proxy: ProxySettings = ProxySettings()
    admin: AdminSettings = AdminSettings()
    auth: AuthSettings = AuthSettings()
    hub: HubSettings = HubSettings()
    cluster: ClusterSettings = ClusterSettings()
    store: StoreSettings = StoreSettings()
    exit: ExitSettings = ExitSettings()
    sessions: SessionSettings = SessionSettings()
    udp: UdpSettings = UdpSettings()
    domains: DomainSettings = DomainSettings()
    billing: BillingSettings = BillingSettings()
    geo: GeoSettings = GeoSettings()
    log: LogSettings = LogSettings()
    webhooks: WebhookSettings = WebhookSettings()
    accesslog: AccessLogSettings = AccessLogSettings()
    dashboard: DashboardSettings = DashboardSettings()

    @property
    def data_dir(self) -> Path:
        """Where generated secrets live: the SQLite file's folder, else the working folder."""
        url = self.store.url
        if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
            return Path(url[len("sqlite:///") :]).expanduser().resolve().parent
        return Path.cwd()


class SettingsError(Exception):
    """The configuration cannot be used; the message names the key."""


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _overlay_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    sections = Settings.model_fields
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        for section, field in sections.items():
            if rest.startswith(section + "_"):
                key = rest[len(section) + 1 :]
                known: Mapping[str, object] = getattr(field.annotation, "model_fields", {})
                if key not in known:
                    # EXITGATE_* variables that are not settings (EXITGATE_ADMIN_URL for the
                    # CLI, say) are someone else's: ignore, do not fail.
                    break
                data.setdefault(section, {})[key] = _env_value(raw)
                break


def _format_error(err: ValidationError) -> str:
    parts = []
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"])
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def load_settings(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """TOML file (optional), then environment, then explicit overrides (CLI flags)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise SettingsError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{path}: not valid TOML: {exc}") from None
        except OSError as exc:
            raise SettingsError(f"{path}: {exc.strerror}") from None
    _overlay_env(data, os.environ if env is None else env)
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update(values)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(_format_error(exc)) from None
