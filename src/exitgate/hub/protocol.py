"""The agent ⇄ hub wire contract. Pure: no asyncio, no sockets.

Theory of operation
-------------------
An agent dials the hub (TCP, TLS when the hub has a certificate). The connection then has two
phases:

1. **Hello** (one line each way, before any HTTP/2 byte). The agent sends

       EXITGATE-AGENT/1 {"token": "...", "id": "home-1", "ip": "",
                         "attrs": {"country": "us", "region": "", "city": "new_york",
                                   "isp": "", "asn": 0, "network": "res"}}\\n

   at most `MAX_HELLO` bytes. An agent since issue 11 also sends `"version": "0.1.0"` (its
   `exitgate.__version__`, at most `MAX_VERSION` characters of A-Z a-z 0-9 . + _ ~ -); the
   field is optional both ways: an older agent leaves it out (shown as "-"), and an older hub
   ignores a key it does not know. The hub answers `OK {"id": ..., "ip": ...}\\n` (the id it
   registered, the address it sees) or `NO {"error": "auth"|"invalid"|"protocol"|"busy",
   "reason": "..."}\\n` and closes. Authenticating before HTTP/2 keeps a stranger cheap: no
   h2 state, no store write, one bounded line buffer.

2. **HTTP/2**, with the *hub as the h2 client* and the agent as the h2 server, although the
   agent dialled the TCP connection. In HTTP/2 only clients open streams (server push cannot
   carry a request and is disabled), and the side that decides when a tunnel starts is the
   gateway. The agent dials out so that it works from behind NAT; h2 roles do not depend on
   who dialled. The hub sends its client preface right after its `OK` line.

   Each tunnel is one stream: `CONNECT` with `:authority host:port` (RFC 9113 section 8.5),
   plus `exitgate-connect-timeout` (seconds, the gateway's connect budget) and
   `exitgate-private: allow|deny` (whether a name may resolve to a private address). The
   agent connects from its own address and answers `200` (with `exitgate-bound: ip:port`, its
   local end of the target connection) or an error status with `exitgate-error: KIND`:

       KIND          status  gateway outcome
       dns           502     TARGET_UNREACHABLE (dns_error)
       refused       502     TARGET_UNREACHABLE (connection_refused, SOCKS 0x05)
       unreachable   502     TARGET_UNREACHABLE (reason from `exitgate-detail`)
       timeout       504     GATEWAY_TIMEOUT
       denied        403     DISALLOWED (a name resolved to a forbidden address)
       bind, draining, bad_request, anything else:  a node failure (routing replaces the node)

   A stream refused or reset before its answer, and an agent gone or silent, are node
   failures too. Target details are rebuilt here from the gateway's own templates; only
   `unreachable` carries a short sanitised reason from the agent.

Attribute values are checked as the rule language reads them (`check_attrs`): lowercase, `_`
for spaces, ISO 3166-1 country, `res|mob|dc`, ASN 0..4294967295 (0: unknown). The hub refuses
a registration that does not pass, with the reason; the agent runs the same check on its flags.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Final

from exitgate.errors import Code, GatewayError, SocksReply
from exitgate.geo import COUNTRY_CODES
from exitgate.model import Network, NodeAttrs, Target

MAGIC: Final = b"EXITGATE-AGENT/1 "
MAX_HELLO: Final = 4096
MAX_NAME: Final = 100
MAX_TOKEN: Final = 512
ASN_MAX: Final = 4_294_967_295
MAX_VERSION: Final = 40
VERSION_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_~-]{0,39}")  # MAX_VERSION in all
ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NAME_RE: Final = re.compile(r"[a-z0-9]+(?:_[a-z0-9]+)*")
_HOST_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,253}")
_REASON_RE: Final = re.compile(r"[^a-z0-9 ,.:'-]+")
_ATTR_KEYS: Final = ("country", "region", "city", "isp", "asn", "network")

H_TIMEOUT: Final = b"exitgate-connect-timeout"
H_PRIVATE: Final = b"exitgate-private"
H_BOUND: Final = b"exitgate-bound"
H_ERROR: Final = b"exitgate-error"
H_DETAIL: Final = b"exitgate-detail"


class RefusalKind(enum.StrEnum):
    AUTH = "auth"  # wrong token: permanent, the agent stops
    INVALID = "invalid"  # attributes or id rejected: permanent
    PROTOCOL = "protocol"  # not our hello at all
    BUSY = "busy"  # transient: try again later


class HelloError(Exception):
    def __init__(self, kind: RefusalKind, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Hello:
    token: str
    agent_id: str
    attrs: NodeAttrs
    ip: str  # the agent's own idea of its public address; "" unknown
    version: str = ""  # the agent's exitgate version; "" from an agent too old to send it


@dataclass(frozen=True, slots=True)
class Reply:
    ok: bool
    agent_id: str = ""
    ip: str = ""
    kind: RefusalKind | None = None
    reason: str = ""


# -- hello ------------------------------------------------------------------------------------


def encode_hello(hello: Hello) -> bytes:
    a = hello.attrs
    body = {
        "token": hello.token,
        "id": hello.agent_id,
        "ip": hello.ip,
        "attrs": {
            "country": a.country,
            "region": a.region,
            "city": a.city,
            "isp": a.isp,
            "asn": a.asn,
            "network": a.network.value,
        },
    }
    if hello.version:  # left out when unknown: the line an older agent sends
        body["version"] = hello.version
    return MAGIC + json.dumps(body, separators=(",", ":")).encode() + b"\n"


def parse_hello(line: bytes) -> Hello:
    """One hello line (with or without its newline) → Hello, or HelloError with the reason.

    The reason never quotes the token.
    """
    if not line.startswith(MAGIC):
        raise HelloError(RefusalKind.PROTOCOL, "not an exitgate agent hello")
    try:
        body = json.loads(line[len(MAGIC) :])
    except (ValueError, UnicodeDecodeError, RecursionError):  # 4 KB of "[" nests too deep
        raise HelloError(RefusalKind.PROTOCOL, "hello is not JSON") from None
    if not isinstance(body, dict):
        raise HelloError(RefusalKind.PROTOCOL, "hello must be a JSON object")
    token = body.get("token")
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN:
        raise HelloError(RefusalKind.AUTH, "missing or malformed token")
    agent_id = body.get("id")
    if not isinstance(agent_id, str) or not ID_RE.fullmatch(agent_id):
        raise HelloError(
            RefusalKind.INVALID,
            "id must be 1-64 characters of A-Z a-z 0-9 _ . - (letter or digit first)",
        )
    raw_attrs = body.get("attrs", {})
    if not isinstance(raw_attrs, dict):
        raise HelloError(RefusalKind.INVALID, "attrs must be a JSON object")
    try:
        attrs = attrs_from_json(raw_attrs)
        ip = check_ip(body.get("ip", ""))
        version = check_version(body.get("version", ""))
    except ValueError as exc:
        raise HelloError(RefusalKind.INVALID, str(exc)) from None
    return Hello(token, agent_id, attrs, ip, version)


def attrs_from_json(raw: dict[str, Any]) -> NodeAttrs:
    unknown = sorted(set(raw) - set(_ATTR_KEYS))
    if unknown:
        raise ValueError(f"unknown attribute {unknown[0][:40]!r}")
    return check_attrs(
        country=raw.get("country", ""),
        region=raw.get("region", ""),
        city=raw.get("city", ""),
        isp=raw.get("isp", ""),
        asn=raw.get("asn", 0),
        network=raw.get("network", Network.RES.value),
    )


def check_attrs(
    *, country: object, region: object, city: object, isp: object, asn: object, network: object
) -> NodeAttrs:
    """Attribute values as the rule language reads them; ValueError naming the field."""
    if not isinstance(country, str) or (country and country not in COUNTRY_CODES):
        raise ValueError(f"country {_show(country)} is not a lowercase ISO 3166-1 alpha-2 code")
    names: list[str] = []
    for field, value in (("region", region), ("city", city), ("isp", isp)):
        if not isinstance(value, str) or (
            value and (len(value) > MAX_NAME or not NAME_RE.fullmatch(value))
        ):
            raise ValueError(
                f"{field} {_show(value)} is not a rule value "
                f"(lowercase a-z 0-9, '_' for spaces, at most {MAX_NAME} characters)"
            )
        names.append(value)
    if isinstance(asn, bool) or not isinstance(asn, int) or not 0 <= asn <= ASN_MAX:
        raise ValueError(f"asn {_show(asn)} is not a number in 0..{ASN_MAX}")
    try:
        net = Network(network) if isinstance(network, str) else None
    except ValueError:
        net = None
    if net is None:
        raise ValueError(f"network {_show(network)} is not one of res, mob, dc")
    return NodeAttrs(country, names[0], names[1], names[2], asn, net)


def check_ip(value: object) -> str:
    if value in ("", None):
        return ""
    if not isinstance(value, str):
        raise ValueError("ip must be a string")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"ip {_show(value)} is not an IP address") from None


def check_version(value: object) -> str:
    """An agent's version as shown on the Agents page: short, printable, no spaces."""
    if value in ("", None):
        return ""
    if not isinstance(value, str) or not VERSION_RE.fullmatch(value):
        raise ValueError(
            f"version {_show(value)} is not 1-{MAX_VERSION} characters of "
            "A-Z a-z 0-9 . + _ ~ - (letter or digit first)"
        )
    return value


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 42 else text[:40] + "…"


# -- reply ------------------------------------------------------------------------------------


def encode_ok(agent_id: str, ip: str) -> bytes:
    return b"OK " + json.dumps({"id": agent_id, "ip": ip}).encode() + b"\n"


def encode_refusal(kind: RefusalKind, reason: str) -> bytes:
    return b"NO " + json.dumps({"error": kind.value, "reason": reason[:300]}).encode() + b"\n"


def parse_reply(line: bytes) -> Reply:
    """The hub's answer line; a garbled one is a PROTOCOL refusal."""
    verb, _, rest = line.partition(b" ")
    try:
        body = json.loads(rest)
    except (ValueError, UnicodeDecodeError, RecursionError):
        body = None
    if not isinstance(body, dict):
        return Reply(False, kind=RefusalKind.PROTOCOL, reason="garbled hub reply")
    if verb == b"OK":
        return Reply(True, agent_id=str(body.get("id", "")), ip=str(body.get("ip", "")))
    try:
        kind = RefusalKind(str(body.get("error")))
    except ValueError:
        kind = RefusalKind.PROTOCOL
    return Reply(False, kind=kind, reason=str(body.get("reason", ""))[:300])


# -- streams ----------------------------------------------------------------------------------

Headers = list[tuple[bytes, bytes]]


class Failure(enum.StrEnum):
    DNS = "dns"
    REFUSED = "refused"
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    DENIED = "denied"
    BIND = "bind"  # the agent cannot use its --bind address: its own fault
    DRAINING = "draining"
    BAD_REQUEST = "bad_request"


_STATUS: Final = {
    Failure.DNS: 502,
    Failure.REFUSED: 502,
    Failure.UNREACHABLE: 502,
    Failure.TIMEOUT: 504,
    Failure.DENIED: 403,
    Failure.BIND: 503,
    Failure.DRAINING: 503,
    Failure.BAD_REQUEST: 400,
}


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    target: Target
    timeout: float
    allow_private: bool


def connect_headers(target: Target, timeout: float, allow_private: bool) -> Headers:
    """The CONNECT head for `target`; ValueError when the host has no ASCII (IDNA) form."""
    host = target.host
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"{target.host!r} is not a valid domain name") from None
    return [
        (b":method", b"CONNECT"),
        (b":authority", Target(host, target.port).authority.encode("ascii")),
        (H_TIMEOUT, f"{timeout:.3f}".encode()),
        (H_PRIVATE, b"allow" if allow_private else b"deny"),
    ]


def parse_connect(headers: Headers, max_timeout: float) -> ConnectRequest:
    """A stream's request headers → what to dial; ValueError when malformed."""
    found = dict(headers)
    if found.get(b":method") != b"CONNECT":
        raise ValueError("only CONNECT is served")
    authority = found.get(b":authority", b"").decode("ascii", "replace")
    host, sep, port_text = authority.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("bad IPv6 literal in :authority") from None
    elif not _HOST_RE.fullmatch(host):
        raise ValueError("bad host in :authority")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError("bad port in :authority")
    try:
        timeout = float(found.get(H_TIMEOUT, b"") or max_timeout)
    except ValueError:
        timeout = max_timeout
    if math.isnan(timeout):  # float() takes "nan", which min/max would pass through
        timeout = max_timeout
    timeout = min(max(timeout, 0.1), max_timeout)
    allow = found.get(H_PRIVATE) == b"allow"
    return ConnectRequest(Target(host, int(port_text)), timeout, allow)


def ok_headers(bound: tuple[str, int]) -> Headers:
    host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    return [(b":status", b"200"), (H_BOUND, f"{host}:{bound[1]}".encode())]


def failure_headers(kind: Failure, detail: str = "") -> Headers:
    headers = [(b":status", str(_STATUS[kind]).encode()), (H_ERROR, kind.value.encode())]
    if detail:
        headers.append((H_DETAIL, sanitise_reason(detail).encode()))
    return headers


def sanitise_reason(text: str) -> str:
    """A short lowercase reason safe to put in a client-visible detail."""
    return _REASON_RE.sub(" ", text.lower()).strip()[:80]


@dataclass(frozen=True, slots=True)
class Answer:
    """What a stream's response head means: established, a target error, or a node failure."""

    bound: tuple[str, int] | None = None
    target_error: GatewayError | None = None
    node_failure: str = ""


def classify(headers: Headers, target: Target) -> Answer:
    found = dict(headers)
    status = found.get(b":status", b"")
    if status == b"200":
        return Answer(bound=_hostport(found.get(H_BOUND, b"")))
    kind = found.get(H_ERROR, b"").decode("ascii", "replace")
    where = target.authority
    match kind:
        case Failure.DNS:
            return Answer(
                target_error=GatewayError(
                    Code.TARGET_UNREACHABLE,
                    f"DNS lookup failed for {target.host}",
                    proxy_status="dns_error",
                )
            )
        case Failure.REFUSED:
            return Answer(
                target_error=GatewayError(
                    Code.TARGET_UNREACHABLE,
                    f"Connection to {where} refused",
                    proxy_status="connection_refused",
                    socks_reply=SocksReply.CONNECTION_REFUSED,
                )
            )
        case Failure.UNREACHABLE:
            reason = sanitise_reason(found.get(H_DETAIL, b"").decode("ascii", "replace"))
            return Answer(
                target_error=GatewayError(
                    Code.TARGET_UNREACHABLE, f"{where} unreachable: {reason or 'no route'}"
                )
            )
        case Failure.TIMEOUT:
            return Answer(
                target_error=GatewayError(
                    Code.GATEWAY_TIMEOUT,
                    f"Connect to {where} timed out",
                    socks_reply=SocksReply.TTL_EXPIRED,
                )
            )
        case Failure.DENIED:
            return Answer(
                target_error=GatewayError(Code.DISALLOWED, f"Destination {target.host} not allowed")
            )
        case _:
            label = sanitise_reason(kind) or "no reason"
            # The status is the agent's bytes too: sanitised like the label (no control bytes).
            code = sanitise_reason(status.decode("ascii", "replace")[:3]) or "?"
            return Answer(node_failure=f"Agent refused the tunnel ({code} {label})")


def failure_of(exc: GatewayError) -> Failure:
    """The failure kind to answer for a target error, which `classify` maps back to it."""
    if exc.code is Code.GATEWAY_TIMEOUT:
        return Failure.TIMEOUT
    if exc.code is Code.DISALLOWED:
        return Failure.DENIED
    if exc.proxy_status == "dns_error":
        return Failure.DNS
    if exc.proxy_status == "connection_refused":
        return Failure.REFUSED
    return Failure.UNREACHABLE


def _hostport(raw: bytes) -> tuple[str, int]:
    text = raw.decode("ascii", "replace")
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    # The agent's bytes: int() would take "-5", "+5" or "99999", which a SOCKS5 reply cannot
    # encode; anything but a port number is "unknown".
    if not (port.isascii() and port.isdigit() and len(port) <= 5 and int(port) <= 0xFFFF):
        return ("", 0)
    try:
        return str(ipaddress.ip_address(host)), int(port)
    except ValueError:
        return ("", 0)


# -- UDP streams (docs/udp.md) ------------------------------------------------------------------

H_STREAM: Final = b"exitgate-stream"
UDP_AUTHORITY: Final = b"udp.exitgate.invalid:9"  # a marker: a UDP stream has no one target


def udp_headers(allow_private: bool) -> Headers:
    """The head of a UDP stream: CONNECT (so h2 treats it as a tunnel) marked `udp`. The
    datagrams that follow carry their own addresses (`hub.udp_frames`)."""
    return [
        (b":method", b"CONNECT"),
        (b":authority", UDP_AUTHORITY),
        (H_STREAM, b"udp"),
        (H_PRIVATE, b"allow" if allow_private else b"deny"),
    ]


def is_udp(headers: Headers) -> bool:
    return dict(headers).get(H_STREAM) == b"udp"


def udp_allows_private(headers: Headers) -> bool:
    return dict(headers).get(H_PRIVATE) == b"allow"
