"""The Scrapy middleware's own decisions, without a crawl (the crawls: e2e/test_scrapy.py)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from scrapy import Request
from scrapy.downloadermiddlewares.httpproxy import HttpProxyMiddleware
from scrapy.exceptions import NotConfigured
from scrapy.http import Response
from scrapy.utils.test import get_crawler

from exitgate.client import Username
from exitgate.client.scrapy import ExitgateMiddleware

PROXY = "127.0.0.1:1337"


def middleware(**settings: Any) -> ExitgateMiddleware:
    crawler = get_crawler(settings_dict={"EXITGATE_PROXY": PROXY, "EXITGATE_KEY": "k/ey",
                                         **settings})
    return ExitgateMiddleware.from_crawler(crawler)


def test_sessions_rotate_every_n_and_per_key() -> None:
    mw = middleware(EXITGATE_SESSION_EVERY=3)
    plain = [mw.session_for(None) for _ in range(7)]
    assert plain[0] == plain[1] == plain[2] != plain[3] == plain[4] == plain[5] != plain[6]
    assert mw.session_for("item1") == mw.session_for("item1") != mw.session_for("item2")


def test_a_retired_session_is_never_handed_out_again() -> None:
    mw = middleware(EXITGATE_SESSION_EVERY=100)
    first = mw.session_for(None)
    mw._retired.add(first)
    assert mw.session_for(None) != first


def test_the_proxy_url_carries_rules_session_and_key() -> None:
    mw = middleware(EXITGATE_RULES="country-us-rotate-timed_60")
    request = Request("http://example.test/")
    mw.process_request(request)
    session = request.meta["exitgate_session_id"]
    # Scrapy's own proxy middleware turns it into the header the gateway reads
    HttpProxyMiddleware().process_request(request)
    assert request.meta["proxy"] == f"http://{PROXY}"
    creds = base64.b64decode(request.headers[b"Proxy-Authorization"].split()[1]).decode()
    assert creds == f"country-us-session-{session}-rotate-timed_60:k/ey"
    assert Username.parse(creds.split(":")[0]).session == session


@pytest.mark.parametrize(
    "settings",
    [
        {"EXITGATE_RULES": "country-us-session-mine"},
        {"EXITGATE_RULES": "country-zz"},
        {"EXITGATE_SESSION_EVERY": 0},
        {"EXITGATE_PROXY": "no-port"},
        {"EXITGATE_KEY": ""},
    ],
)
def test_bad_settings_disable_it_with_a_reason(settings: dict[str, Any]) -> None:
    with pytest.raises(NotConfigured):
        middleware(**settings)


async def test_answers_without_a_gateway_error_pass() -> None:
    mw = middleware()
    request = Request("http://example.test/")
    response = Response("http://example.test/", status=502)  # the target's own 502
    assert await mw.process_response(request, response) is response
