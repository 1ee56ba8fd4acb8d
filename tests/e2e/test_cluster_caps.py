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


def test_rps_and_concurrency_limits_hold_across_three_instances(
    tmp_path: Path, shared_urls, origin: Origin
) -> None:
    import socket
    import threading
    import time

    from tests.support.gateway import basic

    pg, rd = shared_urls
    store = {"url": pg, "redis_url": rd}
    gws = [GatewayThread(tmp_path / n, store=store) for n in "abc"]
    try:
        gws[0].direct_node(bind="127.0.0.2", country="us")
        _, key = gws[0].package(limits=Limits(concurrency=2))
        rated, rated_key = gws[0].package(limits=Limits(rps=10))
        for gw in gws:
            wait_until(lambda gw=gw: gw.gateway.registry.package(rated.id) is not None
                       and len(gw.gateway.index) == 1, timeout=5)
        # concurrency: two tunnels held open on A and B, a third on C is refused
        held = []
        for gw in gws[:2]:
            sock = socket.create_connection((gw.proxy_host, gw.proxy_port), timeout=5)
            sock.sendall(f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\nHost: x\r\n"
                         f"Proxy-Authorization: {basic('country-us', key)}\r\n\r\n".encode())
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            held.append(sock)
        assert _get(gws[2], origin, key, 10)[0] == "RATE_LIMIT_EXCEEDED"
        for sock in held:
            sock.close()
        wait_until(lambda: _get(gws[2], origin, key, 10)[0] == "OK", timeout=5)  # released

        # rps: clients round-robin over the three instances as fast as they can for 2 s
        ok = 0
        lock = threading.Lock()
        start = time.monotonic()
        stop_at = start + 2.0

        def hammer(i: int) -> None:
            nonlocal ok
            n = i
            while time.monotonic() < stop_at:
                code = _get(gws[n % 3], origin, rated_key, 10)[0]
                n += 1
                if code == "OK":
                    with lock:
                        ok += 1

        threads = [threading.Thread(target=hammer, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        allowed = 10 + 10 * (time.monotonic() - start)  # a full bucket, then the rate
        assert 0.85 * allowed <= ok <= 1.15 * allowed, (ok, allowed)
    finally:
        for gw in gws:
            gw.stop()
