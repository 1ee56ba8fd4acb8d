"""exitgate.client.errors: error answers and client exceptions → typed ProxyError."""

from __future__ import annotations

import pytest

from exitgate.client.errors import (
    AuthError,
    NodeError,
    PackageError,
    ProxyError,
    RateLimited,
    RulesError,
    SessionError,
    TargetError,
    from_exception,
    from_headers,
)
from exitgate.errors import CATALOGUE, Code


@pytest.mark.parametrize("code", list(Code))
def test_every_catalogued_code_has_a_category(code: Code) -> None:
    status = CATALOGUE[code].status
    err = from_headers(status, {"X-SOAX-Error": str(code), "X-SOAX-Detail": "why"})
    assert err is not None
    assert type(err) is not ProxyError
    assert (err.code, err.status, err.detail) == (code, status, "why")


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (Code.AUTH_FAILED, AuthError),
        (Code.PACKAGE_PAUSED, PackageError),
        (Code.ERR_INVALID_VALUE, RulesError),
        (Code.SESSION_PARAMS_MISMATCH, SessionError),
        (Code.RATE_LIMIT_EXCEEDED, RateLimited),
        (Code.NODE_UNAVAILABLE, NodeError),
        (Code.TARGET_UNREACHABLE, TargetError),
    ],
)
def test_categories(code: Code, cls: type[ProxyError]) -> None:
    err = from_headers(CATALOGUE[code].status, {"x-soax-error": str(code)})
    assert type(err) is cls


def test_auth_is_fatal_node_retries_rate_backs_off() -> None:
    assert AuthError.fatal and PackageError.fatal and RulesError.fatal
    assert NodeError.retry_with_new_session and not NodeError.fatal
    assert RateLimited.back_off


def test_not_an_error_answer() -> None:
    assert from_headers(404, {"Content-Type": "text/html"}) is None


def test_retry_after_and_bytes_headers() -> None:
    headers = {"X-SOAX-Error": b"RATE_LIMIT_EXCEEDED", "Retry-After": b"3"}
    err = from_headers(429, headers)
    assert isinstance(err, RateLimited)
    assert err.retry_after == 3.0


def test_status_line_fallback_from_message_texts() -> None:
    # what urllib3/http.client (requests) and httpcore (httpx) put in their messages
    inner = OSError("Tunnel connection failed: 407 Proxy Authentication Required")
    outer = RuntimeError("Caused by ProxyError('Unable to connect to proxy')")
    outer.__cause__ = inner
    err = from_exception(outer)
    assert isinstance(err, AuthError)
    assert (err.code, err.status, err.detail) == (None, 407, "Proxy Authentication Required")
    err = from_exception(RuntimeError("502 Bad Gateway"))
    assert isinstance(err, NodeError) and err.status == 502
    assert from_exception(RuntimeError("connection reset")) is None
    scrapy_text = ("Could not open CONNECT tunnel with proxy 127.0.0.1:1337 "
                   "[{'status': 429, 'reason': b'Too Many Requests'}]")
    err = from_exception(RuntimeError(scrapy_text))
    assert isinstance(err, RateLimited) and (err.status, err.detail) == (429, "Too Many Requests")
