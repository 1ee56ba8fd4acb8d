"""Webhooks through the real wire: a gateway, real proxy traffic, a loopback receiver that
verifies every signature with the `standardwebhooks` library."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

from exitgate.model import NodeState
from exitgate.store.base import NodeUpdate
from tests.support.agents import HUB_TOKEN, ThreadAgent, attach_hub, wait_online, wait_until
from tests.support.gateway import TOKEN, GatewayThread
from tests.support.origin import Origin
from tests.support.receiver import Receiver
from tests.support.upstream_proxy import UpstreamProcess

FAST = {
    "secret_key": "",  # the generated webhooks.key file in the tmp data dir
    "allow_private": True,
    "watch_interval": 0.1,
    "retry_base": 0.2,
    "retry_max_delay": 0.4,
    "timeout": 2.0,
}


def gateway(tmp: Path, **hooks: Any) -> GatewayThread:
    return GatewayThread(
        tmp, webhooks={**FAST, **hooks}, hub={"listen": "127.0.0.1:0", "token": HUB_TOKEN}
    )


@pytest.fixture
def hgw(tmp_path: Path) -> Iterator[GatewayThread]:
    g = gateway(tmp_path)
    yield g
    g.stop()


def api(gw: GatewayThread, method: str, path: str, **kw: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {TOKEN}"}
    return httpx.request(method, gw.bound.admin_url + path, headers=headers, timeout=10, **kw)


def hook(gw: GatewayThread, receiver: Receiver, **body: Any) -> dict[str, Any]:
    answer = api(gw, "POST", "/v1/webhooks", json={"url": receiver.url, **body})
    assert answer.status_code == 201, answer.text
    created = answer.json()
    assert created["secret"].startswith("whsec_")
    receiver.secret = created["secret"]
    return dict(created)


def fetch(gw: GatewayThread, key: str, url: str, user: str = "country-us") -> requests.Response:
    proxy = gw.proxy_url(user, key)
    return requests.get(url, proxies={"http": proxy}, timeout=10)


def pause(gw: GatewayThread, package_id: str, status: str = "paused") -> None:
    answer = api(gw, "PATCH", f"/v1/packages/{package_id}", json={"status": status})
    assert answer.status_code == 200, answer.text


def deliveries(gw: GatewayThread, **params: Any) -> list[dict[str, Any]]:
    answer = api(gw, "GET", "/v1/webhook-deliveries", params=params)
    assert answer.status_code == 200, answer.text
    return list(answer.json())


def test_usage_thresholds_fire_once_each_signed(
    hgw: GatewayThread, receiver: Receiver, origin: Origin
) -> None:
    org = hgw.org()
    hook(hgw, receiver, org_id=org)
    hgw.direct_node(bind="127.0.0.2")
    pkg, key = hgw.package(org, limits=_limits(traffic=100_000))
    url = f"http://127.0.0.1:{origin.port}/bytes/25000"
    assert fetch(hgw, key, url).status_code == 200
    assert fetch(hgw, key, url).status_code == 200  # ~50 KB + heads: past 50 %
    first = receiver.wait_for("package.usage.threshold")
    assert [r.data["threshold_percent"] for r in first] == [50]
    assert first[0].data["package_id"] == pkg.id and first[0].data["limit_bytes"] == 100_000
    for _ in range(3):
        fetch(hgw, key, url)  # 80, 90, 100 %, then over the cap: 429
    found = receiver.wait_for("package.usage.threshold", 4)
    time.sleep(0.5)  # more rounds of the watcher: nothing fires twice
    percents = sorted(r.data["threshold_percent"] for r in receiver.of_type(found[0].type))
    assert percents == [50, 80, 90, 100]
    assert fetch(hgw, key, url).status_code == 429
    limit = receiver.wait_for("package.limit.reached")
    assert limit[0].data["limit"] == "traffic"
    assert all(r.verified for r in receiver.received)
    # the delivery log has each one delivered on the first attempt
    log = deliveries(hgw, org_id=org)
    assert log and all(d["state"] == "delivered" and d["attempts"] == 1 for d in log)
    assert hgw.gateway.stats.webhook_deliveries["ok"] == len(log)


def test_status_change_and_limits(hgw: GatewayThread, receiver: Receiver, origin: Origin) -> None:
    org = hgw.org()
    hook(hgw, receiver, org_id=org, events=["package.status.changed", "package.limit.reached"])
    hgw.direct_node(bind="127.0.0.2")
    pkg, key = hgw.package(org, limits=_limits(rps=1))
    url = f"http://127.0.0.1:{origin.port}/ip"
    codes = [fetch(hgw, key, url).status_code for _ in range(6)]
    assert 429 in codes
    limited = receiver.wait_for("package.limit.reached")
    pause(hgw, pkg.id)
    changed = receiver.wait_for("package.status.changed")
    assert changed[0].data == {
        "package_id": pkg.id, "org_id": org, "from": "active", "to": "paused"
    }
    assert fetch(hgw, key, url).status_code == 407
    time.sleep(0.3)
    # throttled: one limit event per package and limit, however many rejections
    assert len(receiver.of_type("package.limit.reached")) == 1
    assert limited[0].data["limit"] == "rps"
    assert all(r.verified for r in receiver.received)
    ids = {r.headers["webhook-id"] for r in receiver.received}
    assert len(ids) == 2 and all(i.startswith("msg_") for i in ids)


def test_org_scoping(hgw: GatewayThread, receiver: Receiver) -> None:
    mine, other = hgw.org("mine"), hgw.org("other")
    hook(hgw, receiver, org_id=mine)
    theirs, _ = hgw.package(other)
    ours, _ = hgw.package(mine)
    pause(hgw, theirs.id)
    pause(hgw, ours.id)
    got = receiver.wait_for("package.status.changed")
    time.sleep(0.3)
    assert [r.data["package_id"] for r in receiver.of_type(got[0].type)] == [ours.id]


def test_credits_low_and_exhausted(
    tmp_path: Path, receiver: Receiver, origin: Origin
) -> None:
    gw = gateway(tmp_path, credits_low=0.00015, credits_hysteresis=0.00001)
    try:
        org = gw.org(credits=0.0002)  # 200 KB at 1 credit per GB
        hook(gw, receiver, org_id=org)
        gw.direct_node(bind="127.0.0.2")
        _, key = gw.package(org)
        fetch(gw, key, f"http://127.0.0.1:{origin.port}/bytes/70000")
        low = receiver.wait_for("org.credits.low")
        assert low[0].data["org_id"] == org and low[0].data["threshold"] == 0.00015
        assert not receiver.of_type("org.credits.exhausted")
        with pytest.raises(requests.RequestException):
            fetch(gw, key, f"http://127.0.0.1:{origin.port}/bytes/400000")
        receiver.wait_for("org.credits.exhausted")
        time.sleep(0.3)
        assert len(receiver.of_type("org.credits.low")) == 1
    finally:
        gw.stop()


def test_node_down_and_recovered_from_the_circuit(
    hgw: GatewayThread, receiver: Receiver, origin: Origin
) -> None:
    hook(hgw, receiver, events=["node.down", "node.recovered"])  # a gateway endpoint
    upstream = UpstreamProcess("127.0.0.41")
    try:
        node = hgw.upstream_node(upstream.url)
        _, key = hgw.package()
        url = f"http://127.0.0.1:{origin.port}/ip"
        assert fetch(hgw, key, url).status_code == 200
        upstream.kill()
        for _ in range(4):
            fetch(hgw, key, url)  # node failures until the breaker opens
        down = receiver.wait_for("node.down")
        assert down[0].data["node_id"] == node.id and down[0].data["reason"] == "circuit_open"
        upstream.restart()

        def recovered() -> bool:
            fetch(hgw, key, url)
            return bool(receiver.of_type("node.recovered"))

        wait_until(recovered, timeout=15, step=0.3)
        assert receiver.of_type("node.recovered")[0].data["node_id"] == node.id
        assert all(r.verified for r in receiver.received)
    finally:
        upstream.stop()


def test_agent_disconnected_and_pool_degraded(tmp_path: Path, receiver: Receiver) -> None:
    gw = gateway(tmp_path, pool_min_healthy={"res": 1}, pool_hysteresis=0)
    agent: ThreadAgent | None = None
    try:
        hook(gw, receiver)  # a gateway endpoint, every event
        hub = attach_hub(gw)
        agent = ThreadAgent(hub, "agent-hooks")
        wait_online(gw, "agent-hooks")
        time.sleep(0.3)  # the watcher sees the pool healthy
        agent.stop()
        agent = None
        gone = receiver.wait_for("agent.disconnected")
        assert gone[0].data["agent_id"] == "agent-hooks"
        down = receiver.wait_for("node.down")
        assert down[0].data["reason"] == "offline"
        pool = receiver.wait_for("pool.degraded")
        assert pool[0].data == {"network": "res", "healthy_nodes": 0, "minimum": 1}
        assert all(r.verified for r in receiver.received)
    finally:
        if agent is not None:
            agent.stop()
        gw.stop()


def test_delivery_goes_on_after_the_receiver_was_down(
    hgw: GatewayThread, receiver: Receiver
) -> None:
    org = hgw.org()
    endpoint = hook(hgw, receiver, org_id=org)
    receiver.stop()
    pkg, _ = hgw.package(org)
    pause(hgw, pkg.id)

    def failed_twice() -> bool:
        found = deliveries(hgw, endpoint_id=endpoint["id"])
        return bool(found) and found[0]["attempts"] >= 2

    wait_until(failed_twice, timeout=10)
    receiver.start()
    got = receiver.wait_for("package.status.changed")
    assert got[0].verified
    (delivery,) = deliveries(hgw, endpoint_id=endpoint["id"])
    assert delivery["state"] == "delivered" and delivery["attempts"] >= 3
    assert delivery["event_id"] == got[0].headers["webhook-id"]
    detail = api(hgw, "GET", f"/v1/webhook-deliveries/{delivery['id']}").json()
    log = detail["attempt_log"]
    assert [a["n"] for a in log] == list(range(1, len(log) + 1))
    assert all(a["status"] is None and a["error"] for a in log[:-1])  # refused connections
    assert log[-1]["status"] == 200 and log[-1]["error"] is None
    assert hgw.gateway.stats.webhook_deliveries["failed"] >= 2

    # replay: the same message (same webhook-id and body) as a new delivery
    replay = api(hgw, "POST", f"/v1/webhook-deliveries/{delivery['id']}/replay")
    assert replay.status_code == 202 and replay.json()["replay_of"] == delivery["id"]
    again = receiver.wait_for("package.status.changed", 2)
    assert again[1].headers["webhook-id"] == again[0].headers["webhook-id"]
    assert again[1].body == again[0].body and again[1].verified


def test_delivery_goes_on_after_a_gateway_restart(tmp_path: Path, receiver: Receiver) -> None:
    gw = gateway(tmp_path)
    org = gw.org()
    hook(gw, receiver, org_id=org)
    receiver.stop()
    pkg, _ = gw.package(org)
    pause(gw, pkg.id)
    wait_until(lambda: deliveries(gw) and deliveries(gw)[0]["attempts"] >= 1, timeout=10)
    pause(gw, pkg.id, "active")  # emitted just before the stop: stored by the stop
    gw.stop()
    receiver.start()
    time.sleep(0.3)
    assert not receiver.received  # nobody is sending
    gw = gateway(tmp_path)
    try:
        got = receiver.wait_for("package.status.changed", 2)
        assert sorted(r.data["to"] for r in got) == ["active", "paused"]
        assert all(r.verified for r in got)  # the sealed secret opened after the restart
        assert (tmp_path / "webhooks.key").stat().st_mode & 0o777 == 0o600
    finally:
        gw.stop()


def test_gone_disables_the_endpoint(hgw: GatewayThread, receiver: Receiver) -> None:
    org = hgw.org()
    endpoint = hook(hgw, receiver, org_id=org)
    receiver.answer = 410
    pkg, _ = hgw.package(org)
    pause(hgw, pkg.id)
    receiver.wait_for("package.status.changed")

    def disabled() -> bool:
        return not api(hgw, "GET", f"/v1/webhooks/{endpoint['id']}").json()["enabled"]

    wait_until(disabled, timeout=5)
    shown = api(hgw, "GET", f"/v1/webhooks/{endpoint['id']}").json()
    assert "410" in shown["disabled_reason"]
    assert hgw.gateway.stats.webhook_deliveries["disabled"] == 1
    (first,) = deliveries(hgw, endpoint_id=endpoint["id"])
    assert first["state"] == "failed" and first["last_status"] == 410 and first["attempts"] == 1
    pause(hgw, pkg.id, "active")
    time.sleep(0.5)
    assert len(receiver.received) == 1  # nothing more goes to a disabled endpoint


def test_private_destinations_are_refused(tmp_path: Path, receiver: Receiver) -> None:
    # created where private destinations are allowed, then the gateway restarts without
    gw = gateway(tmp_path)
    org = gw.org()
    endpoint = hook(gw, receiver, org_id=org)
    gw.stop()
    gw = gateway(tmp_path, allow_private=False)
    try:
        for url in (receiver.url, "http://localhost:9/x", "http://[::1]:9/", "http://10.0.0.1/"):
            answer = api(gw, "POST", "/v1/webhooks", json={"url": url, "org_id": org})
            assert answer.status_code == 422, url
            (error,) = answer.json()["detail"]
            assert error["loc"] == ["body", "url"] and "private" in error["msg"]
        pkg, _ = gw.package(org)
        pause(gw, pkg.id)

        def refused() -> bool:
            found = deliveries(gw, endpoint_id=endpoint["id"])
            return bool(found) and found[0]["attempts"] >= 1

        wait_until(refused, timeout=10)
        (delivery,) = deliveries(gw, endpoint_id=endpoint["id"])
        assert delivery["last_status"] is None
        assert "destination refused" in delivery["last_error"]
        assert not receiver.received
    finally:
        gw.stop()


def test_api_validation_and_404s(hgw: GatewayThread, receiver: Receiver) -> None:
    cases = [
        ({"url": receiver.url, "events": ["package.nope"]}, "events"),
        ({"url": receiver.url, "events": []}, "events"),
        ({"url": "ftp://example.com/x"}, "url"),
        ({"url": receiver.url, "org_id": "org_missing"}, "org_id"),
        ({"url": receiver.url, "colour": "red"}, "colour"),
    ]
    for body, field in cases:
        answer = api(hgw, "POST", "/v1/webhooks", json=body)
        assert answer.status_code == 422, body
        assert answer.json()["detail"][0]["loc"][-1] == field, answer.text
    for method, path in (
        ("GET", "/v1/webhooks/whe_missing"),
        ("PATCH", "/v1/webhooks/whe_missing"),
        ("DELETE", "/v1/webhooks/whe_missing"),
        ("GET", "/v1/webhooks/whe_missing/deliveries"),
        ("GET", "/v1/webhook-deliveries/whd_missing"),
        ("POST", "/v1/webhook-deliveries/whd_missing/replay"),
    ):
        answer = api(hgw, method, path, json={} if method == "PATCH" else None)
        assert answer.status_code == 404, (method, path)
        assert "not found" in answer.json()["detail"]
    created = hook(hgw, receiver)
    listed = api(hgw, "GET", "/v1/webhooks").json()
    assert [e["id"] for e in listed] == [created["id"]]
    assert all("secret" not in e for e in listed)
    assert "secret" not in api(hgw, "GET", f"/v1/webhooks/{created['id']}").json()
    unauth = httpx.get(hgw.bound.admin_url + "/v1/webhooks", timeout=5)
    assert unauth.status_code == 401


def test_secret_is_sealed_at_rest(hgw: GatewayThread, receiver: Receiver) -> None:
    created = hook(hgw, receiver)
    raw = (Path(hgw.settings.data_dir) / "exitgate.db").read_bytes()
    secret_part = created["secret"].removeprefix("whsec_").encode()
    assert secret_part not in raw
    rotated = api(hgw, "POST", f"/v1/webhooks/{created['id']}/secret").json()["secret"]
    assert rotated != created["secret"] and rotated.startswith("whsec_")
    receiver.secret = rotated
    test = api(hgw, "POST", f"/v1/webhooks/{created['id']}/test")
    assert test.status_code == 202
    got = receiver.wait_for("webhook.test")
    assert got[0].verified


def test_node_offline_through_the_api(hgw: GatewayThread, receiver: Receiver) -> None:
    hook(hgw, receiver, events=["node.down", "node.recovered"])
    node = hgw.direct_node(bind="127.0.0.1")
    time.sleep(0.3)  # the watcher's baseline: the node is up
    hgw.call(hgw.service.update_node(node.id, NodeUpdate(state=NodeState.OFFLINE)))
    assert receiver.wait_for("node.down")[0].data["reason"] == "offline"
    hgw.call(hgw.service.update_node(node.id, NodeUpdate(state=NodeState.ONLINE)))
    assert receiver.wait_for("node.recovered")[0].data["node_id"] == node.id


def _limits(**kw: Any) -> Any:
    from exitgate.model import Limits

    return Limits(
        rps=kw.get("rps"), concurrency=kw.get("concurrency"), traffic_bytes=kw.get("traffic")
    )


def test_disabled_webhooks_record_and_send_nothing(tmp_path: Path, receiver: Receiver) -> None:
    gw = gateway(tmp_path, enabled=False)
    try:
        org = gw.org()
        hook(gw, receiver, org_id=org)  # endpoints can still be managed
        pkg, _ = gw.package(org)
        pause(gw, pkg.id)
        time.sleep(0.5)
        assert deliveries(gw) == [] and not receiver.received
        assert gw.gateway.events.dropped == 1 and len(gw.gateway.events) == 0
    finally:
        gw.stop()
