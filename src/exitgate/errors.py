"""The one error catalogue.

Every way a request can fail is a `Code`. This module alone knows, for each code, its HTTP
status, the `X-SOAX-Error`/`X-SOAX-Detail` pair, the RFC 9209 `Proxy-Status` error type, the
SOCKS5 answer and the default detail. Everything else raises `GatewayError(code, detail)` and
the edges render it with `http_error_response` or `socks5_answer`.

SOCKS5 has no headers, so the code is reduced to one byte (SPEC 6):
- credential and package errors fail the RFC 1929 sub-negotiation with status 0x01;
- rule, protocol, limit and session errors are reply 0x02 (not allowed by ruleset);
- NODE_NOT_FOUND is 0x03 (network unreachable);
- node failures and TARGET_UNREACHABLE are 0x04 (host unreachable), 0x05 when refused;
- GATEWAY_TIMEOUT is 0x06 (TTL expired).
The exact code is kept in the package's recent-errors log for SOCKS5 users to read.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Code(enum.StrEnum):
    ERR_MISSING_PARAMS = "ERR_MISSING_PARAMS"
    ERR_UNKNOWN_PARAM = "ERR_UNKNOWN_PARAM"
    ERR_DUPLICATE_PARAM = "ERR_DUPLICATE_PARAM"
    ERR_INVALID_VALUE = "ERR_INVALID_VALUE"
    ERR_INVALID_COMBINATION = "ERR_INVALID_COMBINATION"
    ERR_PARAM_NOT_ALLOWED = "ERR_PARAM_NOT_ALLOWED"
    DISALLOWED = "DISALLOWED"
    ERR_AUTH_REQUIRED = "ERR_AUTH_REQUIRED"
    AUTH_FAILED = "AUTH_FAILED"
    IP_NOT_ALLOWED = "IP_NOT_ALLOWED"
    PACKAGE_SUSPENDED = "PACKAGE_SUSPENDED"
    PACKAGE_PAUSED = "PACKAGE_PAUSED"
    PACKAGE_NO_CREDITS = "PACKAGE_NO_CREDITS"
    SESSION_PARAMS_MISMATCH = "SESSION_PARAMS_MISMATCH"
    RATE_LIMIT_EXCEEDED = "RATE_LIMIT_EXCEEDED"
    TRAFFIC_LIMIT_EXCEEDED = "TRAFFIC_LIMIT_EXCEEDED"
    NODE_UNAVAILABLE = "NODE_UNAVAILABLE"
    NODE_NOT_FOUND = "NODE_NOT_FOUND"
    RETRIES_EXHAUSTED = "RETRIES_EXHAUSTED"
    BOUND_NODE_FAILED = "BOUND_NODE_FAILED"
    GATEWAY_TIMEOUT = "GATEWAY_TIMEOUT"
    TARGET_UNREACHABLE = "TARGET_UNREACHABLE"
    # Not on the seed page: exitgate's own defences (issue 12), catalogued like the rest.
    AUTH_THROTTLED = "AUTH_THROTTLED"
    TOO_MANY_CONNECTIONS = "TOO_MANY_CONNECTIONS"


class SocksReply(enum.IntEnum):
    """RFC 1928 section 6 reply field."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    status: int
    reason: str  # the HTTP reason phrase
    detail: str  # default X-SOAX-Detail
    proxy_status: str  # RFC 9209 error type
    socks_reply: SocksReply  # reply byte, when the error happens after authentication
    socks_auth: bool  # True: reported by failing the RFC 1929 sub-negotiation (status 0x01)


_S = SocksReply
CATALOGUE: dict[Code, ErrorSpec] = {
    Code.ERR_MISSING_PARAMS: ErrorSpec(
        400, "Bad Request", "No targeting rule supplied", "http_request_error",
        _S.NOT_ALLOWED, False,
    ),
    Code.ERR_UNKNOWN_PARAM: ErrorSpec(
        400, "Bad Request", "Unrecognised rule name", "http_request_error", _S.NOT_ALLOWED, False
    ),
    Code.ERR_DUPLICATE_PARAM: ErrorSpec(
        400, "Bad Request", "Same rule appears twice", "http_request_error", _S.NOT_ALLOWED, False
    ),
    Code.ERR_INVALID_VALUE: ErrorSpec(
        400, "Bad Request", "Invalid value for a rule", "http_request_error", _S.NOT_ALLOWED, False
    ),
    Code.ERR_INVALID_COMBINATION: ErrorSpec(
        400, "Bad Request", "Parameters cannot be combined", "http_request_error",
        _S.NOT_ALLOWED, False,
    ),
    Code.ERR_PARAM_NOT_ALLOWED: ErrorSpec(
        400, "Bad Request", "Parameter not permitted on this package", "http_request_denied",
        _S.NOT_ALLOWED, False,
    ),
    Code.DISALLOWED: ErrorSpec(
        403, "Forbidden", "Protocol not in allowed list", "http_request_denied",
        _S.NOT_ALLOWED, False,
    ),
    Code.ERR_AUTH_REQUIRED: ErrorSpec(
        407, "Proxy Authentication Required", "No credentials supplied", "http_request_denied",
        _S.NOT_ALLOWED, True,
    ),
    Code.AUTH_FAILED: ErrorSpec(
        407, "Proxy Authentication Required", "Invalid or missing package key",
        "http_request_denied", _S.NOT_ALLOWED, True,
    ),
    Code.IP_NOT_ALLOWED: ErrorSpec(
        407, "Proxy Authentication Required", "Client IP not in allowlist", "http_request_denied",
        _S.NOT_ALLOWED, True,
    ),
    Code.PACKAGE_SUSPENDED: ErrorSpec(
        407, "Proxy Authentication Required", "Account suspended or disabled",
        "http_request_denied", _S.NOT_ALLOWED, True,
    ),
    Code.PACKAGE_PAUSED: ErrorSpec(
        407, "Proxy Authentication Required", "Package is paused", "http_request_denied",
        _S.NOT_ALLOWED, True,
    ),
    Code.PACKAGE_NO_CREDITS: ErrorSpec(
        407, "Proxy Authentication Required", "Package is out of credits or quota",
        "http_request_denied", _S.NOT_ALLOWED, True,
    ),
    Code.SESSION_PARAMS_MISMATCH: ErrorSpec(
        409, "Conflict", "Session ID reused with different rules", "http_request_error",
        _S.NOT_ALLOWED, False,
    ),
    Code.RATE_LIMIT_EXCEEDED: ErrorSpec(
        429, "Too Many Requests", "RPS or concurrent connection limit reached",
        "connection_limit_reached", _S.NOT_ALLOWED, False,
    ),
    Code.TRAFFIC_LIMIT_EXCEEDED: ErrorSpec(
        429, "Too Many Requests", "Traffic limit exceeded", "http_request_denied",
        _S.NOT_ALLOWED, False,
    ),
    Code.NODE_UNAVAILABLE: ErrorSpec(
        502, "Bad Gateway", "Node went offline or connection refused", "destination_unavailable",
        _S.HOST_UNREACHABLE, False,
    ),
    Code.NODE_NOT_FOUND: ErrorSpec(
        502, "Bad Gateway", "No nodes matching the filters", "destination_unavailable",
        _S.NETWORK_UNREACHABLE, False,
    ),
    Code.RETRIES_EXHAUSTED: ErrorSpec(
        502, "Bad Gateway", "All onerror-retry_N attempts failed, replacement also failed",
        "destination_unavailable", _S.HOST_UNREACHABLE, False,
    ),
    Code.BOUND_NODE_FAILED: ErrorSpec(
        503, "Service Unavailable",
        "bind-node session and node has failed, no replacement allowed",
        "destination_unavailable", _S.HOST_UNREACHABLE, False,
    ),
    Code.GATEWAY_TIMEOUT: ErrorSpec(
        504, "Gateway Timeout", "Request timed out after tunnel established",
        "connection_timeout", _S.TTL_EXPIRED, False,
    ),
    Code.TARGET_UNREACHABLE: ErrorSpec(
        502, "Bad Gateway", "Target unreachable", "destination_unavailable",
        _S.HOST_UNREACHABLE, False,
    ),
    Code.AUTH_THROTTLED: ErrorSpec(
        429, "Too Many Requests", "Too many failed authentications from this address",
        "http_request_denied", _S.NOT_ALLOWED, True,
    ),
    Code.TOO_MANY_CONNECTIONS: ErrorSpec(
        503, "Service Unavailable", "Connection limit reached", "connection_limit_reached",
        _S.GENERAL_FAILURE, False,
    ),
}


class GatewayError(Exception):
    """A request failed with a catalogued code.

    `package_id` is filled in by admission once the package is known, so that the error lands
    in that package's recent-errors log.

    `proxy_status` and `socks_reply` override the catalogue for this instance, where the
    cause is known more precisely (a DNS failure is `dns_error`, a refusal is 0x05).
    """

    __slots__ = ("code", "detail", "package_id", "proxy_status", "socks_reply")

    def __init__(
        self,
        code: Code,
        detail: str | None = None,
        *,
        proxy_status: str | None = None,
        socks_reply: SocksReply | None = None,
    ) -> None:
        spec = CATALOGUE[code]
        self.code = code
        self.detail = _one_line(detail) if detail else spec.detail
        self.proxy_status = proxy_status or spec.proxy_status
        self.socks_reply = spec.socks_reply if socks_reply is None else socks_reply
        self.package_id: str | None = None  # set once the package is known, for its error log
        super().__init__(f"{code}: {self.detail}")

    @property
    def spec(self) -> ErrorSpec:
        return CATALOGUE[self.code]

    @property
    def status(self) -> int:
        return CATALOGUE[self.code].status


def _one_line(text: str) -> str:
    """Details travel in a header: printable ASCII on one line, bounded."""
    cleaned = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text)
    return cleaned[:400]


def _sf_string(text: str) -> str:
    """An RFC 8941 sf-string: quoted, with `\\` and `"` escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def http_error_response(
    err: GatewayError, *, close: bool = True, proxy_name: str = "exitgate"
) -> bytes:
    """The whole HTTP/1.1 error answer: status, SOAX headers, Proxy-Status, one-line body."""
    spec = err.spec
    body = f"{err.code}: {err.detail}\n".encode("ascii")
    lines = [
        f"HTTP/1.1 {spec.status} {spec.reason}",
        f"X-SOAX-Error: {err.code}",
        f"X-SOAX-Detail: {err.detail}",
        f"Proxy-Status: {proxy_name}; error={err.proxy_status}; details={_sf_string(err.detail)}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
    ]
    if spec.status == 407:
        lines.append('Proxy-Authenticate: Basic realm="exitgate"')
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body
