"""Usage and errors through the admin API and CLI, over a real uvicorn server and a real
`UsageService` on SQLite; and bad values (422 naming the field, nothing changed)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from fastapi import APIRouter, HTTPException

from exitgate.admin.api import create_admin_app
from exitgate.errors import Code, GatewayError
from exitgate.model import Network, Package
from exitgate.policy.metering import GB
from exitgate.recorder import Recorder
from exitgate.registry import Registry
from exitgate.services import AccountService, UsageService
from exitgate.settings import BillingSettings
from exitgate.store.base import HOUR, AccountStore, UsageDelta, open_store
from tests.support.cli import AdminCli

T = TypeVar("T")
TOKEN = "usage-test-token"
H0 = 1_767_225_600  # 2026-01-01T00:00:00Z


@dataclass
class Server:
    url: str
    loop: asyncio.AbstractEventLoop
    http: httpx.Client
    store: AccountStore
    registry: Registry
    usage: UsageService
    recorder: Recorder

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def run(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the server's loop: meters and books belong to that thread."""

        async def wrap() -> T:
            return fn()

        return self.call(wrap())

    def package(self, **body: Any) -> dict[str, Any]:
        org = self.http.post("/v1/orgs", json={"name": "acme", "credits": 100.0}).json()
        r = self.http.post("/v1/packages", json={"org_id": org["id"], **body})
        assert r.status_code == 201, r.text
        created: dict[str, Any] = r.json()
        return created

    def live(self, package_id: str) -> Package:
        found = self.registry.package(package_id)
        assert found is not None
        return found


def _errors_router(recorder: Recorder, registry: Registry) -> APIRouter:
    router = APIRouter()  # as app.py serves it

    @router.get("/v1/packages/{package_id}/errors")
    async def package_errors(package_id: str) -> list[dict[str, object]]:
        if registry.package(package_id) is None:
            raise HTTPException(404, f"package not found: {package_id}")
        return recorder.recent_errors(package_id)

    return router


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[Server, uvicorn.Server, asyncio.Task[None]]:
        store = open_store(f"sqlite:///{tmp_path / 'usage.db'}")
        registry = Registry()
        registry.load(store)
        accounts = AccountService(store, registry)
        billing = BillingSettings(price_per_gb={"res": 2.0, "mob": 4.0, "dc": 0.5})
        usage = UsageService(accounts, billing, interval=3600.0)  # the tests flush by hand
        await usage.start()
        recorder = Recorder()
        app = create_admin_app(
            accounts,
            TOKEN,
            extra_routers=[_errors_router(recorder, registry)],
            usage_provider=usage.totals,
            usage_buckets=usage.buckets,
        )
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        web = uvicorn.Server(config)
        task = loop.create_task(web.serve())
        while not web.started:
            await asyncio.sleep(0.01)
        port = web.servers[0].sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, trust_env=False
        )
        return Server(url, loop, http, store, registry, usage, recorder), web, task

    srv, web, task = asyncio.run_coroutine_threadsafe(start(), loop).result(30)

    async def stop() -> None:
        web.should_exit = True
        await task
        await srv.usage.close()
        srv.store.close()

    try:
        yield srv
    finally:
        srv.http.close()
        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _fields(r: httpx.Response) -> list[str]:
    assert r.status_code == 422, r.text
    return [".".join(str(p) for p in e["loc"][1:]) for e in r.json()["detail"]]


# -- usage -------------------------------------------------------------------------------------


def test_usage_totals_and_buckets_before_and_after_a_flush(server: Server) -> None:
    pkg = server.package()
    pid = pkg["id"]

    def traffic() -> None:
        p = server.live(pid)
        with server.usage.metering.open(p, Network.RES) as meter:
            meter.tick_up(GB // 4)  # 0.5 credit at 2.0 per GB
            meter.tick_down(1234)
        for _ in range(3):
            server.usage.request(pid)
        server.usage.error(pid, Code.NODE_NOT_FOUND)

    server.run(traffic)
    expected = {"bytes_up": GB // 4, "bytes_down": 1234, "requests": 3}
    assert server.http.get(f"/v1/packages/{pid}").json()["usage"] == expected  # unflushed
    before = server.http.get(f"/v1/packages/{pid}/usage").json()
    assert len(before) == 1 and before[0]["errors"] == {"NODE_NOT_FOUND": 1}
    assert server.call(server.usage.flush())
    assert server.http.get(f"/v1/packages/{pid}").json()["usage"] == expected  # not doubled
    after = server.http.get(f"/v1/packages/{pid}/usage").json()
    assert after == before
    bucket = after[0]
    assert bucket["hour"].endswith(":00:00Z") and bucket["bytes_up"] == GB // 4
    org = server.http.get(f"/v1/orgs/{pkg['org_id']}").json()
    assert org["credits"] == pytest.approx(100.0 - 0.5 - 1234 * 2.0 / GB)


def test_usage_history_filters(server: Server) -> None:
    pid = server.package()["id"]
    server.store.record_usage([UsageDelta(pid, H0 + i * HOUR, i + 1, 0, 1) for i in range(5)], {})

    def ups(**params: Any) -> list[int]:
        r = server.http.get(f"/v1/packages/{pid}/usage", params=params)
        assert r.status_code == 200, r.text
        return [b["bytes_up"] for b in r.json()]

    assert ups() == [5, 4, 3, 2, 1]
    # buckets overlapping [01:30, 03:00): the 01:00 and 02:00 hours
    assert ups(since="2026-01-01T01:30:00Z", until="2026-01-01T03:00:00Z") == [3, 2]
    assert ups(since="2026-01-01T01:30:00") == [5, 4, 3, 2]  # no zone: UTC
    assert ups(since="2026-01-01T03:30:00+02:00") == [5, 4, 3, 2]  # 01:30Z
    assert ups(limit=2) == [5, 4]
    first = server.http.get(f"/v1/packages/{pid}/usage", params={"limit": 1}).json()[0]
    assert first == {
        "hour": "2026-01-01T04:00:00Z",
        "bytes_up": 5,
        "bytes_down": 0,
        "requests": 1,
        "errors": {},
    }


def test_usage_endpoint_validation(server: Server) -> None:
    pid = server.package()["id"]
    path = f"/v1/packages/{pid}/usage"
    assert _fields(server.http.get(path, params={"since": "yesterday"})) == ["since"]
    assert _fields(server.http.get(path, params={"until": "2026-13-01"})) == ["until"]
    r = server.http.get(path, params={"since": "2026-01-02T00:00:00Z", "until": "2026-01-01"})
    assert _fields(r) == ["until"]
    assert _fields(server.http.get(path, params={"limit": 0})) == ["limit"]
    assert _fields(server.http.get(path, params={"limit": 10001})) == ["limit"]
    assert _fields(server.http.get(path, params={"limit": "x"})) == ["limit"]
    assert server.http.get("/v1/packages/pkg_nope/usage").status_code == 404
    assert httpx.get(server.url + path, trust_env=False).status_code == 401


# -- CLI ---------------------------------------------------------------------------------------


def test_cli_usage_command(server: Server) -> None:
    cli = AdminCli(server.url, TOKEN)
    pid = server.package()["id"]
    server.store.record_usage([UsageDelta(pid, H0, 10, 20, 2, {"AUTH_FAILED": 1})], {})
    server.run(lambda: server.usage.request(pid))
    shown = cli.json("usage", pid)
    assert shown["totals"] == {"bytes_up": 10, "bytes_down": 20, "requests": 3}
    assert [h["requests"] for h in shown["hours"]][-1] == 2
    assert shown["hours"][-1]["hour"] == "2026-01-01T00:00:00Z"
    old = cli.json("usage", pid, "--until", "2026-01-02")
    assert [h["hour"] for h in old["hours"]] == ["2026-01-01T00:00:00Z"]
    table = cli.run("usage", pid, "--since", "2026-01-01T00:00:00Z", "--limit", "5")
    assert table.exit_code == 0, table.stderr
    assert "total: bytes_up=10 bytes_down=20 requests=3" in table.stdout
    assert "2026-01-01T00:00:00Z" in table.stdout and "AUTH_FAILED=1" in table.stdout
    assert cli.fails("usage", pid, "--since", "soon").startswith("error: 422: since: ")
    assert cli.fails("usage", "pkg_nope") == "error: 404: package not found: pkg_nope"


def test_cli_errors_command(server: Server) -> None:
    cli = AdminCli(server.url, TOKEN)
    pid = server.package()["id"]

    def fail() -> None:
        for code, detail, protocol in (
            (Code.NODE_NOT_FOUND, "No nodes matching country=fr", "socks5"),
            (Code.RATE_LIMIT_EXCEEDED, "Requests per second limit reached (1/s)", "https"),
        ):
            err = GatewayError(code, detail)
            server.recorder.error(pid, err, protocol=protocol, client="127.0.0.9", target="x:443")

    server.run(fail)
    found = cli.json("errors", pid)
    assert [e["code"] for e in found] == ["RATE_LIMIT_EXCEEDED", "NODE_NOT_FOUND"]
    assert found[1]["detail"] == "No nodes matching country=fr" and found[1]["protocol"] == "socks5"
    assert cli.json("errors", pid, "--limit", "1") == found[:1]
    table = cli.run("errors", pid)
    assert table.exit_code == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["time", "code", "detail"]
    assert "RATE_LIMIT_EXCEEDED" in lines[1] and "Z" in lines[1].split()[0]
    assert "No nodes matching country=fr" in table.stdout
    assert cli.fails("errors", "pkg_nope") == "error: 404: package not found: pkg_nope"


# -- bad values change nothing -----------------------------------------------------------------


def test_bad_package_values_are_422_and_change_nothing(server: Server) -> None:
    pkg = server.package(name="keep", rps_limit=5, ip_allowlist=["10.0.0.0/8"])
    path = f"/v1/packages/{pkg['id']}"
    before = server.http.get(path).json()
    live = server.live(pkg["id"])
    bad: list[tuple[dict[str, Any], list[str]]] = [
        ({"name": "changed", "rps_limit": -1}, ["rps_limit"]),
        ({"name": "changed", "concurrency_limit": 1.5}, ["concurrency_limit"]),
        ({"traffic_limit_bytes": -1}, ["traffic_limit_bytes"]),
        ({"traffic_limit_bytes": "1000"}, ["traffic_limit_bytes"]),
        ({"rps_limit": 2**31}, ["rps_limit"]),
        ({"concurrency_limit": True}, ["concurrency_limit"]),
        ({"ip_allowlist": ["10.0.0.0/8", "10.0.0.0/33"]}, ["ip_allowlist.1"]),
        ({"ip_allowlist": ["not-an-ip"]}, ["ip_allowlist.0"]),
        ({"ip_allowlist": "10.0.0.0/8"}, ["ip_allowlist"]),
        ({"status": "deleted"}, ["status"]),
        ({"status": "ACTIVE"}, ["status"]),
        ({"protocols": ["https", "ftp"]}, ["protocols.1"]),
        ({"name": "changed", "networks": ["res", "wifi"]}, ["networks.1"]),
    ]
    for body, fields in bad:
        assert _fields(server.http.patch(path, json=body)) == fields, body
    assert server.http.get(path).json() == before
    assert server.live(pkg["id"]) == live
    org = server.http.get(f"/v1/orgs/{pkg['org_id']}").json()
    for credits in ("lots", True, [1]):
        r = server.http.patch(f"/v1/orgs/{pkg['org_id']}", json={"credits": credits})
        assert _fields(r) == ["credits"]
    assert server.http.get(f"/v1/orgs/{pkg['org_id']}").json() == org
    assert _fields(server.http.get("/v1/nodes", params={"asn": -1})) == ["asn"]
    assert _fields(server.http.get("/v1/nodes", params={"state": "broken"})) == ["state"]


def test_bad_cli_values_change_nothing(server: Server) -> None:
    cli = AdminCli(server.url, TOKEN)
    pkg = server.package(name="keep", concurrency_limit=3)
    pid = pkg["id"]
    before = server.http.get(f"/v1/packages/{pid}").json()
    assert cli.fails("package", "update", pid, "--traffic", "-5").startswith(
        "error: 422: traffic_limit_bytes: "
    )
    assert cli.fails("package", "update", pid, "--name", "x", "--concurrency", "1.5") == (
        "error: --concurrency: expected an integer or 'none'"
    )
    assert cli.fails("package", "update", pid, "--allow-ip", "300.1.1.1").startswith(
        "error: 422: ip_allowlist.0: "
    )
    bogus = cli.run("package", "update", pid, "--status", "bogus")
    assert bogus.exit_code == 2 and "--status" in bogus.stderr  # typer's own choice check
    assert server.http.get(f"/v1/packages/{pid}").json() == before
