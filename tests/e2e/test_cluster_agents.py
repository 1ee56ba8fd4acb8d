"""Agents reachable from every instance (issue 9): an agent connected to instance A serves
requests admitted on B and C, through one interlink hop. Needs PostgreSQL and Redis."""

from __future__ import annotations

import time
from pathlib import Path

import requests

from exitgate.model import NodeState
from tests.support.agents import HUB_TOKEN, ThreadAgent, wait_until
from tests.support.gateway import GatewayThread
from tests.support.origin import Origin


def _cluster(tmp_path: Path, shared_urls) -> list[GatewayThread]:
    pg, rd = shared_urls
    return [
        GatewayThread(tmp_path / name, store={"url": pg, "redis_url": rd},
                      hub={"token": HUB_TOKEN}, cluster={"listen": "127.0.0.1:0"})
        for name in "abc"
    ]


def _online(gw: GatewayThread, node_id: str) -> bool:
    node = gw.gateway.registry.node(node_id)
    return node is not None and node.state is NodeState.ONLINE


def test_an_agent_on_a_serves_requests_admitted_on_b_and_c(
    tmp_path: Path, shared_urls, origin: Origin
) -> None:
    gws = _cluster(tmp_path, shared_urls)
    a, b, c = gws
    agent = None
    try:
        hub = a.gateway.hub
        assert hub is not None
        agent = ThreadAgent(hub, "fleet-1")
        pkg, key = a.package()
        for gw in gws:
            wait_until(lambda gw=gw: _online(gw, "fleet-1"), timeout=10)
            wait_until(lambda gw=gw: gw.gateway.registry.package(pkg.id) is not None, timeout=10)
        body = b"x" * 100_000
        for gw in (b, c, a, b, c):
            r = requests.post(f"{origin.url}/echo", data=body,
                              proxies={"http": gw.proxy_url("country-us", key)}, timeout=10)
            assert r.status_code == 200, r.headers
            assert r.json()["length"] == len(body)
        assert a.gateway.interlink is not None and b.gateway.interlink is not None
        assert a.gateway.interlink.carried == 4
        assert b.gateway.interlink.forwarded == 2
        # each admitting instance metered its own requests; together they add up exactly
        for gw in gws:
            gw.call(gw.gateway.usage.flush())
        totals = b.call(b.gateway.usage.totals(pkg.id))
        assert totals["requests"] == 5 and totals["bytes_up"] >= 5 * len(body)
        # CONNECT tunnels, too
        r = requests.get(f"{origin.url}/ip", proxies={"http": c.proxy_url("country-us", key)},
                         timeout=10)
        assert r.status_code == 200
        # A's restart of another instance never marks A's agent offline
        b.stop()
        gws.remove(b)
        b2 = GatewayThread(tmp_path / "b2", store={"url": shared_urls[0],
                           "redis_url": shared_urls[1]}, hub={"token": HUB_TOKEN},
                           cluster={"listen": "127.0.0.1:0"})
        gws.append(b2)
        time.sleep(2.5)
        assert _online(a, "fleet-1") and _online(b2, "fleet-1")
        r = requests.get(f"{origin.url}/ip", proxies={"http": b2.proxy_url("country-us", key)},
                         timeout=10)
        assert r.status_code == 200
    finally:
        if agent is not None:
            agent.stop()
        for gw in gws:
            gw.stop()


def test_when_the_holder_is_gone_the_agent_leaves_the_directory(
    tmp_path: Path, shared_urls, origin: Origin
) -> None:
    gws = _cluster(tmp_path, shared_urls)
    a, b, _ = gws
    agent = None
    try:
        hub = a.gateway.hub
        assert hub is not None
        agent = ThreadAgent(hub, "fleet-2")
        pkg, key = a.package()
        wait_until(lambda: _online(b, "fleet-2")
                   and b.gateway.registry.package(pkg.id) is not None, timeout=10)
        directory = b.gateway.interlink.directory  # type: ignore[union-attr]
        holder = b.call(directory.lookup("fleet-2"))
        assert holder is not None and holder.instance == a.gateway.interlink.directory.instance  # type: ignore[union-attr]
        agent.stop()
        agent = None
        wait_until(lambda: b.call(directory.lookup("fleet-2")) is None, timeout=10)
        r = requests.get(f"{origin.url}/ip", proxies={"http": b.proxy_url("country-us", key)},
                         timeout=10)
        assert r.status_code == 502 and r.headers["x-soax-error"] in (
            "NODE_NOT_FOUND", "NODE_UNAVAILABLE")
    finally:
        if agent is not None:
            agent.stop()
        for gw in gws:
            gw.stop()
