"""Two gateway instances on one PostgreSQL and one Redis: a package made on one serves on the
other, and a rate limit holds across both. Skipped where those servers are not reachable."""

from __future__ import annotations

import os
from pathlib import Path

import requests

from exitgate.model import Limits
from tests.support.gateway import GatewayThread
from tests.support.origin import Origin

PG_ADMIN = os.environ.get("EXITGATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("EXITGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _wait(predicate, timeout: float = 8.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_two_instances_share_accounts_and_limits(tmp_path: Path, shared_urls, origin: Origin):
    pg, rd = shared_urls
    store = {"url": pg, "redis_url": rd}
    a = GatewayThread(tmp_path / "a", store=store)
    b = GatewayThread(tmp_path / "b", store=store)
    try:
        a.direct_node(bind="127.0.0.2", country="us")
        pkg, key = a.package(limits=Limits(rps=4))

        def served_by_b() -> bool:
            r = requests.get(f"{origin.url}/ip", proxies={"http": b.proxy_url("country-us", key)},
                             timeout=5)
            return r.status_code == 200 and r.json()["ip"] == "127.0.0.2"

        assert _wait(served_by_b)  # b re-read the shared database
        import time

        time.sleep(1.2)  # let the bucket refill
        codes = []
        for i in range(12):
            gw = a if i % 2 else b
            r = requests.get(f"{origin.url}/ip", proxies={"http": gw.proxy_url("country-us", key)},
                             timeout=5)
            codes.append(r.status_code)
        assert 4 <= codes.count(200) <= 6  # one bucket of 4 across both instances
        assert codes.count(429) >= 6
        # usage from both instances lands in the one database
        a.call(a.gateway.usage.flush())
        b.call(b.gateway.usage.flush())
        total = a.call(a.gateway.usage.totals(pkg.id))
        assert total["requests"] >= codes.count(200) + 1
    finally:
        a.stop()
        b.stop()
