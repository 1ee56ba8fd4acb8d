"""Changes everywhere within a second (issue 9): a key rotation, a pause, a limit change and a
node change made through one instance take effect on the others in under a second (the
periodic database re-read alone takes up to 2 s). Needs PostgreSQL and Redis."""

from __future__ import annotations

from pathlib import Path

import requests

from exitgate.model import NodeState, PackageStatus
from exitgate.store.base import NodeUpdate, PackageUpdate
from tests.support.agents import wait_until
from tests.support.gateway import TOKEN, GatewayThread
from tests.support.origin import Origin


def _code(gw: GatewayThread, origin: Origin, user: str, key: str) -> str:
    r = requests.get(f"{origin.url}/ip", proxies={"http": gw.proxy_url(user, key)}, timeout=5)
    return "OK" if r.status_code == 200 else r.headers["x-soax-error"]


def _within(seconds: float, check) -> None:  # type: ignore[no-untyped-def]
    """`check` holds within `seconds` (wait_until raises otherwise)."""
    wait_until(check, timeout=seconds, step=0.02)


def test_admin_changes_reach_every_instance_within_a_second(
    tmp_path: Path, shared_urls, origin: Origin
) -> None:
    pg, rd = shared_urls
    store = {"url": pg, "redis_url": rd}
    a = GatewayThread(tmp_path / "a", store=store)
    b = GatewayThread(tmp_path / "b", store=store)
    try:
        node = a.direct_node(bind="127.0.0.2", country="us")
        pkg, key = a.package()
        wait_until(lambda: b.gateway.registry.package(pkg.id) is not None, timeout=5)
        wait_until(lambda: _code(b, origin, "country-us", key) == "OK", timeout=5)

        a.call(a.service.update_package(pkg.id, PackageUpdate(status=PackageStatus.PAUSED)))
        _within(1.0, lambda: _code(b, origin, "country-us", key) == "PACKAGE_PAUSED")
        a.call(a.service.update_package(pkg.id, PackageUpdate(status=PackageStatus.ACTIVE)))
        _within(1.0, lambda: _code(b, origin, "country-us", key) == "OK")

        new_key = a.call(a.service.rotate_key(pkg.id))
        _within(1.0, lambda: _code(b, origin, "country-us", key) == "AUTH_FAILED")
        assert _code(b, origin, "country-us", new_key) == "OK"

        a.call(a.service.update_package(pkg.id, PackageUpdate(rps_limit=0)))
        _within(1.0, lambda: _code(b, origin, "country-us", new_key) == "RATE_LIMIT_EXCEEDED")
        a.call(a.service.update_package(pkg.id, PackageUpdate(rps_limit=None)))

        a.call(a.service.update_node(node.id, NodeUpdate(state=NodeState.OFFLINE)))
        _within(1.0, lambda: _code(b, origin, "country-us", new_key) == "NODE_NOT_FOUND")
    finally:
        a.stop()
        b.stop()


def test_any_instance_shows_a_packages_errors(tmp_path: Path, shared_urls, origin: Origin) -> None:
    pg, rd = shared_urls
    store = {"url": pg, "redis_url": rd}
    a = GatewayThread(tmp_path / "a", store=store)
    b = GatewayThread(tmp_path / "b", store=store)
    try:
        a.direct_node(bind="127.0.0.2", country="us")
        pkg, key = a.package()
        wait_until(lambda: b.gateway.registry.package(pkg.id) is not None, timeout=5)
        assert _code(b, origin, "country-de", key) == "NODE_NOT_FOUND"  # an error on B

        def seen_on_a() -> bool:
            r = requests.get(f"{a.bound.admin_url}/v1/packages/{pkg.id}/errors",
                             headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
            return r.status_code == 200 and any(
                e["code"] == "NODE_NOT_FOUND" for e in r.json())

        wait_until(seen_on_a, timeout=2)
        assert a.gateway.recorder.recent_errors(pkg.id) == []  # not A's own: the shared log
    finally:
        a.stop()
        b.stop()
