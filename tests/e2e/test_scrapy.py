"""The Scrapy middleware in real crawls (a subprocess each) through a real gateway to the
loopback origin over plain http: Scrapy forwards http URLs to the proxy in absolute form
with `Proxy-Authorization`, so every gateway answer reaches the middleware with its headers."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exitgate.model import Limits, NodeState
from exitgate.store.base import NodeUpdate
from tests.support.gateway import GatewayThread
from tests.support.origin import Origin

SCRIPT = Path(__file__).parent.parent / "support" / "scrapy_crawl.py"


def crawl(tmp: Path, gw: GatewayThread, key: str, urls: list[str],
          session_keys: list[str] | None = None, **settings: Any) -> Any:
    config = {
        "urls": urls,
        "session_keys": session_keys,
        "settings": {
            "EXITGATE_PROXY": f"http://{gw.proxy_host}:{gw.proxy_port}",
            "EXITGATE_KEY": key,
            **settings,
        },
    }
    out = tmp / "crawl.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), json.dumps(config), str(out)],
        cwd=tmp, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert key not in done.stderr  # nothing logs the key
    return json.loads(out.read_text())


def test_a_fresh_session_every_n_requests(gw: GatewayThread, origin: Origin,
                                          tmp_path: Path) -> None:
    for i in range(2, 6):
        gw.direct_node(f"127.0.0.{i}", country="us")
    package, key = gw.package()
    found = crawl(tmp_path, gw, key, [f"{origin.url}/ip"] * 6,
                  EXITGATE_RULES="country-us", EXITGATE_SESSION_EVERY=2)
    results = sorted(found["results"], key=lambda r: r["i"])
    assert [r["status"] for r in results] == [200] * 6
    sessions = [r["session"] for r in results]
    assert sessions[0] == sessions[1] != sessions[2] == sessions[3] != sessions[4] == sessions[5]
    assert len(set(sessions)) == 3
    ips = [json.loads(r["body"])["ip"] for r in results]
    assert ips[0] == ips[1] and ips[2] == ips[3] and ips[4] == ips[5]  # sticky within a session
    assert found["stats"]["exitgate/sessions"] == 3
    live = {r.key.session_id for r in gw.call(gw.gateway.sessions.list(package.id))}
    assert live == set(sessions)  # the gateway saw exactly these sessions


def test_one_session_per_item_key(gw: GatewayThread, origin: Origin, tmp_path: Path) -> None:
    gw.direct_node("127.0.0.2", country="us")
    _, key = gw.package()
    found = crawl(tmp_path, gw, key, [f"{origin.url}/ip"] * 4, ["a", "b", "a", "b"],
                  EXITGATE_PROXY=f"{gw.proxy_host}:{gw.proxy_port}")  # host:port works too
    by_i = {r["i"]: r["session"] for r in found["results"]}
    assert by_i[0] == by_i[2] != by_i[1] == by_i[3]
    assert found["stats"]["exitgate/sessions"] == 2


@pytest.fixture
def flip_upstream(gw: GatewayThread) -> Iterator[tuple[str, str]]:
    """A broken upstream exit (ONLINE) and a good direct exit (OFFLINE). The first connection
    the broken one gets swaps them (before it is refused), so the retry must pick the good one:
    a deterministic node failure, then a working exit."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)  # so the thread sees `stop` soon
    stop = threading.Event()
    port = listener.getsockname()[1]
    broken = gw.upstream_node(f"http://127.0.0.1:{port}", country="us")
    good = gw.direct_node("127.0.0.2", country="us")
    gw.call(gw.service.update_node(good.id, NodeUpdate(state=NodeState.OFFLINE)))

    def serve() -> None:
        first = True
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            if first:
                first = False
                gw.call(gw.service.update_node(broken.id, NodeUpdate(state=NodeState.OFFLINE)))
                gw.call(gw.service.update_node(good.id, NodeUpdate(state=NodeState.ONLINE)))
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield broken.id, good.id
    stop.set()
    thread.join(5)
    listener.close()


def test_a_node_error_is_retried_on_a_new_session(
    gw: GatewayThread, origin: Origin, tmp_path: Path, flip_upstream: tuple[str, str]
) -> None:
    _, key = gw.package()
    found = crawl(tmp_path, gw, key, [f"{origin.url}/ip"],
                  EXITGATE_RULES="country-us-onerror-fail")
    [result] = found["results"]
    assert result["status"] == 200 and result["retries"] == 1
    assert json.loads(result["body"])["ip"] == "127.0.0.2"  # the good exit served the retry
    stats = found["stats"]
    assert stats["exitgate/errors/NODE_UNAVAILABLE"] == 1
    assert stats["exitgate/retries"] == 1 and stats["exitgate/sessions"] == 2


def test_auth_failed_stops_the_crawl(gw: GatewayThread, origin: Origin, tmp_path: Path) -> None:
    gw.direct_node("127.0.0.2", country="us")
    _, key = gw.package()
    found = crawl(tmp_path, gw, key + "wrong", [f"{origin.url}/ip"] * 10)
    assert found["results"] == []
    stats = found["stats"]
    assert stats["finish_reason"] == "exitgate_AUTH_FAILED"
    assert stats["exitgate/errors/AUTH_FAILED"] >= 1
    assert stats["downloader/request_count"] <= 2  # closed at once, not after 10 failures
    assert len(origin.requests) == 0


def test_a_refused_connect_stops_the_crawl_by_status(gw: GatewayThread,
                                                     tmp_path: Path) -> None:
    """https: Scrapy's TunnelError keeps only the status line, which still says 407."""
    _, key = gw.package()
    found = crawl(tmp_path, gw, key + "wrong", ["https://example.test/"] * 5)
    assert found["results"] == []
    assert found["stats"]["finish_reason"] == "exitgate_407", json.dumps(found["stats"])


def test_rate_limits_back_off_until_done(gw: GatewayThread, origin: Origin,
                                         tmp_path: Path) -> None:
    gw.direct_node("127.0.0.2", country="us")
    _, key = gw.package(limits=Limits(rps=3))
    found = crawl(tmp_path, gw, key, [f"{origin.url}/ip"] * 8, CONCURRENT_REQUESTS=8,
                  EXITGATE_BACKOFF_BASE=0.3, EXITGATE_BACKOFFS=8)
    assert sorted(r["status"] for r in found["results"]) == [200] * 8
    stats = found["stats"]
    assert stats["exitgate/backoffs"] >= 1
    assert stats["exitgate/errors/RATE_LIMIT_EXCEEDED"] == stats["exitgate/backoffs"]
    assert "exitgate/retries" not in stats  # a rate limit keeps the session
