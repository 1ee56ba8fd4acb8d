"""`exitgate webhook ...` against a live gateway: add, list, deliveries, show, replay, delete."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_webhooks import gateway, pause
from tests.support.agents import wait_until
from tests.support.cli import AdminCli
from tests.support.gateway import TOKEN, GatewayThread
from tests.support.receiver import Receiver


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[GatewayThread]:
    g = gateway(tmp_path)
    yield g
    g.stop()


def ok(gw: GatewayThread, *args: str) -> str:
    return AdminCli(gw.bound.admin_url, TOKEN).ok(*args)


def test_webhook_cli_round_trip(gw: GatewayThread, receiver: Receiver) -> None:
    org = gw.org()
    out = ok(gw, "webhook", "add", receiver.url, "--org", org, "--event", "package.status.changed")
    secret = next(line.split()[1] for line in out.splitlines() if line.startswith("secret:"))
    assert secret.startswith("whsec_")
    receiver.secret = secret
    (endpoint,) = json.loads(ok(gw, "webhook", "list", "--org", org, "--json"))
    assert endpoint["events"] == ["package.status.changed"] and "secret" not in endpoint
    assert endpoint["id"] in ok(gw, "webhook", "list") and secret not in ok(gw, "webhook", "list")

    pkg, _ = gw.package(org)
    pause(gw, pkg.id)
    receiver.wait_for("package.status.changed")
    assert receiver.received[0].verified

    def delivered() -> list[dict[str, Any]]:
        found = json.loads(ok(gw, "webhook", "deliveries", "--endpoint", endpoint["id"], "--json"))
        return [d for d in found if d["state"] == "delivered"]

    (delivery,) = wait_until(delivered, timeout=5)
    table = ok(gw, "webhook", "deliveries", "--org", org)
    assert delivery["id"] in table and "delivered" in table
    shown = ok(gw, "webhook", "show", delivery["id"])
    assert "200" in shown and "package.status.changed" in shown

    assert "queued" in ok(gw, "webhook", "replay", delivery["id"])
    again = receiver.wait_for("package.status.changed", 2)
    assert again[1].headers["webhook-id"] == again[0].headers["webhook-id"]

    assert "disabled" in ok(gw, "webhook", "disable", endpoint["id"])
    assert json.loads(ok(gw, "webhook", "list", "--json"))[0]["enabled"] is False
    assert "enabled" in ok(gw, "webhook", "enable", endpoint["id"])
    assert "deleted" in ok(gw, "webhook", "delete", endpoint["id"])
    assert json.loads(ok(gw, "webhook", "list", "--json")) == []


def test_webhook_cli_errors(gw: GatewayThread) -> None:
    for args, needle in (
        (("webhook", "delete", "whe_missing"), "not found"),
        (("webhook", "replay", "whd_missing"), "not found"),
        (("webhook", "add", "ftp://x/y"), "url"),
        (("webhook", "add", "http://127.0.0.1:9/", "--event", "nope"), "event"),
    ):
        result = AdminCli(gw.bound.admin_url, TOKEN).run(*args)
        assert result.exit_code == 1, (args, result.stdout)
        assert needle in result.stderr and "Traceback" not in result.stderr
