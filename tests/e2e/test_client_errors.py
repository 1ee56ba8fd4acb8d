"""exitgate.client.errors with each real client (requests, httpx, aiohttp) against a real
gateway: forwarded plain-http answers carry the exact code in every client; a failed CONNECT
carries it only in aiohttp (requests and httpx keep just the status line)."""

from __future__ import annotations

import aiohttp
import httpx
import pytest
import requests

from exitgate.client import (
    AuthError,
    NodeError,
    ProxyError,
    RulesError,
    from_exception,
    from_response,
    raise_for_proxy,
)
from tests.support.gateway import GatewayThread
from tests.support.origin import Origin

TIMEOUT = 10
TLS_TARGET = "https://example.test/"  # never reached: the gateway refuses before dialing


@pytest.fixture
def key(gw: GatewayThread) -> str:
    gw.direct_node("127.0.0.2", country="us")
    return gw.package()[1]


CASES = [  # (username, key suffix, class, code, status)
    ("country-us", "wrong", AuthError, "AUTH_FAILED", 407),
    ("country-jp", "", NodeError, "NODE_NOT_FOUND", 502),
    ("country-us-colour-red", "", RulesError, "ERR_UNKNOWN_PARAM", 400),
]


@pytest.mark.parametrize(("user", "suffix", "cls", "code", "status"), CASES)
def test_forwarded_answers_requests_and_httpx(
    gw: GatewayThread, origin: Origin, key: str, user: str, suffix: str,
    cls: type[ProxyError], code: str, status: int,
) -> None:
    proxy = gw.proxy_url(user, key + suffix)
    answer = requests.get(f"{origin.url}/ip", proxies={"http": proxy}, timeout=TIMEOUT)
    err = from_response(answer)
    assert type(err) is cls and (err.code, err.status) == (code, status)
    assert err.detail == answer.headers["X-SOAX-Detail"]
    with pytest.raises(cls):
        raise_for_proxy(answer)

    with httpx.Client(proxy=proxy, timeout=TIMEOUT, trust_env=False) as client:
        answer_x = client.get(f"{origin.url}/ip")
    err_x = from_response(answer_x)
    assert type(err_x) is cls and (err_x.code, err_x.status, err_x.detail) == (
        code, status, err.detail
    )


async def test_forwarded_and_connect_answers_aiohttp(gw: GatewayThread, origin: Origin,
                                                     key: str) -> None:
    async with aiohttp.ClientSession(trust_env=False) as session:
        for user, suffix, cls, code, status in CASES:
            proxy = gw.proxy_url(user, key + suffix)
            async with session.get(f"{origin.url}/ip", proxy=proxy) as answer:
                err = from_response(answer)
            assert type(err) is cls and (err.code, err.status) == (code, status)
            # a failed CONNECT: aiohttp keeps the headers, so the code is exact
            with pytest.raises(aiohttp.ClientHttpProxyError) as info:
                async with session.get(TLS_TARGET, proxy=proxy):
                    pass
            err = from_exception(info.value)
            assert type(err) is cls and (err.code, err.status) == (code, status), err
            assert err.detail


@pytest.mark.parametrize(("user", "suffix", "cls", "code", "status"), CASES)
def test_failed_connect_requests_and_httpx_fall_back_to_the_status(
    gw: GatewayThread, key: str, user: str, suffix: str,
    cls: type[ProxyError], code: str, status: int,
) -> None:
    proxy = gw.proxy_url(user, key + suffix)
    with pytest.raises(requests.exceptions.ProxyError) as info:
        requests.get(TLS_TARGET, proxies={"https": proxy}, timeout=TIMEOUT)
    err = from_exception(info.value)
    assert err is not None and err.code is None and err.status == status
    assert isinstance(err, cls)

    with pytest.raises(httpx.ProxyError) as info_x, httpx.Client(
        proxy=proxy, timeout=TIMEOUT, trust_env=False
    ) as client:
        client.get(TLS_TARGET)
    err_x = from_exception(info_x.value)
    assert err_x is not None and err_x.code is None and err_x.status == status
    assert isinstance(err_x, cls)
    # the exact code is in the package's errors log, for the holder to read
    if suffix == "":
        log = httpx.get(gw.bound.admin_url + "/v1/self/errors", timeout=TIMEOUT,
                        headers={"Authorization": f"Bearer {key}"}).json()
        assert log[0]["code"] == code and log[0]["protocol"] == "https"


def test_successful_answers_are_not_errors(gw: GatewayThread, origin: Origin, key: str) -> None:
    answer = requests.get(f"{origin.url}/status/502",
                          proxies={"http": gw.proxy_url("country-us", key)}, timeout=TIMEOUT)
    assert answer.status_code == 502
    assert from_response(answer) is None  # the target's own error is not the gateway's
    raise_for_proxy(answer)
