"""`exitgate.client`: a small typed library for the people who send traffic through exitgate.

- `Username`: targeting and session rules as typed values; `str()` and `Username.parse` go
  through the gateway's own grammar (`exitgate.rules`), so the two never disagree;
- `ProxyError` and its categories: an error answer (or a client's proxy exception) as a typed
  exception with the catalogued `code`, `status` and `detail`;
- `exitgate.client.scrapy.ExitgateMiddleware`: a Scrapy downloader middleware (the `scrapy`
  extra: `pip install exitgate[scrapy]`).

Guide: docs/client.md.
"""

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
    from_response,
    raise_for_proxy,
)
from exitgate.client.username import (
    Username,
    UsernameError,
    every,
    parse_username,
    retry,
    timed,
    username,
)

__all__ = [
    "AuthError",
    "NodeError",
    "PackageError",
    "ProxyError",
    "RateLimited",
    "RulesError",
    "SessionError",
    "TargetError",
    "Username",
    "UsernameError",
    "every",
    "from_exception",
    "from_headers",
    "from_response",
    "parse_username",
    "raise_for_proxy",
    "retry",
    "timed",
    "username",
]
