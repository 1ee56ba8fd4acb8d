"""A Scrapy downloader middleware that sends a crawl through exitgate (`pip install
exitgate[scrapy]`, Scrapy >= 2.14).

    DOWNLOADER_MIDDLEWARES = {"exitgate.client.scrapy.ExitgateMiddleware": 740}
    EXITGATE_PROXY = "http://127.0.0.1:1337"     # the gateway's proxy port
    EXITGATE_KEY = "..."                         # the package key
    EXITGATE_RULES = "country-us-network-res"    # or a `Username`; no session: ours
    EXITGATE_SESSION_EVERY = 10                  # a fresh session every N requests

Priority 740 puts it just before Scrapy's HttpProxyMiddleware (750), which turns the
`meta["proxy"]` URL set here into the `Proxy-Authorization` header (plain-http URLs are
forwarded in absolute form with that header; https ones are CONNECT tunnels), and before
RetryMiddleware (550) sees the answer, so gateway errors are handled here first.

Sessions. Requests without a key share a rotating session: a new `session-<id>` every
`EXITGATE_SESSION_EVERY` requests (default 1: a fresh exit for each request). A request
with `meta["exitgate_session_key"] = "item-42"` uses one session for every request with that
key: a fresh session per item. The id used is left in `meta["exitgate_session_id"]`.
`meta["exitgate"] = False` leaves a request alone.

Gateway errors (read from `X-SOAX-Error`, `exitgate.client.errors`):
- node errors (NODE_UNAVAILABLE, RETRIES_EXHAUSTED, GATEWAY_TIMEOUT, BOUND_NODE_FAILED):
  the session is retired and the request retried on a fresh one, at most
  `EXITGATE_RETRIES` times (default 3); then the error answer goes on to the spider;
- RATE_LIMIT_EXCEEDED, AUTH_THROTTLED, TOO_MANY_CONNECTIONS: the request waits
  (`Retry-After` if given, else `EXITGATE_BACKOFF_BASE` * 2^n seconds, at most
  `EXITGATE_BACKOFF_MAX`) and is sent again with the same session, at most
  `EXITGATE_BACKOFFS` times (default 5);
- AUTH_FAILED, the other 407 package errors, DISALLOWED, TRAFFIC_LIMIT_EXCEEDED and the 400
  rule errors: nothing will succeed, so the spider is closed with reason
  `exitgate_<CODE>` and the request dropped (IgnoreRequest);
- the rest (NODE_NOT_FOUND, TARGET_UNREACHABLE, SESSION_PARAMS_MISMATCH) reach the spider.
A failed CONNECT (an https URL) reaches Scrapy as a `TunnelError` that keeps only the status:
then the code is unknown and the status decides (407/403/400: close, as `exitgate_407`;
429: back off; 502/503/504: retry on a new session, since most are node errors).
Stats: `exitgate/sessions`, `exitgate/retries`, `exitgate/backoffs`, `exitgate/errors/<CODE>`.
The key travels in `meta["proxy"]` only until HttpProxyMiddleware moves it into the header;
this middleware never logs it.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, urlsplit

from scrapy.exceptions import IgnoreRequest, NotConfigured
from scrapy.utils.defer import deferred_from_coro, maybe_deferred_to_future
from twisted.internet.task import deferLater

from exitgate.client.errors import NodeError, ProxyError, from_exception, from_headers
from exitgate.client.username import Username, UsernameError
from exitgate.errors import Code

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response

RETRY_CODES: Final = frozenset(
    {Code.NODE_UNAVAILABLE, Code.RETRIES_EXHAUSTED, Code.GATEWAY_TIMEOUT, Code.BOUND_NODE_FAILED}
)
_PLACEHOLDER: Final = "s"  # lets rules with rotate/bind-node parse before a session is set


class ExitgateMiddleware:
    def __init__(
        self,
        crawler: Crawler,
        *,
        proxy: str,
        key: str,
        rules: Username,
        every: int = 1,
        retries: int = 3,
        backoffs: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        if every < 1:
            raise NotConfigured("EXITGATE_SESSION_EVERY must be at least 1")
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if not parts.hostname or parts.port is None:
            raise NotConfigured("EXITGATE_PROXY must be host:port or http://host:port")
        self.crawler = crawler
        self._scheme = parts.scheme
        self._hostport = parts.netloc.rpartition("@")[2]
        self._key = quote(key, safe="")
        self.rules = rules
        self.every = every
        self.retries = retries
        self.backoffs = backoffs
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._current = ""
        self._used = 0
        self._by_key: dict[str, str] = {}
        self._retired: set[str] = set()
        self._closing = False

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> ExitgateMiddleware:
        s = crawler.settings
        if not s.getbool("EXITGATE_ENABLED", True):
            raise NotConfigured("EXITGATE_ENABLED is off")
        proxy, key = s.get("EXITGATE_PROXY"), s.get("EXITGATE_KEY")
        if not proxy or not key:
            raise NotConfigured("set EXITGATE_PROXY and EXITGATE_KEY")
        return cls(
            crawler,
            proxy=str(proxy),
            key=str(key),
            rules=_rules(s.get("EXITGATE_RULES", "country-any")),
            every=s.getint("EXITGATE_SESSION_EVERY", 1),
            retries=s.getint("EXITGATE_RETRIES", 3),
            backoffs=s.getint("EXITGATE_BACKOFFS", 5),
            backoff_base=s.getfloat("EXITGATE_BACKOFF_BASE", 0.5),
            backoff_max=s.getfloat("EXITGATE_BACKOFF_MAX", 30.0),
        )

    # -- sessions -----------------------------------------------------------------------------
    def _fresh(self) -> str:
        self._inc("exitgate/sessions")
        return secrets.token_hex(6)

    def session_for(self, key: str | None) -> str:
        if key is not None:
            found = self._by_key.get(key)
            if found is None or found in self._retired:
                found = self._by_key[key] = self._fresh()
            return found
        if not self._current or self._used >= self.every or self._current in self._retired:
            self._current, self._used = self._fresh(), 0
        self._used += 1
        return self._current

    def proxy_url(self, session: str) -> str:
        user = quote(str(self.rules.with_session(session)), safe="")
        return f"{self._scheme}://{user}:{self._key}@{self._hostport}"

    # -- the downloader middleware interface ------------------------------------------------
    def process_request(self, request: Request) -> None:
        if request.meta.get("exitgate") is False:
            return
        key = request.meta.get("exitgate_session_key")
        session = self.session_for(None if key is None else str(key))
        request.meta["exitgate_session_id"] = session
        request.meta["proxy"] = self.proxy_url(session)

    async def process_response(self, request: Request, response: Response) -> Response | Request:
        if request.meta.get("exitgate") is False:
            return response
        error = from_headers(response.status, response.headers)
        if error is None:
            return response
        return await self._react(request, error) or response

    async def process_exception(self, request: Request, exception: Exception) -> Request | None:
        """A failed CONNECT (https URLs): Scrapy's TunnelError keeps only the status line."""
        if request.meta.get("exitgate") is False or type(exception).__name__ != "TunnelError":
            return None
        error = from_exception(exception)
        return None if error is None else await self._react(request, error)

    async def _react(self, request: Request, error: ProxyError) -> Request | None:
        """The retry or the wait for `error`; None: let the answer (or failure) through."""
        self._inc(f"exitgate/errors/{error.code or error.status}")
        if error.fatal:
            self._close(f"exitgate_{error.code or error.status}")
            raise IgnoreRequest(f"exitgate: {error}")
        if isinstance(error, NodeError) and (error.code is None or error.code in RETRY_CODES):
            return self._retry(request, error)
        if error.back_off:
            return await self._back_off(request, error)
        return None

    # -- reactions ----------------------------------------------------------------------------
    def _retry(self, request: Request, error: ProxyError) -> Request | None:
        done = int(request.meta.get("exitgate_retries", 0))
        if done >= self.retries:
            return None
        self._retired.add(str(request.meta.get("exitgate_session_id", "")))
        self._inc("exitgate/retries")
        again = request.copy()
        again.meta["exitgate_retries"] = done + 1
        again.dont_filter = True
        return again

    async def _back_off(self, request: Request, error: ProxyError) -> Request | None:
        done = int(request.meta.get("exitgate_backoffs", 0))
        if done >= self.backoffs:
            return None
        delay = error.retry_after
        if delay is None:
            delay = self.backoff_base * 2**done
        delay = min(self.backoff_max, delay)
        self._inc("exitgate/backoffs")
        from twisted.internet import reactor

        await maybe_deferred_to_future(deferLater(reactor, delay, lambda: None))
        again = request.copy()
        again.meta["exitgate_backoffs"] = done + 1
        again.dont_filter = True
        return again

    def _close(self, reason: str) -> None:
        if self._closing or self.crawler.engine is None:
            return
        self._closing = True
        deferred_from_coro(self.crawler.engine.close_spider_async(reason=reason))

    def _inc(self, name: str) -> None:
        if self.crawler.stats is not None:
            self.crawler.stats.inc_value(name)


def _rules(value: Any) -> Username:
    """EXITGATE_RULES as a Username (with a placeholder session: ours replaces it)."""
    if isinstance(value, Username):
        if value.session is not None:
            raise NotConfigured("EXITGATE_RULES must not hold a session: the middleware sets it")
        return value
    text = str(value or "country-any")
    try:
        return Username.parse(f"{text}-session-{_PLACEHOLDER}")
    except UsernameError as exc:
        if exc.code is Code.ERR_DUPLICATE_PARAM and exc.detail == "session":
            raise NotConfigured(
                "EXITGATE_RULES must not hold a session: the middleware sets it"
            ) from None
        raise NotConfigured(f"EXITGATE_RULES: {exc}") from None


__all__ = ["RETRY_CODES", "ExitgateMiddleware"]
