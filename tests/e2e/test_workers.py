"""`exitgate serve --workers N` (issue 9): N processes share the proxy port, one supervisor
restarts a worker that dies and stops them all on SIGTERM. Needs PostgreSQL and Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.support.agents import SRC, wait_until
from tests.support.origin import Origin, free_port


def _listeners(port: int) -> set[int]:
    """PIDs listening on `port` (several with SO_REUSEPORT)."""
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True,
                         check=True).stdout
    pids = set()
    for part in out.split("pid=")[1:]:
        pids.add(int(part.split(",", 1)[0]))
    return pids


def _serve(tmp_path: Path, config: str, *args: str) -> subprocess.Popen[bytes]:
    path = tmp_path / "exitgate.toml"
    path.write_text(config)
    env = dict(os.environ, PYTHONPATH=SRC)
    with open(tmp_path / "out.log", "wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "exitgate", "serve", "--config", str(path), *args],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
        )


def test_more_than_one_worker_needs_redis(tmp_path: Path) -> None:
    proc = _serve(tmp_path, f'[store]\nurl = "sqlite:///{tmp_path}/db"\n', "--workers", "2")
    assert proc.wait(30) == 2
    out = (tmp_path / "out.log").read_text()
    assert "redis_url" in out and "Traceback" not in out


@pytest.mark.timeout(300)  # three process starts; slow on a loaded 2-core machine
def test_workers_share_the_port_restart_and_stop(
    tmp_path: Path, shared_urls, origin: Origin
) -> None:
    pg, rd = shared_urls
    proxy, admin = free_port(), free_port()
    config = (
        f'[proxy]\nlisten = "127.0.0.1:{proxy}"\n[admin]\nlisten = "127.0.0.1:{admin}"\n'
        f'token = "workers-admin-token"\n[hub]\nlisten = "127.0.0.1:0"\ntoken = "hub-t"\n'
        f'[store]\nurl = "{pg}"\nredis_url = "{rd}"\n[exit]\nallow_private = true\n'
    )
    proc = _serve(tmp_path, config, "--workers", "2")
    try:
        api = f"http://127.0.0.1:{admin}"
        auth = {"Authorization": "Bearer workers-admin-token"}

        def up() -> bool:
            try:
                return requests.get(f"{api}/healthz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(up, timeout=90)  # a loaded CI machine starts Python slowly
        wait_until(lambda: len(_listeners(proxy)) == 2, timeout=90)
        org = requests.post(f"{api}/v1/orgs", json={"name": "w"}, headers=auth, timeout=5).json()
        made = requests.post(f"{api}/v1/packages", json={"org_id": org["id"]}, headers=auth,
                             timeout=5).json()
        requests.post(f"{api}/v1/nodes", json={"kind": "direct", "bind_address": "127.0.0.2",
                      "country": "us", "network": "dc"}, headers=auth, timeout=5)
        url = f"http://country-us:{made['key']}@127.0.0.1:{proxy}"

        def all_served() -> bool:
            codes = []
            for _ in range(20):  # new connections: the kernel spreads them over both workers
                with requests.Session() as s:
                    codes.append(s.get(f"{origin.url}/ip", proxies={"http": url},
                                       timeout=5).status_code)
            return codes == [200] * 20

        wait_until(all_served, timeout=15)
        victim = min(_listeners(proxy) - {proc.pid})
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(_listeners(proxy)) == 2 and victim not in _listeners(proxy),
                   timeout=90)
        wait_until(all_served, timeout=15)
        workers = _listeners(proxy)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        for pid in workers:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(
                f"/proc/{pid}/status").read_text()
        out = (tmp_path / "out.log").read_text()
        assert "restarting" in out and "Traceback" not in out
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()  # its workers follow it (PR_SET_PDEATHSIG)
                proc.wait(10)
