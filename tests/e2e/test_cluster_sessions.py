"""Sessions across instances (issue 9): three gateways on one PostgreSQL and one Redis, a
client spreading its requests round-robin over them. Skipped where those servers are absent."""

from __future__ import annotations

import time
from pathlib import Path

import requests

from tests.e2e.test_scale_out import _wait
from tests.support.gateway import GatewayThread
from tests.support.origin import Origin


def _ip(gw: GatewayThread, origin: Origin, user: str, key: str) -> tuple[int, str]:
    r = requests.get(f"{origin.url}/ip", proxies={"http": gw.proxy_url(user, key)}, timeout=5)
    return r.status_code, (r.json()["ip"] if r.status_code == 200 else r.headers["x-soax-error"])


def test_sessions_hold_across_instances(tmp_path: Path, shared_urls, origin: Origin) -> None:
    pg, rd = shared_urls
    store = {"url": pg, "redis_url": rd}
    gws = [GatewayThread(tmp_path / n, store=store, sessions={"idle_timeout": 3.0}) for n in "abc"]
    a, b, c = gws
    try:
        a.direct_node(bind="127.0.0.2", country="us")
        a.direct_node(bind="127.0.0.3", country="us")
        pkg, key = a.package()
        # every instance sees both nodes before the test leans on them
        for gw in (b, c):
            assert _wait(lambda gw=gw: len(gw.gateway.index) >= 2  # type: ignore[misc]
                         and gw.gateway.registry.package(pkg.id) is not None)

        # a session keeps its exit whichever instance serves it
        seen = {_ip(gws[i % 3], origin, "country-us-session-x1", key) for i in range(9)}
        assert len(seen) == 1 and next(iter(seen))[0] == 200

        # rotate-requests_N counts across instances: 3 requests, then another exit
        user = "country-us-session-r1-rotate-requests_3"
        exits = [_ip(gws[i % 3], origin, user, key)[1] for i in range(6)]
        assert exits[0] == exits[1] == exits[2]
        assert exits[3] != exits[0] and exits[3] == exits[4] == exits[5]

        # the same id with other rules on another instance: 409
        assert _ip(b, origin, "country-us-network-dc-session-x1", key) == (
            409, "SESSION_PARAMS_MISMATCH")

        # B and C list A's sessions; C ends one and A starts afresh
        listed = c.call(c.gateway.sessions.list(pkg.id))
        assert {r.key.session_id for r in listed} >= {"x1", "r1"}
        assert c.call(c.gateway.sessions.end(pkg.id, "x1"))
        assert a.call(a.gateway.sessions.get(pkg.id, "x1")) is None

        # idle expiry is refreshed by any instance: use it on B and C past A's idle window
        first = _ip(a, origin, "country-us-session-idle", key)
        for gw in (b, c, b, c):
            time.sleep(1.0)
            assert _ip(gw, origin, "country-us-session-idle", key) == first
        assert a.call(a.gateway.sessions.get(pkg.id, "idle")) is not None
    finally:
        for gw in gws:
            gw.stop()

