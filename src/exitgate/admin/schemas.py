"""Admin API bodies and answers (pydantic): validation lives here, so errors are 422 naming
the field.

Decisions:
- Bodies reject unknown fields (`extra="forbid"`); numbers are strict (`"5"`, `5.0` and
  `true` are not integers).
- PATCH bodies: a field left out is unchanged. `null` is accepted only where null means
  something (credits: unlimited; limits: none; rules: all); elsewhere it is a 422.
- Geo names are normalised, not refused: the rule language can only address lowercase names
  with `_` for spaces, so "New York" is stored as `new_york`, "São Paulo" as `sao_paulo`,
  "AT&T Wireless" as `at_t_wireless` (accents dropped, every run of other characters → `_`).
  Country codes are lowercased and must be ISO 3166-1 alpha-2 (`geo.COUNTRY_CODES`).
- An allowlist entry may be a bare address (→ /32 or /128) or a CIDR; host bits are cleared
  (`10.0.0.7/24` → `10.0.0.0/24`).
- Node `url` (upstream credentials) is write-only: answers carry `redact_url(url)`
  (`http://user:***@host:port`). Validation messages never quote the url.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from exitgate.geo import COUNTRY_CODES
from exitgate.model import (
    AuthMode,
    AutoBan,
    IPNetwork,
    Network,
    Node,
    NodeState,
    Org,
    Package,
    PackageStatus,
)
from exitgate.model import Protocol as ClientProtocol
from exitgate.rules import RULE_NAMES
from exitgate.store.base import UsageBucket

MAX_NAME = 100
UPSTREAM_SCHEMES = ("http", "socks5")

# -- value checks (plain functions: the CLI and the lead's code may reuse them)


def normalise_name(text: str) -> str:
    """`New York` → `new_york`: ASCII lowercase, accents dropped, other runs → `_`."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")


def _geo_name(text: str) -> str:
    name = normalise_name(text)
    if text.strip() and not name:
        raise ValueError("must contain latin letters or digits")
    if len(name) > MAX_NAME:
        raise ValueError(f"at most {MAX_NAME} characters")
    return name


def _country(text: str) -> str:
    code = text.strip().lower()
    if code and code not in COUNTRY_CODES:
        raise ValueError("not an ISO 3166-1 alpha-2 country code")
    return code


def _ip_literal(text: str) -> str:
    if text == "":
        return ""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise ValueError("must be an IPv4 or IPv6 address") from None


def parse_cidr(text: str) -> IPNetwork:
    """A CIDR or a bare address (→ /32, /128); host bits cleared. ValueError otherwise."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError("must be an IP address or CIDR network") from None


def check_upstream_url(url: str) -> str:
    """`http://` or `socks5://`, a host and a port, optional credentials, nothing else."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ValueError("not a valid URL (is the port a number in 1-65535?)") from None
    if parts.scheme.lower() not in UPSTREAM_SCHEMES:
        raise ValueError("scheme must be http:// or socks5://")
    if not parts.hostname:
        raise ValueError("a host is required")
    if not port:
        raise ValueError("a port is required")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("no path, query or fragment allowed")
    return url.strip()


def redact_url(url: str) -> str:
    """The url without its secret: `http://user:***@host:port` (`***@` for a bare token)."""
    if not url:
        return ""
    parts = urlsplit(url)
    _userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        return f"{parts.scheme}://{hostport}"
    if parts.password is not None:
        return f"{parts.scheme}://{parts.username}:***@{hostport}"
    return f"{parts.scheme}://***@{hostport}"  # a username alone is often the token itself


def _rule_name(name: str) -> str:
    if name not in RULE_NAMES:
        raise ValueError(f"unknown rule name; allowed: {', '.join(sorted(RULE_NAMES))}")
    return name


def _not_null(value: Any) -> Any:
    if value is None:
        raise ValueError("may not be null")
    return value


# -- field types

Name = Annotated[str, Field(min_length=1, max_length=200)]
Credits = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Count = Annotated[int, Field(strict=True, ge=0, le=2**31 - 1)]
Bytes = Annotated[int, Field(strict=True, ge=0, le=2**63 - 1)]
Asn = Annotated[int, Field(strict=True, ge=0, le=4294967295)]
Cidr = Annotated[str, Field(max_length=64), AfterValidator(lambda v: str(parse_cidr(v)))]
RuleName = Annotated[str, AfterValidator(_rule_name)]
GeoName = Annotated[str, Field(max_length=200), AfterValidator(_geo_name)]
Country = Annotated[str, Field(max_length=8), AfterValidator(_country)]
IpLiteral = Annotated[str, Field(max_length=64), AfterValidator(_ip_literal)]
UpstreamUrl = Annotated[str, Field(max_length=2048), AfterValidator(check_upstream_url)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- organizations


class OrgCreate(_Body):
    name: Name
    credits: Credits | None = None  # None: unlimited


class OrgPatch(_Body):
    name: Name | None = None
    credits: Credits | None = None

    _nn = field_validator("name", mode="before")(_not_null)


class OrgOut(BaseModel):
    id: str
    name: str
    credits: float | None

    @classmethod
    def of(cls, org: Org) -> OrgOut:
        return cls(id=org.id, name=org.name, credits=org.credits)


# -- packages


class AutoBanIn(_Body):
    """Issue 13: ban the exit for the domain when a forwarded response has these statuses."""

    statuses: list[Annotated[int, Field(strict=True, ge=100, le=599)]] = Field(
        min_length=1, max_length=20
    )
    ttl: int = Field(default=600, strict=True, ge=1, le=604_800)

    def value(self) -> AutoBan:
        return AutoBan(frozenset(self.statuses), self.ttl)


class PackageCreate(_Body):
    org_id: str = Field(min_length=1, max_length=40)
    name: str = Field(default="", max_length=200)
    status: PackageStatus = PackageStatus.ACTIVE
    rps_limit: Count | None = None
    concurrency_limit: Count | None = None
    traffic_limit_bytes: Bytes | None = None
    ip_allowlist: list[Cidr] = Field(default_factory=list, max_length=1000)
    protocols: list[ClientProtocol] = Field(default_factory=lambda: list(ClientProtocol))
    networks: list[Network] = Field(default_factory=lambda: list(Network))
    rules: list[RuleName] | None = None  # None: every rule
    auth_mode: AuthMode = AuthMode.KEY_OR_IP
    autoban: AutoBanIn | None = None  # None: no automatic bans

    _nn = field_validator("name", "status", "ip_allowlist", "protocols", "networks", mode="before")(
        _not_null
    )
    _nn_mode = field_validator("auth_mode", mode="before")(_not_null)

    @model_validator(mode="after")
    def _ip_needs_allowlist(self) -> PackageCreate:
        if self.auth_mode is AuthMode.IP and not self.ip_allowlist:
            raise ValueError("auth_mode ip needs an ip_allowlist: no address could authenticate")
        return self

    def allowlist(self) -> tuple[IPNetwork, ...]:
        return _dedupe_nets(self.ip_allowlist)


class PackagePatch(_Body):
    name: str | None = Field(default=None, max_length=200)
    status: PackageStatus | None = None
    rps_limit: Count | None = None
    concurrency_limit: Count | None = None
    traffic_limit_bytes: Bytes | None = None
    ip_allowlist: list[Cidr] | None = Field(default=None, max_length=1000)
    protocols: list[ClientProtocol] | None = None
    networks: list[Network] | None = None
    rules: list[RuleName] | None = None
    auth_mode: AuthMode | None = None
    autoban: AutoBanIn | None = None  # null: automatic bans off

    _nn = field_validator("name", "status", "ip_allowlist", "protocols", "networks", mode="before")(
        _not_null
    )
    _nn_mode = field_validator("auth_mode", mode="before")(_not_null)

    def allowlist(self) -> tuple[IPNetwork, ...] | None:
        return None if self.ip_allowlist is None else _dedupe_nets(self.ip_allowlist)


def _dedupe_nets(entries: list[str]) -> tuple[IPNetwork, ...]:
    """Validated entries (already normalised strings) as networks, first occurrence kept."""
    return tuple(dict.fromkeys(parse_cidr(e) for e in entries))


class Usage(BaseModel):
    model_config = ConfigDict(extra="allow")
    bytes_up: int = 0
    bytes_down: int = 0
    requests: int = 0


class UsageBucketOut(BaseModel):
    """One package's usage in one UTC hour (`hour`: its start, ISO 8601 with `Z`)."""

    hour: str
    bytes_up: int
    bytes_down: int
    requests: int
    errors: dict[str, int]  # error code → count

    @classmethod
    def of(cls, b: UsageBucket) -> UsageBucketOut:
        return cls(
            hour=iso_utc(b.hour),
            bytes_up=b.bytes_up,
            bytes_down=b.bytes_down,
            requests=b.requests,
            errors=dict(b.errors),
        )


def iso_utc(epoch: float) -> str:
    """`2026-01-02T03:00:00Z`: whole seconds, UTC."""
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch_of(when: datetime) -> float:
    """A datetime as epoch seconds; one without a timezone is taken as UTC."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


class PackageOut(BaseModel):
    id: str
    org_id: str
    name: str
    status: PackageStatus
    rps_limit: int | None
    concurrency_limit: int | None
    traffic_limit_bytes: int | None
    ip_allowlist: list[str]
    protocols: list[ClientProtocol]
    networks: list[Network]
    rules: list[str] | None  # None: every rule
    auth_mode: AuthMode
    autoban: dict[str, Any] | None = None  # {"statuses": [...], "ttl": s}; None: off

    @classmethod
    def fields_of(cls, p: Package) -> dict[str, Any]:
        return {
            "id": p.id,
            "org_id": p.org_id,
            "name": p.name,
            "status": p.status,
            "rps_limit": p.limits.rps,
            "concurrency_limit": p.limits.concurrency,
            "traffic_limit_bytes": p.limits.traffic_bytes,
            "ip_allowlist": [str(n) for n in p.ip_allowlist],
            "protocols": sorted(p.protocols),
            "networks": sorted(p.networks),
            "rules": None if p.rules is None else sorted(p.rules),
            "auth_mode": p.auth_mode,
            "autoban": None
            if p.autoban is None
            else {"statuses": sorted(p.autoban.statuses), "ttl": p.autoban.ttl},
        }

    @classmethod
    def of(cls, p: Package) -> PackageOut:
        return cls(**cls.fields_of(p))


class PackageDetail(PackageOut):
    usage: Usage


class PackageCreated(PackageOut):
    key: str  # shown here and on rotation only


class KeyOut(BaseModel):
    id: str
    key: str


# -- nodes


class NodeCreate(_Body):
    kind: Literal["direct", "upstream"]
    url: UpstreamUrl | None = Field(default=None, validate_default=True)
    bind_address: IpLiteral | None = Field(default=None, validate_default=True)
    ip: IpLiteral = ""
    state: NodeState = NodeState.ONLINE
    country: Country = ""
    region: GeoName = ""
    city: GeoName = ""
    isp: GeoName = ""
    asn: Asn = 0
    network: Network = Network.DC

    @field_validator("url")
    @classmethod
    def _url_for_kind(cls, v: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("kind")
        if kind == "upstream" and not v:
            raise ValueError("required for an upstream node")
        if kind == "direct" and v is not None:
            raise ValueError("only upstream nodes have a url")
        return v

    @field_validator("bind_address")
    @classmethod
    def _bind_for_kind(cls, v: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("kind") == "upstream" and v:
            raise ValueError("only direct nodes have a bind_address")
        return v


class NodePatch(_Body):
    state: NodeState | None = None
    country: Country | None = None
    region: GeoName | None = None
    city: GeoName | None = None
    isp: GeoName | None = None
    asn: Asn | None = None
    network: Network | None = None
    url: UpstreamUrl | None = None  # upstream nodes only
    bind_address: IpLiteral | None = None  # direct nodes only; "" removes it
    ip: IpLiteral | None = None

    _nn = field_validator(
        "state",
        "country",
        "region",
        "city",
        "isp",
        "asn",
        "network",
        "url",
        "bind_address",
        "ip",
        mode="before",
    )(_not_null)


class NodeOut(BaseModel):
    id: str
    kind: str
    state: NodeState
    url: str  # redacted: the password never leaves the gateway
    bind_address: str
    ip: str
    country: str
    region: str
    city: str
    isp: str
    asn: int
    network: Network

    @classmethod
    def of(cls, n: Node) -> NodeOut:
        a = n.attrs
        return cls(
            id=n.id,
            kind=n.kind.value,
            state=n.state,
            url=redact_url(n.url),
            bind_address=n.bind_address,
            ip=n.ip,
            country=a.country,
            region=a.region,
            city=a.city,
            isp=a.isp,
            asn=a.asn,
            network=a.network,
        )
