"""exitgate under test: config, start, provisioning over the admin API, exit variants.

One instance ("main") carries the exit-kind variants, told apart by the country in the proxy
username: `country-us` → a direct node, `country-de` → an upstream node (another proxy),
`country-jp` → an agent node (when `exitgate agent` exists). A second instance runs with
`[proxy] metering = false` when the gateway accepts that key.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.install import ROOT
from bench.peers import CONNECT, FORWARD, SOCKS5, Server
from bench.procs import Proc, free_port

EXITGATE = ROOT / ".venv" / "bin" / "exitgate"
PYTHON = ROOT / ".venv" / "bin" / "python"
ADMIN_TOKEN = "bench-admin-token"
HUB_TOKEN = "bench-hub-token"


class GatewayUnavailable(RuntimeError):
    """exitgate cannot be benchmarked (yet): not installed, does not start, API missing."""


def _call(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


@dataclass(slots=True)
class Instance:
    """One `exitgate serve` process, its ports and its package key."""

    name: str
    workdir: Path
    metering: bool = True
    extra: str = ""  # more TOML appended to the config (the access-log benchmark's sections)
    proxy_port: int = 0
    admin_port: int = 0
    hub_port: int = 0
    key: str = ""
    limited_key: str = ""  # a second package with rps and concurrency limits (variant "limits")
    proc: Proc | None = None
    agent: Proc | None = None
    provisioned: bool = False
    env: dict[str, str] | None = None  # the process environment (bench/cpu_ab.py: PYTHONPATH)
    prefix: tuple[str, ...] = ()  # a command to run it under (bench/instr.py: valgrind)

    def config(self) -> Path:
        d = self.workdir / self.name
        d.mkdir(parents=True, exist_ok=True)
        if not self.proxy_port:
            self.proxy_port, self.admin_port, self.hub_port = free_port(), free_port(), free_port()
        metering = "" if self.metering else "metering = false\n"
        path = d / "exitgate.toml"
        path.write_text(
            f"""[proxy]
listen = "127.0.0.1:{self.proxy_port}"
max_connections_per_ip = 0  # every benchmark client is 127.0.0.1 (thousands of tunnels)
{metering}
[admin]
listen = "127.0.0.1:{self.admin_port}"
token = "{ADMIN_TOKEN}"

[hub]
listen = "127.0.0.1:{self.hub_port}"
token = "{HUB_TOKEN}"

[store]
url = "sqlite:///{d}/exitgate.db"

[exit]
allow_private = true

[log]
level = "warning"
"""
            + self.extra
        )
        return path

    def start(self, timeout: float = 30.0) -> None:
        if not EXITGATE.exists():
            raise GatewayUnavailable(f"{EXITGATE} not found")
        conf = self.config()
        self.proc = Proc(
            f"exitgate-{self.name}",
            [*self.prefix, str(EXITGATE), "serve", "--config", str(conf)],
            conf.parent / "exitgate.log",
            env=self.env,
        )
        self.proc.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.proc.alive():
                tail = self.proc.tail()
                self.proc.stop()
                raise GatewayUnavailable(f"exitgate serve exited:\n{tail}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/healthz", timeout=1)
                break
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        else:
            tail = self.proc.tail()
            self.proc.stop()
            raise GatewayUnavailable(f"exitgate /healthz not answering after {timeout}s:\n{tail}")

    def provision(self, upstream_url: str | None) -> None:
        """Org, package and nodes; once per instance (the SQLite store keeps them)."""
        if self.provisioned:
            return
        try:
            org = _call(self.admin_port, "POST", "/v1/orgs", {"name": "bench", "credits": None})
            pkg = _call(self.admin_port, "POST", "/v1/packages", {"org_id": org["id"]})
            self.key = pkg["key"]
            # Limits high enough never to refuse the benchmark's load: what is measured is
            # what checking them costs per connection (in-process limiter store).
            limited = _call(
                self.admin_port,
                "POST",
                "/v1/packages",
                {"org_id": org["id"], "rps_limit": 1_000_000, "concurrency_limit": 100_000},
            )
            self.limited_key = limited["key"]
            _call(
                self.admin_port,
                "POST",
                "/v1/nodes",
                {"kind": "direct", "country": "us", "network": "dc"},
            )
            if upstream_url:
                _call(
                    self.admin_port,
                    "POST",
                    "/v1/nodes",
                    {"kind": "upstream", "url": upstream_url, "country": "de", "network": "dc"},
                )
        except (urllib.error.URLError, OSError, KeyError, TypeError) as exc:
            raise GatewayUnavailable(f"admin API provisioning failed: {exc!r}") from exc
        self.provisioned = True

    def start_agent(self, timeout: float = 20.0) -> bool:
        """An `exitgate agent` exit with country jp; False when the command does not exist."""
        # `exitgate agent`, or the agent package's own entry while the CLI does not mount it.
        env = dict(os.environ, COLUMNS="300", NO_COLOR="1")  # help text unwrapped
        for command in ([str(EXITGATE), "agent"], [str(PYTHON), "-m", "exitgate.agent"]):
            probe = subprocess.run(
                [*command, "--help"], capture_output=True, text=True, check=False, env=env
            )
            if probe.returncode == 0:
                break
        else:
            return False
        argv = [
            *command,
            "--hub", f"127.0.0.1:{self.hub_port}",
            "--token", HUB_TOKEN,
            "--country", "jp",
            "--network", "dc",
        ]  # fmt: skip
        # Optional flags, passed when this agent has them: the origin is on loopback, 5,000
        # idle tunnels exceed a default stream cap, and a fixed id keeps one node across
        # restarts.
        optional = {
            "--allow-private": [],
            "--max-streams": ["10000"],
            "--id": ["bench-agent"],
            "--state-file": [str(self.workdir / self.name / "agent.state")],
            "--log-level": ["warning"],
        }
        for flag, value in optional.items():
            if flag in probe.stdout:
                argv += [flag, *value]
        self.agent = Proc(
            f"exitgate-agent-{self.name}", argv, self.workdir / self.name / "agent.log"
        )
        self.agent.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.agent.alive():
            try:
                nodes = _call(self.admin_port, "GET", "/v1/nodes?country=jp")
                items = nodes.get("items", nodes) if isinstance(nodes, dict) else nodes
                if any(
                    n.get("country") == "jp" and n.get("state", "online") == "online" for n in items
                ):
                    return True
            except (urllib.error.URLError, OSError, AttributeError):
                pass
            time.sleep(0.2)
        self.agent.stop()
        self.agent = None
        return False

    def stop(self) -> None:
        for p in (self.agent, self.proc):
            if p is not None:
                p.stop()


class ExitgateTarget(Server):
    """An exitgate instance seen through one proxy username (one exit kind)."""

    def __init__(
        self,
        name: str,
        instance: Instance,
        country: str,
        with_agent: bool = False,
        sessions: int = 0,
        limited: bool = False,
    ):
        super().__init__(name, "Python", frozenset({CONNECT, FORWARD, SOCKS5}))
        self.instance = instance
        self.user = f"country-{country}"
        self.with_agent = with_agent
        self.sessions = sessions  # > 0: the load generator cycles over this many sessions
        self.limited = limited  # the package with rps and concurrency limits

    def refresh(self) -> None:
        self.port = self.instance.proxy_port
        self.password = self.instance.limited_key if self.limited else self.instance.key
        self.proc = self.instance.proc
        self.extra_pids = [self.instance.agent] if self.with_agent and self.instance.agent else []

    def version(self) -> str:
        r = subprocess.run(
            [
                str(ROOT / ".venv" / "bin" / "python"),
                "-c",
                "import importlib.metadata as m; print(m.version('exitgate'))",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        return f"exitgate {r.stdout.strip() or '?'}"
