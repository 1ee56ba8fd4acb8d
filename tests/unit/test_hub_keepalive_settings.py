"""`[hub] keepalive` and `keepalive_timeout`: validated, and what the hub's links use."""

from __future__ import annotations

import pytest

from exitgate.hub.server import Hub
from exitgate.registry import Registry
from exitgate.services import AccountService
from exitgate.settings import SettingsError, load_settings
from exitgate.store.base import open_store


def test_defaults_and_environment() -> None:
    hub = load_settings(env={}).hub
    assert (hub.keepalive, hub.keepalive_timeout) == (10.0, 20.0)
    env = {"EXITGATE_HUB_KEEPALIVE": "0.5", "EXITGATE_HUB_KEEPALIVE_TIMEOUT": "2"}
    hub = load_settings(env=env).hub
    assert (hub.keepalive, hub.keepalive_timeout) == (0.5, 2.0)


@pytest.mark.parametrize("timeout", [5.0, 4.0])
def test_the_timeout_must_be_longer_than_the_interval(timeout: float) -> None:
    env = {"EXITGATE_HUB_KEEPALIVE": "5", "EXITGATE_HUB_KEEPALIVE_TIMEOUT": str(timeout)}
    with pytest.raises(SettingsError, match="keepalive_timeout"):
        load_settings(env=env)


async def test_the_hub_links_use_them() -> None:
    store = open_store("sqlite://")
    registry = Registry()
    env = {"EXITGATE_HUB_KEEPALIVE": "0.5", "EXITGATE_HUB_KEEPALIVE_TIMEOUT": "2"}
    hub = Hub(load_settings(env=env).hub, AccountService(store, registry), registry)
    assert (hub.limits.ping_interval, hub.limits.silence_timeout) == (0.5, 2.0)
    store.close()
