"""`serve --workers N`: what each worker is told (no processes started here)."""

from __future__ import annotations

import pytest

from exitgate.settings import load_settings
from exitgate.supervisor import WorkersError, check, worker_env


def _settings(**sections: dict[str, object]):  # type: ignore[no-untyped-def]
    return load_settings(None, env={}, overrides=sections)


def test_workers_share_ports_and_get_interlinks_of_their_own() -> None:
    s = _settings(store={"redis_url": "redis://127.0.0.1:6379/0"},
                  cluster={"listen": "10.0.0.5:7444", "advertise": "gw1.internal:7444"})
    first, second = worker_env(0, s, "a", "h"), worker_env(1, s, "a", "h")
    for env in (first, second):
        assert env["EXITGATE_PROXY_REUSE_PORT"] == env["EXITGATE_HUB_REUSE_PORT"] == "true"
        # a fixed interlink port would be bound by one worker only: each gets an ephemeral one
        assert env["EXITGATE_CLUSTER_LISTEN"] == '"10.0.0.5:0"'
        assert env["EXITGATE_CLUSTER_ADVERTISE"] == '"gw1.internal:0"'
    assert "EXITGATE_ADMIN_LISTEN" not in first and second["EXITGATE_ADMIN_LISTEN"] == '""'
    loopback = worker_env(1, _settings(store={"redis_url": "redis://x"}), "a", "h")
    assert loopback["EXITGATE_CLUSTER_LISTEN"] == '"127.0.0.1:0"'


def test_more_than_one_worker_needs_redis_and_no_demo() -> None:
    check(_settings(), 1, demo=True)
    with pytest.raises(WorkersError, match="redis_url"):
        check(_settings(), 2, demo=False)
    with pytest.raises(WorkersError, match="demo"):
        check(_settings(store={"redis_url": "redis://x"}), 2, demo=True)
