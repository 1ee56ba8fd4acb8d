"""Gateway error answers as typed exceptions, from whichever HTTP client saw them.

The gateway answers every failure with one catalogued code (`exitgate.errors`): an HTTP
status, `X-SOAX-Error: CODE`, `X-SOAX-Detail: text` and a `CODE: detail` body. This module
turns that into a `ProxyError` subclass per category, carrying `code`, `status` and `detail`:

    RulesError    400 ERR_* rule errors              stop: every request would fail alike
    AuthError     407 AUTH_FAILED, ERR_AUTH_REQUIRED, IP_NOT_ALLOWED
    PackageError  407 PACKAGE_*, 403 DISALLOWED, 429 TRAFFIC_LIMIT_EXCEEDED  (AuthError is one)
    SessionError  409 SESSION_PARAMS_MISMATCH
    RateLimited   429 RATE_LIMIT_EXCEEDED, AUTH_THROTTLED; 503 TOO_MANY_CONNECTIONS
    NodeError     502/503/504 NODE_UNAVAILABLE, NODE_NOT_FOUND, RETRIES_EXHAUSTED,
                  BOUND_NODE_FAILED, GATEWAY_TIMEOUT
    TargetError   502 TARGET_UNREACHABLE

Where the answer comes from, per client (checked against requests 2.3x, httpx 0.28,
aiohttp 3.x):

- a forwarded plain-http request: every client returns the response itself, headers and
  all: `from_response(resp)` reads `X-SOAX-Error`/`X-SOAX-Detail` (requests, httpx and
  aiohttp responses alike);
- a failed CONNECT (https through the proxy):
  - aiohttp raises `ClientHttpProxyError` with `.status` and `.headers`: read exactly;
  - requests (urllib3 over http.client) and httpx (httpcore) raise a `ProxyError` whose
    message holds only "407 Proxy Authentication Required", and Scrapy a `TunnelError`
    holding `{'status': 407, 'reason': ...}`: the headers and body are thrown away inside
    those libraries. `from_exception` then falls back to the status, so `code` is
    None and the class is the status's most likely category (400 RulesError, 403/407
    PackageError/AuthError, 409 SessionError, 429 RateLimited, 502/503/504 NodeError).
    The exact code of such a failure is in the package's recent-errors log
    (`GET /v1/self/errors` with the package key), as for SOCKS5.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

from exitgate.errors import CATALOGUE, Code

ERROR_HEADER = "X-SOAX-Error"
DETAIL_HEADER = "X-SOAX-Detail"


class ProxyError(Exception):
    """A gateway error answer. `code` is None when the client library hid it (see module)."""

    retry_with_new_session: ClassVar[bool] = False
    back_off: ClassVar[bool] = False
    fatal: ClassVar[bool] = False  # the package cannot send traffic: stop

    def __init__(
        self, code: str | None, status: int, detail: str = "", retry_after: float | None = None
    ) -> None:
        self.code = code
        self.status = status
        self.detail = detail
        self.retry_after = retry_after
        super().__init__(f"{code or status}: {detail}" if detail else f"{code or status}")


class RulesError(ProxyError):
    fatal = True


class PackageError(ProxyError):
    fatal = True


class AuthError(PackageError):
    pass


class SessionError(ProxyError):
    pass


class RateLimited(ProxyError):
    back_off = True


class NodeError(ProxyError):
    retry_with_new_session = True


class TargetError(ProxyError):
    pass


_BY_CODE: dict[str, type[ProxyError]] = {
    Code.AUTH_FAILED: AuthError,
    Code.ERR_AUTH_REQUIRED: AuthError,
    Code.IP_NOT_ALLOWED: AuthError,
    Code.PACKAGE_SUSPENDED: PackageError,
    Code.PACKAGE_PAUSED: PackageError,
    Code.PACKAGE_NO_CREDITS: PackageError,
    Code.TRAFFIC_LIMIT_EXCEEDED: PackageError,
    Code.DISALLOWED: PackageError,
    Code.SESSION_PARAMS_MISMATCH: SessionError,
    Code.RATE_LIMIT_EXCEEDED: RateLimited,
    Code.AUTH_THROTTLED: RateLimited,
    Code.TOO_MANY_CONNECTIONS: RateLimited,
    Code.NODE_UNAVAILABLE: NodeError,
    Code.NODE_NOT_FOUND: NodeError,
    Code.RETRIES_EXHAUSTED: NodeError,
    Code.BOUND_NODE_FAILED: NodeError,
    Code.GATEWAY_TIMEOUT: NodeError,
    Code.TARGET_UNREACHABLE: TargetError,
}
_BY_STATUS: dict[int, type[ProxyError]] = {
    400: RulesError,
    403: PackageError,
    407: AuthError,
    409: SessionError,
    429: RateLimited,
    502: NodeError,
    503: NodeError,
    504: NodeError,
}
# "Tunnel connection failed: 407 Proxy Authentication Required" (http.client, via requests),
# "407 Proxy Authentication Required" (httpcore, via httpx).
_STATUS_IN_TEXT = re.compile(r"(?:Tunnel connection failed: |^)([1-5][0-9]{2})(?: ([^'\")]*))?")
# Scrapy's TunnelError: "Could not open CONNECT tunnel with proxy h:p [{'status': 407,
# 'reason': 'Proxy Authentication Required'}]"
_SCRAPY_TUNNEL = re.compile(r"'status': ([1-5][0-9]{2}), 'reason': b?'([^']*)'")


def error_class(code: str | None, status: int) -> type[ProxyError]:
    if code is not None:
        if code in _BY_CODE:
            return _BY_CODE[code]
        if code.startswith("ERR_") and code in CATALOGUE:
            return RulesError
    return _BY_STATUS.get(status, ProxyError)


def make_error(
    code: str | None, status: int, detail: str = "", retry_after: float | None = None
) -> ProxyError:
    return error_class(code, status)(code, status, detail, retry_after)


def from_headers(status: int, headers: Mapping[str, str] | Any) -> ProxyError | None:
    """The error an answer carries, or None when it is not a gateway error answer.

    `headers`: requests', httpx's, aiohttp's or Scrapy's headers, or a plain dict.
    """
    code = _header(headers, ERROR_HEADER)
    if not code:
        return None
    detail = _header(headers, DETAIL_HEADER) or ""
    return make_error(code, status, detail, _retry_after(_header(headers, "Retry-After")))


def from_response(response: Any) -> ProxyError | None:
    """The gateway error of a requests, httpx or aiohttp response; None for other answers."""
    status: Any = getattr(response, "status_code", None)
    if status is None:
        status = getattr(response, "status", 0)  # aiohttp.ClientResponse
    return from_headers(int(status), response.headers)


def raise_for_proxy(response: Any) -> None:
    """Raise the response's gateway error, if it carries one (targets' own errors pass)."""
    error = from_response(response)
    if error is not None:
        raise error


def from_exception(exc: BaseException) -> ProxyError | None:
    """The gateway error behind a client's proxy exception; None when there is none.

    aiohttp's ClientHttpProxyError carries status and headers: exact. requests' and httpx's
    ProxyError carry only the status line in their message: the code is None (see module).
    """
    headers = getattr(exc, "headers", None)
    status = getattr(exc, "status", None)
    if headers is not None and isinstance(status, int):
        found = from_headers(status, headers)
        if found is not None:
            return found
        message = str(getattr(exc, "message", "") or "")
        return make_error(None, status, message) if status >= 400 else None
    for link in _chain(exc):
        text = str(link)
        match = _STATUS_IN_TEXT.search(text) or _SCRAPY_TUNNEL.search(text)
        if match:
            status = int(match.group(1))
            if status >= 400:
                return make_error(None, status, (match.group(2) or "").strip())
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, its causes and contexts, and urllib3's `reason`: where the text hides."""
    seen: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 16:
        link = todo.pop(0)
        if any(link is s for s in seen):
            continue
        seen.append(link)
        nexts = (link.__cause__, link.__context__, getattr(link, "reason", None), *link.args)
        todo.extend(n for n in nexts if isinstance(n, BaseException))
    return seen


def _header(headers: Any, name: str) -> str | None:
    value = headers.get(name)
    if value is None and isinstance(headers, dict):  # a plain dict: match case by hand
        wanted = name.lower()
        for key, found in headers.items():
            text = key.decode("latin-1") if isinstance(key, bytes) else str(key)
            if text.lower() == wanted:
                value = found
                break
    if value is None:
        return None
    if isinstance(value, bytes):  # Scrapy's Headers hold bytes
        value = value.decode("latin-1")
    return str(value).strip()


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # the HTTP-date form: the gateway does not send it
    return max(0.0, seconds)


__all__ = [
    "DETAIL_HEADER",
    "ERROR_HEADER",
    "AuthError",
    "NodeError",
    "PackageError",
    "ProxyError",
    "RateLimited",
    "RulesError",
    "SessionError",
    "TargetError",
    "error_class",
    "from_exception",
    "from_headers",
    "from_response",
    "make_error",
    "raise_for_proxy",
]
