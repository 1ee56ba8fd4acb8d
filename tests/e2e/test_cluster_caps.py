"""Traffic caps on the cluster's total (issue 9): a package over its cap is refused on every
instance, and the bytes relayed past the cap stay within the documented bound (one metering
slice plus what an instance relays in one flush interval). Needs PostgreSQL and Redis."""

from __future__ import annotations

from pathlib import Path

import requests

from exitgate.model import Limits
from tests.support.agents import wait_until
from tests.support.gateway import GatewayThread
from tests.support.origin import Origin

CAP = 3_000_000
MIB = 1 << 20


def _get(gw: GatewayThread, origin: Origin, key: str, n: int) -> tuple[str, int]:
    try:
        r = requests.get(f"{origin.url}/bytes/{n}",
                         proxies={"http": gw.proxy_url("country-us", key)}, timeout=10)
    except requests.RequestException:
        return "CUT", 0
    return ("OK" if r.status_code == 200 else r.headers.get("x-soax-error", str(r.status_code)),
            len(r.content))


def test_a_cap_crossed_on_one_instance_holds_on_every_instance(
    tmp_path: Path, shared_urls, origin: Origin
) -> None:
    pg, rd = shared_urls
    store = {"url": pg, "redis_url": rd}
    a = GatewayThread(tmp_path / "a", store=store)
    b = GatewayThread(tmp_path / "b", store=store)
    try:
        a.direct_node(bind="127.0.0.2", country="us")
        pkg, key = a.package(limits=Limits(traffic_bytes=CAP))
        wait_until(lambda: b.gateway.registry.package(pkg.id) is not None
                   and len(b.gateway.index) == 1, timeout=5)
        assert _get(a, origin, key, 2_000_000) == ("OK", 2_000_000)
        # B learns A's 2 MB within a flush and a re-base: its view of the package is shared
        wait_until(lambda: b.gateway.usage.metering.used(pkg.id) >= 2_000_000, timeout=5)
        first = _get(b, origin, key, 2_000_000)  # crosses the cap mid-body: cut
        assert first[0] in ("OK", "CUT") and first[1] < 2_000_000
        wait_until(lambda: _get(b, origin, key, 10)[0] == "TRAFFIC_LIMIT_EXCEEDED", timeout=5)
        # and A, which relayed nothing since, refuses too once B's bytes are written
        wait_until(lambda: _get(a, origin, key, 10)[0] == "TRAFFIC_LIMIT_EXCEEDED", timeout=5)
        for gw in (a, b):
            gw.call(gw.gateway.usage.flush())
        total = a.call(a.gateway.usage.totals(pkg.id))
        used = total["bytes_up"] + total["bytes_down"]
        assert CAP <= used <= CAP + MIB, used  # SPEC 7: overshoot at most 1 MiB
    finally:
        a.stop()
        b.stop()
