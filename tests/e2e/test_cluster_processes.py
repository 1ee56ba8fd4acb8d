"""Three `exitgate serve` processes as one network (issue 9), with clients round-robin over
them: sessions stick across instances, an agent on A serves B and C, and kill -9 of B loses
nothing: A and C keep every session on its node, B restarts and rejoins without touching A's
agent. Needs PostgreSQL and Redis."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.support.agents import SRC, wait_until
from tests.support.origin import Origin, free_port

HUB_TOKEN = "cluster-hub-token-0123456789"
ADMIN = "cluster-admin-token"


class Instance:
    def __init__(self, tmp: Path, name: str, pg: str, rd: str) -> None:
        self.dir = tmp / name
        self.dir.mkdir(exist_ok=True)
        self.proxy, self.admin, self.hub = free_port(), free_port(), free_port()
        (self.dir / "exitgate.toml").write_text(
            f'[proxy]\nlisten = "127.0.0.1:{self.proxy}"\n'
            f'[admin]\nlisten = "127.0.0.1:{self.admin}"\ntoken = "{ADMIN}"\n'
            f'[hub]\nlisten = "127.0.0.1:{self.hub}"\ntoken = "{HUB_TOKEN}"\n'
            f'[cluster]\nlisten = "127.0.0.1:0"\n'
            f'[store]\nurl = "{pg}"\nredis_url = "{rd}"\n'
            f'[exit]\nallow_private = true\n[sessions]\nidle_timeout = 60.0\n'
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=SRC)
        with open(self.dir / "out.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "exitgate", "serve", "--config",
                 str(self.dir / "exitgate.toml")],
                cwd=self.dir, env=env, stdout=log, stderr=subprocess.STDOUT,
            )

    def up(self) -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{self.admin}/healthz", timeout=1).ok
        except requests.RequestException:
            return False

    def api(self, method: str, path: str, **kw: object) -> requests.Response:
        return requests.request(method, f"http://127.0.0.1:{self.admin}{path}",
                                headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10,
                                **kw)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _ip(inst: Instance, origin: Origin, user: str, key: str) -> str:
    r = requests.get(f"{origin.url}/ip", timeout=10,
                     proxies={"http": f"http://{user}:{key}@127.0.0.1:{inst.proxy}"})
    assert r.status_code == 200, (r.status_code, r.headers)
    return str(r.json()["ip"])


@pytest.mark.timeout(400)
def test_three_processes_one_network_and_kill_9(
    tmp_path: Path, shared_urls, origin: Origin
) -> None:
    pg, rd = shared_urls
    insts = [Instance(tmp_path, n, pg, rd) for n in "abc"]
    a, b, c = insts
    agent = None
    try:
        for inst in insts:
            wait_until(inst.up, timeout=120)
        org = a.api("POST", "/v1/orgs", json={"name": "net"}).json()
        key = a.api("POST", "/v1/packages", json={"org_id": org["id"]}).json()["key"]
        for bind in ("127.0.0.2", "127.0.0.3"):
            a.api("POST", "/v1/nodes", json={"kind": "direct", "bind_address": bind,
                                             "country": "us", "network": "dc"})
        env = dict(os.environ, PYTHONPATH=SRC, XDG_STATE_HOME=str(tmp_path / "xdg"))
        with open(tmp_path / "agent.log", "wb") as log:
            agent = subprocess.Popen(
                [sys.executable, "-m", "exitgate.agent", "--hub", f"127.0.0.1:{a.hub}",
                 "--token", HUB_TOKEN, "--id", "home-1", "--allow-private", "--country", "de",
                 "--network", "res"], env=env, stdout=log, stderr=subprocess.STDOUT)

        def agent_online(inst: Instance) -> bool:
            nodes = inst.api("GET", "/v1/nodes").json()
            return any(n["id"] == "home-1" and n["state"] == "online" for n in nodes)

        for inst in insts:
            wait_until(lambda inst=inst: agent_online(inst), timeout=30)
        rr = itertools.cycle(insts)
        # sessions stick across instances; the agent on A serves B and C
        sessions = {f"s{i}": _ip(next(rr), origin, f"country-us-session-s{i}", key)
                    for i in range(6)}
        for _ in range(2):
            for sid, ip in sessions.items():
                assert _ip(next(rr), origin, f"country-us-session-{sid}", key) == ip
        for inst in (b, c, a):
            assert _ip(inst, origin, "country-de", key) == "127.0.0.1"  # the agent's address
        # kill -9 of B: A and C keep every session on its node, and A's agent stays online
        assert b.proc is not None
        b.proc.send_signal(signal.SIGKILL)
        b.proc.wait(10)
        for sid, ip in sessions.items():
            for inst in (a, c):
                assert _ip(inst, origin, f"country-us-session-{sid}", key) == ip
        assert _ip(c, origin, "country-de", key) == "127.0.0.1"
        # B restarts and rejoins without touching A's agent
        b.start()
        wait_until(b.up, timeout=120)
        assert agent_online(a) and agent_online(b)
        for sid, ip in sessions.items():
            assert _ip(b, origin, f"country-us-session-{sid}", key) == ip
        assert _ip(b, origin, "country-de", key) == "127.0.0.1"
        assert "Traceback" not in (tmp_path / "a" / "out.log").read_text()
    finally:
        if agent is not None:
            agent.kill()
            agent.wait(5)
        for inst in insts:
            inst.stop()
