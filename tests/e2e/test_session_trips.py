"""Sessions in Redis cost ONE script per request, kept or new (issue 9), through a real gateway.

The session store's Redis client (its own connection pool: nothing else of the gateway
shares it) is wrapped to record every command it sends. Skipped where Redis is absent."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from exitgate.model import Node
from tests.support.gateway import GatewayThread
from tests.support.origin import Origin
from tests.support.services import REDIS_URL
from tests.support.upstream_proxy import UpstreamProcess


@pytest.fixture
def redis_gw(tmp_path: Path) -> Iterator[GatewayThread]:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis not reachable: {exc}")
    prefix = f"egtest:{secrets.token_hex(4)}:"
    gw = GatewayThread(tmp_path, store={"redis_url": REDIS_URL, "redis_prefix": prefix})
    try:
        yield gw
    finally:
        gw.stop()
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


def _record_commands(gw: GatewayThread) -> list[str]:
    store: Any = gw.gateway.sessions.store
    sent: list[str] = []
    original = store.redis.execute_command

    async def recording(*args: Any, **kwargs: Any) -> Any:
        name = str(args[0]).upper()
        if name != "TIME":  # the clock sync (every 30 s), not a request's
            sent.append(name)
        return await original(*args, **kwargs)

    store.redis.execute_command = recording
    return sent


def _get(gw: GatewayThread, origin: Origin, user: str, key: str) -> requests.Response:
    proxies = {"http": gw.proxy_url(user, key)}
    return requests.get(f"{origin.url}/ip", proxies=proxies, timeout=5)


def test_a_kept_session_request_is_one_script(redis_gw: GatewayThread, origin: Origin) -> None:
    gw = redis_gw
    gw.direct_node(bind="127.0.0.2", country="us")
    gw.direct_node(bind="127.0.0.3", country="us")
    pkg, key = gw.package()
    sent = _record_commands(gw)

    first = _get(gw, origin, "country-us-session-one", key)
    assert first.status_code == 200 and first.headers["x-exitgate-session"] == "new"
    assert sent == ["EVALSHA"]  # touch claims it for the candidate; nothing at commit
    created = gw.call(gw.gateway.sessions.get(pkg.id, "one"))
    assert created is not None and (created.requests, created.node_requests) == (1, 1)
    for _ in range(5):
        sent.clear()
        kept = _get(gw, origin, "country-us-session-one", key)
        assert kept.status_code == 200 and kept.headers["x-exitgate-session"] == "kept"
        assert kept.json()["ip"] == first.json()["ip"]
        assert sent == ["EVALSHA"]  # read, count and idle refresh in one script

    # a rotation is that script plus the compare-and-set of the move, nothing at commit
    user = "country-us-session-rot-rotate-requests_1"
    sent.clear()
    assert _get(gw, origin, user, key).headers["x-exitgate-session"] == "new"
    assert sent == ["EVALSHA"]
    sent.clear()
    moved = _get(gw, origin, user, key)
    assert moved.status_code == 200 and moved.headers["x-exitgate-session"] == "rotated"
    assert sent == ["EVALSHA", "EVALSHA"]

    # a mismatch is the one script too, and writes nothing
    sent.clear()
    refused = _get(gw, origin, "country-us-network-dc-session-one", key)
    assert refused.status_code == 409
    assert refused.headers["x-soax-error"] == "SESSION_PARAMS_MISMATCH"
    assert sent == ["EVALSHA"]
    record = gw.call(gw.gateway.sessions.get(pkg.id, "one"))
    assert record is not None and record.requests == 6  # 1 new + 5 kept; the 409 not counted


def test_a_request_that_reaches_no_node_gives_its_count_back(
    redis_gw: GatewayThread, origin: Origin
) -> None:
    """Counted on arrival, refunded when the node fails: the session's request count and idle
    clock are those of the last request that reached a node (SPEC 5)."""
    gw = redis_gw
    exit_proxy = UpstreamProcess("127.0.0.2")
    try:
        gw.upstream_node(exit_proxy.url)
        pkg, key = gw.package()
        user = "country-us-session-dead-onerror-fail"
        assert _get(gw, origin, user, key).status_code == 200
        assert _get(gw, origin, user, key).headers["x-exitgate-session"] == "kept"
        before = gw.call(gw.gateway.sessions.get(pkg.id, "dead"))
        assert before is not None and before.requests == 2
        exit_proxy.kill()
        sent = _record_commands(gw)
        failed = _get(gw, origin, user, key)
        assert (failed.status_code, failed.headers["x-soax-error"]) == (502, "NODE_UNAVAILABLE")
        after = gw.call(gw.gateway.sessions.get(pkg.id, "dead"))  # waits for the refund
        assert after == before  # count, node counter and last_used as they were
        assert sent == ["EVALSHA"] * 3  # touch; the refund, in the background; our get
    finally:
        exit_proxy.kill()


def _force_first_pick(gw: GatewayThread, node: Node) -> None:
    """The router's selection returns `node` whenever it may (the new session's candidate),
    so the test knows which node the session is claimed for."""
    router: Any = gw.gateway.router
    select = router.select

    def forced(filters: Any, exclude: Any, like: Any, spread: Any = ()) -> Any:
        if node.id not in exclude:
            return router.index.get(node.id)
        return select(filters, exclude, like, spread)

    router.select = forced


def test_a_new_session_whose_first_dial_fails_is_replaced(
    redis_gw: GatewayThread, origin: Origin
) -> None:
    """The claimed candidate is dead: the replacement is the compare-and-set on (node, epoch
    0), the one script more; the session ends on the node that served."""
    gw = redis_gw
    exit_proxy = UpstreamProcess("127.0.0.2")
    try:
        dead = gw.upstream_node(exit_proxy.url)
        exit_proxy.kill()
        gw.direct_node(bind="127.0.0.3", country="us")
        pkg, key = gw.package()
        _force_first_pick(gw, dead)
        sent = _record_commands(gw)
        served = _get(gw, origin, "country-us-session-fresh", key)
        assert served.status_code == 200 and served.headers["x-exitgate-session"] == "new"
        assert served.json()["ip"] == "127.0.0.3"
        assert sent == ["EVALSHA", "EVALSHA"]  # touch (claimed for the dead node), move
        record = gw.call(gw.gateway.sessions.get(pkg.id, "fresh"))
        assert record is not None and record.node_id != dead.id
        assert (record.requests, record.node_requests, record.epoch) == (1, 1, 1)
        kept = _get(gw, origin, "country-us-session-fresh", key)
        assert kept.headers["x-exitgate-session"] == "kept" and kept.json()["ip"] == "127.0.0.3"
    finally:
        exit_proxy.kill()


def test_a_new_session_whose_request_reaches_no_node_is_gone(
    redis_gw: GatewayThread, origin: Origin
) -> None:
    gw = redis_gw
    exit_proxy = UpstreamProcess("127.0.0.2")
    try:
        gw.upstream_node(exit_proxy.url)
        exit_proxy.kill()
        pkg, key = gw.package()
        sent = _record_commands(gw)
        failed = _get(gw, origin, "country-us-session-doomed", key)
        assert (failed.status_code, failed.headers["x-soax-error"]) == (502, "NODE_UNAVAILABLE")
        assert gw.call(gw.gateway.sessions.get(pkg.id, "doomed")) is None  # after the refund
        assert gw.call(gw.gateway.sessions.list(pkg.id)) == []
        assert sent == ["EVALSHA"] * 4  # touch (claim); the refund; our get and list
    finally:
        exit_proxy.kill()
