"""The targeting catalogue (admin API and CLI) and package self-service (`/v1/self/...`),
against a real gateway: real proxy clients make the errors and sessions the holder reads."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from typer.testing import CliRunner

from exitgate.cli import app as cli_app
from exitgate.model import Network, NodeState
from exitgate.store.base import NodeUpdate
from tests.support.gateway import TOKEN, GatewayThread
from tests.support.origin import Origin

TIMEOUT = 10
CLEAN_ENV = {"EXITGATE_ADMIN_TOKEN": None, "EXITGATE_ADMIN_URL": None, "EXITGATE_DATA_DIR": None}


def admin(gw: GatewayThread, path: str, token: str = TOKEN, **params: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(gw.bound.admin_url + path, headers=headers, params=params, timeout=TIMEOUT)


def seed_pool(gw: GatewayThread) -> list[str]:
    ids = [
        gw.direct_node("127.0.0.2", "us", "new_york", "new_york", "comcast", 7922, Network.RES).id,
        gw.direct_node("127.0.0.3", "us", "new_york", "new_york", "comcast", 7922, Network.RES).id,
        gw.direct_node("127.0.0.4", "us", "boston", "massachusetts", "verizon", 701,
                       Network.MOB).id,
        gw.direct_node("127.0.0.5", "de", "berlin", "berlin", "hetzner", 24940, Network.DC).id,
    ]
    return ids


def test_admin_catalog_counts_what_is_online_now(gw: GatewayThread) -> None:
    ids = seed_pool(gw)
    found = admin(gw, "/v1/catalog").json()
    assert found["nodes"] == 4
    assert found["countries"] == [{"country": "us", "nodes": 3}, {"country": "de", "nodes": 1}]
    assert found["cities"][0] == {"country": "us", "city": "new_york", "nodes": 2}
    assert found["asns"][0] == {"asn": 7922, "nodes": 2}

    only = admin(gw, "/v1/catalog", country="US", network="res").json()
    assert only["nodes"] == 2 and only["isps"] == [{"isp": "comcast", "nodes": 2}]

    # kept from the registry's node changes: a node taken offline leaves the catalogue
    # within the cache's bound (1 s)
    gw.call(gw.service.update_node(ids[0], NodeUpdate(state=NodeState.OFFLINE)))
    deadline = time.monotonic() + 3
    while admin(gw, "/v1/catalog", country="us", network="res").json()["nodes"] != 1:
        assert time.monotonic() < deadline, "the offline node is still listed"
        time.sleep(0.1)

    bad = admin(gw, "/v1/catalog", country="xx")
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "country"]
    assert admin(gw, "/v1/catalog", network="tor").status_code == 422
    assert admin(gw, "/v1/catalog", token="").status_code == 401


def test_cli_catalog(gw: GatewayThread) -> None:
    seed_pool(gw)
    runner = CliRunner()
    base = ["catalog", "--admin", gw.bound.admin_url, "--token", TOKEN]
    out = runner.invoke(cli_app, [*base, "--json", "--country", "de"], env=CLEAN_ENV)
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["cities"] == [{"country": "de", "city": "berlin", "nodes": 1}]
    table = runner.invoke(cli_app, [*base, "--network", "mob"], env=CLEAN_ENV)
    assert table.exit_code == 0, table.output
    assert "online nodes: 1" in table.output
    assert "massachusetts" in table.output and "comcast" not in table.output
    bad = runner.invoke(cli_app, [*base, "--country", "xx"], env=CLEAN_ENV)
    assert bad.exit_code == 1 and "error:" in bad.output and "Traceback" not in bad.output


def me(gw: GatewayThread, path: str, key: str, **params: Any) -> httpx.Response:
    return admin(gw, "/v1/self/" + path, token=key, **params)


def mine(gw: GatewayThread, path: str, key: str, **params: Any) -> Any:
    answer = me(gw, path, key, **params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_holder_reads_its_own_errors_usage_sessions_catalog(
    gw: GatewayThread, origin: Origin
) -> None:
    seed_pool(gw)
    a, key_a = gw.package()
    b, key_b = gw.package(networks=frozenset({Network.DC}), rules=frozenset({"country"}))
    proxy = f"{gw.proxy_host}:{gw.proxy_port}"

    # A: a SOCKS5 request with a bad rule (the client sees reply 0x02 only) ...
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{origin.url}/ip", timeout=TIMEOUT,
                     proxies={"http": f"socks5h://country-us-colour-red:{key_a}@{proxy}"})
    # ... a CONNECT that finds no node, and a sticky session that works
    with pytest.raises(requests.exceptions.ProxyError):
        requests.get("https://example.test/", timeout=TIMEOUT,
                     proxies={"https": gw.proxy_url("country-jp", key_a)})
    ok = requests.get(f"{origin.url}/ip", timeout=TIMEOUT,
                      proxies={"http": gw.proxy_url("country-us-session-mine", key_a)})
    assert ok.status_code == 200
    # B: one failure of its own
    with pytest.raises(requests.exceptions.ProxyError):
        requests.get("https://example.test/", timeout=TIMEOUT,
                     proxies={"https": gw.proxy_url("country-us", key_b)})

    errors_a = mine(gw, "errors", key_a)
    assert [(e["code"], e["protocol"]) for e in errors_a] == [
        ("NODE_NOT_FOUND", "https"), ("ERR_UNKNOWN_PARAM", "socks5")
    ]
    assert errors_a[1]["detail"] == "colour"
    errors_b = mine(gw, "errors", key_b)
    assert [e["code"] for e in errors_b] == ["NODE_NOT_FOUND"]  # nothing of A's

    sessions_a = mine(gw, "sessions", key_a)
    assert [s["session"] for s in sessions_a] == ["mine"] and sessions_a[0]["requests"] == 1
    assert mine(gw, "sessions", key_b) == []

    hours = mine(gw, "usage", key_a)
    assert hours and hours[0]["requests"] >= 1
    assert hours[0]["errors"] == {"ERR_UNKNOWN_PARAM": 1, "NODE_NOT_FOUND": 1}
    assert mine(gw, "usage", key_b)[0]["errors"] == {"NODE_NOT_FOUND": 1}

    pkg = mine(gw, "package", key_b)
    assert pkg["id"] == b.id and "key" not in pkg and "key_hash" not in pkg
    assert mine(gw, "package", key_a)["id"] == a.id

    full = mine(gw, "catalog", key_a)
    assert full["nodes"] == 4
    limited = mine(gw, "catalog", key_b)  # dc only, and only the country rule
    assert limited["nodes"] == 1 and limited["countries"] == [{"country": "de", "nodes": 1}]
    assert limited["cities"] == limited["isps"] == limited["asns"] == []
    assert mine(gw, "catalog", key_b, network="res")["nodes"] == 0

    assert mine(gw, "bans", key_a) == []


def test_admin_token_is_not_a_package_key(gw: GatewayThread) -> None:
    _, key = gw.package()
    for token in (TOKEN, "", "not-a-key", key + "x"):
        answer = me(gw, "errors", token)
        assert answer.status_code == 401, token
        assert answer.headers["www-authenticate"] == "Bearer"
        assert answer.json() == {"detail": "missing or invalid package key"}
    # and a package key opens no admin route
    assert admin(gw, "/v1/packages", token=key).status_code == 401
    assert admin(gw, "/v1/catalog", token=key).status_code == 401
    # GET only
    post = httpx.post(gw.bound.admin_url + "/v1/self/errors", timeout=TIMEOUT,
                      headers={"Authorization": f"Bearer {key}"})
    assert post.status_code == 405


async def test_rate_limited_per_key_and_per_address(gw: GatewayThread) -> None:
    """Requests sent at once, so a slow machine cannot refill the buckets between them."""
    _, key_a = gw.package()
    _, key_b = gw.package()
    async with httpx.AsyncClient(base_url=gw.bound.admin_url, timeout=TIMEOUT) as http:

        async def burst(keys: list[str]) -> list[httpx.Response]:
            return await asyncio.gather(*(
                http.get("/v1/self/errors", headers={"Authorization": f"Bearer {k}"})
                for k in keys
            ))

        answers: list[httpx.Response] = []
        for _ in range(10):  # key bucket: burst 20, 5/s
            answers += await burst([key_a] * 25)
            if any(a.status_code == 429 for a in answers):
                break
        assert {a.status_code for a in answers} == {200, 429}
        refused = next(a for a in answers if a.status_code == 429)
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json() == {"detail": "too many requests"}
        # another key from the same address still gets through: the limit is per key
        [other] = await burst([key_b])
        assert other.status_code == 200
        # guessing keys: 401s, until the address's own bucket (burst 60, 20/s) is empty;
        # it drains as long as the server answers faster than 20/s
        seen: set[int] = set()
        for _ in range(20):
            guesses = await burst([f"guess{i}" for i in range(50)])
            seen |= {a.status_code for a in guesses}
            assert all("retry-after" in a.headers for a in guesses if a.status_code == 429)
            if 429 in seen:
                break
        assert seen == {401, 429}


def test_nothing_logs_a_key(gw: GatewayThread, caplog: pytest.LogCaptureFixture,
                            tmp_path: Path) -> None:
    _, key = gw.package()
    caplog.set_level("DEBUG")
    me(gw, "errors", key)
    me(gw, "errors", key + "wrong")
    assert key not in caplog.text
