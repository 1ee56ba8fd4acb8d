"""Frozen value types shared by every layer.

These carry no behaviour beyond small derived properties; the layers that own a decision
(admission, routing, policy) take them as arguments.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final

from exitgate.values import Value

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Protocol(enum.StrEnum):
    """The client-facing protocol a package may be entitled to."""

    HTTP = "http"  # absolute-form forwarding
    HTTPS = "https"  # CONNECT tunnels
    SOCKS5 = "socks5"
    UDP = "udp"  # SOCKS5 UDP ASSOCIATE (docs/udp.md); also needs an exit network that allows UDP


class Network(enum.StrEnum):
    RES = "res"
    MOB = "mob"
    DC = "dc"


ALL_NETWORKS: frozenset[Network] = frozenset(Network)
ALL_PROTOCOLS: frozenset[Protocol] = frozenset(Protocol)


class NodeKind(enum.StrEnum):
    DIRECT = "direct"
    UPSTREAM = "upstream"
    AGENT = "agent"


class NodeState(enum.StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    DRAINING = "draining"


class PackageStatus(enum.StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    SUSPENDED = "suspended"


class AuthMode(enum.StrEnum):
    """How a package's clients authenticate (see `admission`, gate 1)."""

    # SPEC 4, the default: the key from any allowed address, or an allowlisted address alone
    KEY_OR_IP = "key_or_ip"
    KEY = "key"  # the key on every request; the allowlist, if set, only restricts where from
    IP = "ip"  # an allowlisted address alone; a key is not accepted


class HostKind(enum.Enum):
    DOMAIN = "domain"
    IPV4 = "ipv4"
    IPV6 = "ipv6"


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@lru_cache(maxsize=8192)
def parse_ip(host: str) -> IPAddress | None:
    """`host` as an IP address, or None for a domain name (cached: it runs per request)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


class Target(Value):
    """Where the client wants to go. `host` is a domain name or an IP literal (no brackets).

    A value (compared and hashed by host and port, immutable to the type checker), written
    out instead of a frozen dataclass: one is made per request, and a dataclass's generated
    `__init__` stays interpreted in the compiled build (see docs/decisions.md)."""

    __slots__ = ("host", "port")
    host: Final[str]
    port: Final[int]

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    def value(self) -> tuple[tuple[str, object], ...]:
        return (("host", self.host), ("port", self.port))

    @property
    def kind(self) -> HostKind:
        ip = parse_ip(self.host)
        if ip is None:
            return HostKind.DOMAIN
        return HostKind.IPV4 if ip.version == 4 else HostKind.IPV6

    @property
    def authority(self) -> str:
        """host:port as it goes in a CONNECT line or a Host header."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class NodeAttrs:
    """What a node looks like to targeting rules. Names are lowercase, `_` for spaces."""

    country: str = ""
    region: str = ""
    city: str = ""
    isp: str = ""
    asn: int = 0
    network: Network = Network.DC


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    kind: NodeKind
    attrs: NodeAttrs
    state: NodeState = NodeState.ONLINE
    url: str = ""  # upstream: http://user:pass@host:port or socks5://...; a secret
    bind_address: str = ""  # direct: the local source address
    ip: str = ""  # the public address targets see, when known


@dataclass(frozen=True, slots=True)
class Org:
    id: str
    name: str
    credits: float | None  # None: unlimited


@dataclass(frozen=True, slots=True)
class Limits:
    rps: int | None = None
    concurrency: int | None = None
    traffic_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class AutoBan:
    """Ban the exit for the domain when a forwarded HTTP response has one of `statuses`."""

    statuses: frozenset[int]
    ttl: int = 600  # seconds


@dataclass(frozen=True, slots=True)
class Package:
    id: str
    org_id: str
    name: str
    key_hash: str
    status: PackageStatus = PackageStatus.ACTIVE
    limits: Limits = field(default_factory=Limits)
    ip_allowlist: tuple[IPNetwork, ...] = ()
    protocols: frozenset[Protocol] = ALL_PROTOCOLS
    networks: frozenset[Network] = ALL_NETWORKS
    rules: frozenset[str] | None = None  # allowed rule names; None: all
    auth_mode: AuthMode = AuthMode.KEY_OR_IP
    autoban: AutoBan | None = None  # issue 13; None: no automatic bans

    def allows_ip(self, ip: str) -> bool:
        if not self.ip_allowlist:
            return True
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.ip_allowlist)
