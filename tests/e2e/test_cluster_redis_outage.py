"""Redis restarted mid-run (issue 9): two instances keep serving; sessions fall back to
rendezvous hashing (the same exit on both instances), limits to a local share; the change is
logged once; when Redis is back, sessions and limits are shared again. Redis is reached
through a relay the test cuts, so the real server other tests use is untouched."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.support.agents import wait_until
from tests.support.gateway import GatewayThread
from tests.support.origin import Origin
from tests.support.tcprelay import TcpRelay


def _ip(gw: GatewayThread, origin: Origin, user: str, key: str) -> str:
    r = requests.get(f"{origin.url}/ip", proxies={"http": gw.proxy_url(user, key)}, timeout=10)
    assert r.status_code == 200, r.headers
    return str(r.json()["ip"])


@pytest.mark.timeout(120)
def test_redis_outage_degrades_then_recovers(
    tmp_path: Path, shared_urls, origin: Origin, caplog: pytest.LogCaptureFixture
) -> None:
    pg, rd = shared_urls
    where = urlsplit(rd)
    relay = TcpRelay((where.hostname or "127.0.0.1", where.port or 6379))
    store = {"url": pg, "redis_url": f"redis://127.0.0.1:{relay.port}/0"}
    a = GatewayThread(tmp_path / "a", store=store)
    b = GatewayThread(tmp_path / "b", store=store)
    try:
        for bind in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
            a.direct_node(bind=bind, country="us")
        pkg, key = a.package()
        wait_until(lambda: b.gateway.registry.package(pkg.id) is not None
                   and len(b.gateway.index) == 3, timeout=5)
        assert len({_ip(gw, origin, "country-us-session-before", key) for gw in (a, b, a, b)}) == 1

        with caplog.at_level(logging.INFO):
            relay.cut()
            # every session still lands on one exit, whichever instance serves it
            for n in range(6):
                user = f"country-us-session-down{n}"
                assert len({_ip(gw, origin, user, key) for gw in (a, b, a, b)}) == 1
            time.sleep(1.5)
            assert a.gateway.counters.degraded  # type: ignore[union-attr]
            relay.restore()
            wait_until(lambda: not a.gateway.counters.degraded  # type: ignore[union-attr]
                       and not b.gateway.counters.degraded, timeout=10)  # type: ignore[union-attr]
            # shared again: a new session made on A is found by B
            first = _ip(a, origin, "country-us-session-after", key)
            assert all(_ip(gw, origin, "country-us-session-after", key) == first
                       for gw in (b, a, b))
            listed = b.call(b.gateway.sessions.list(pkg.id))
            assert "after" in {r.key.session_id for r in listed}
        messages = [r.getMessage() for r in caplog.records]
        assert sum("sessions fall back" in m for m in messages) == 2  # once per instance
        assert sum("limits fall back" in m for m in messages) <= 2
        assert not any(r.exc_info for r in caplog.records if r.levelno >= logging.ERROR)
    finally:
        a.stop()
        b.stop()
        relay.close()
