"""The targeting catalogue (admin API and CLI) and package self-service (`/v1/self/...`),
against a real gateway: real proxy clients make the errors and sessions the holder reads."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

from exitgate.admin.api import create_admin_app
from exitgate.admin.api_self import GatewayReads, SelfRates
from exitgate.model import Network, NodeState
from exitgate.store.base import NodeUpdate
from exitgate.store.counters import MemoryCounters
from exitgate.targeting import TargetingCounts
from tests.support.asgi import serve_asgi
from tests.support.cli import AdminCli
from tests.support.gateway import TOKEN, GatewayThread
from tests.support.origin import Origin

TIMEOUT = 10


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
    cli = AdminCli(gw.bound.admin_url, TOKEN)
    out = cli.run("catalog", "--json", "--country", "de")
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["cities"] == [{"country": "de", "city": "berlin", "nodes": 1}]
    table = cli.run("catalog", "--network", "mob")
    assert table.exit_code == 0, table.output
    assert "online nodes: 1" in table.output
    assert "massachusetts" in table.output and "comcast" not in table.output
    bad = cli.run("catalog", "--country", "xx")
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
    nodes = list(gw.gateway.registry.nodes)
    made = httpx.post(f"{gw.bound.admin_url}/v1/packages/{a.id}/bans",
                      headers={"Authorization": f"Bearer {TOKEN}"}, timeout=TIMEOUT,
                      json={"domain": "example.com", "node_id": nodes[0], "ttl": 300})
    assert made.status_code in (200, 201), made.text
    bans = mine(gw, "bans", key_a)
    assert [(b["domain"], b["node_id"]) for b in bans] == [("example.com", nodes[0])]
    assert 0 < bans[0]["left"] <= 300
    assert mine(gw, "bans", key_b) == []  # never another package's


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
    # GET only: the admin guard lets only GET/HEAD under /v1/self/ past the admin token
    post = httpx.post(gw.bound.admin_url + "/v1/self/errors", timeout=TIMEOUT,
                      headers={"Authorization": f"Bearer {key}"})
    assert post.status_code == 401


@pytest.fixture
def frozen_self_api(gw: GatewayThread) -> Iterator[str]:
    """The gateway's own parts behind a second admin app whose rate-limit clock stands still,
    on a real uvicorn server: no bucket refills, so every count below is exact however slow
    the machine is."""
    g = gw.gateway
    assert g.service is not None
    reads = GatewayReads(
        registry=g.registry,
        targeting=TargetingCounts(),
        recorder=g.recorder,
        sessions=g.sessions,
        counters=MemoryCounters(),
        rates=SelfRates(key_rate=1, key_burst=3, address_rate=1, address_burst=8),
        clock=lambda: 1_000_000,
    )
    with serve_asgi(create_admin_app(g.service, TOKEN, reads=reads)) as url:
        yield url


def test_rate_limited_per_key_and_per_address(gw: GatewayThread, frozen_self_api: str) -> None:
    _, key_a = gw.package()
    _, key_b = gw.package()
    with httpx.Client(base_url=frozen_self_api, timeout=TIMEOUT, trust_env=False) as http:

        def get(key: str) -> httpx.Response:
            return http.get("/v1/self/errors", headers={"Authorization": f"Bearer {key}"})

        assert [get(key_a).status_code for _ in range(4)] == [200, 200, 200, 429]  # burst 3
        refused = get(key_a)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"  # one token at 1/s
        assert refused.json() == {"detail": "too many requests"}
        # another key from the same address still gets through: the limit is per key
        assert get(key_b).status_code == 200
        # the address has spent 6 of its 8; key guesses count against it too
        assert [get(f"guess{i}").status_code for i in range(3)] == [401, 401, 429]
        assert get(key_b).status_code == 429  # the address bucket is empty for every key


def test_nothing_logs_a_key(gw: GatewayThread, caplog: pytest.LogCaptureFixture,
                            tmp_path: Path) -> None:
    _, key = gw.package()
    caplog.set_level("DEBUG")
    me(gw, "errors", key)
    me(gw, "errors", key + "wrong")
    assert key not in caplog.text
