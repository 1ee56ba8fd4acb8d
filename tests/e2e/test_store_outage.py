"""A PostgreSQL restart is survived (issue 9): requests go on (accounts are in memory), usage
is buffered while the database is away and written when it is back, exactly. The database is
reached through a relay the test cuts, so the real server other tests use is untouched."""

from __future__ import annotations

import time
from pathlib import Path

import requests

from tests.support.agents import wait_until
from tests.support.gateway import GatewayThread
from tests.support.origin import Origin
from tests.support.tcprelay import TcpRelay


def test_usage_survives_a_database_restart(tmp_path: Path, shared_urls, origin: Origin) -> None:
    pg, _ = shared_urls
    relay = TcpRelay(("127.0.0.1", 5432))
    through_relay = pg.replace("127.0.0.1:5432", f"127.0.0.1:{relay.port}")
    gw = GatewayThread(tmp_path, store={"url": through_relay})
    try:
        gw.direct_node(bind="127.0.0.2", country="us")
        pkg, key = gw.package()

        def get() -> int:
            r = requests.get(f"{origin.url}/bytes/1000",
                             proxies={"http": gw.proxy_url("country-us", key)}, timeout=5)
            return r.status_code

        assert [get() for _ in range(5)] == [200] * 5
        gw.call(gw.gateway.usage.flush())
        relay.cut()  # the database "restarts"
        assert [get() for _ in range(7)] == [200] * 7  # admission needs no database
        time.sleep(2.5)  # flushes fail meanwhile; the usage is kept
        assert gw.call(gw.gateway.usage.flush()) is False
        relay.restore()
        wait_until(lambda: gw.call(gw.gateway.usage.flush()), timeout=15)
        totals = gw.call(gw.gateway.usage.totals(pkg.id))
        assert totals["requests"] == 12
        assert totals["bytes_down"] >= 12 * 1000
        stored = gw.gateway.store.usage_totals([pkg.id])[pkg.id]  # type: ignore[union-attr]
        assert stored.requests == 12  # all of it in the database, none lost
    finally:
        gw.stop()
        relay.close()
