"""Cluster benchmark (issue 9): the forwarded hop's cost, a 10,000-agent hub, a hub restart.

    .venv/bin/python -m bench.cluster_bench [--parts hop,fleet,restart] [--agents 10000]
        [--restart-agents 1000] [--seconds 3] [--reps 2] [--mb 256] [--json FILE]

Everything on 127.0.0.1. Needs PostgreSQL (127.0.0.1:5432, user postgres, trust) and Redis
(127.0.0.1:6379): the benchmark makes its own database `egbench_cluster_<pid>` and uses the
Redis key prefix `egbench:<pid>:`, and drops / deletes both at the end, as it stops every
process it started (by PID, see bench/procs.py). Each part is bounded in time.

- `hop`: two `exitgate serve` instances A and B sharing the stores, `[cluster] listen` set,
  one real `python -m exitgate.agent` dialled into A's hub. The load generator
  (bench/build/loadgen) measures through A (local agent) and through B (forwarded over the
  interlink to A): CONNECT tunnels/s at c=16 and c=64, latency at c=1, MB/s through one
  tunnel (`--mb` MiB each way at the same time).
- `fleet`: one instance, `--agents` minimal agents (bench/agents_bench.py's raw agents) in
  one process: the gateway's RSS per agent, and the registration rate (first hello to every
  OK from the hub; then to every node `online` in PostgreSQL).
- `restart`: one instance, `--restart-agents` real `exitgate.agent.client.Agent` instances in
  one process; the instance is stopped (SIGTERM) and started again; how long until all are
  registered again, and registrations per 100 ms bucket (the jittered backoff spreads them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from bench.agents_bench import answer_reports, recorded_agents  # noqa: E402
from bench.procs import Proc, cpu_seconds, free_port, raise_nofile, rss_kib, wait_port  # noqa: E402

EXITGATE = ROOT / ".venv" / "bin" / "exitgate"
PYTHON = ROOT / ".venv" / "bin" / "python"
LOADGEN = ROOT / "bench" / "build" / "loadgen"
ADMIN_TOKEN = "bench-admin-token"
HUB_TOKEN = "bench-hub-token"  # bench/agents_bench.py's raw agents send this one
PG = "postgresql://postgres@127.0.0.1:5432"
REDIS = "redis://127.0.0.1:6379/0"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def call(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


# -- shared stores ---------------------------------------------------------------------------


@dataclass(slots=True)
class Stores:
    db: str = field(default_factory=lambda: f"egbench_cluster_{os.getpid()}")
    prefix: str = field(default_factory=lambda: f"egbench:{os.getpid()}:")

    @property
    def url(self) -> str:
        return f"{PG}/{self.db}"

    def _psql(self, sql: str, db: str = "postgres") -> str:
        r = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-tAc", sql],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if r.returncode != 0:
            raise RuntimeError(f"psql {sql!r}: {r.stderr.strip()}")
        return r.stdout.strip()

    def create(self) -> None:
        self._psql(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
        self._psql(f'CREATE DATABASE "{self.db}"')

    def reset(self) -> None:
        """A fresh database and key space for the next part."""
        self.drop()
        self.create()

    def online_agents(self) -> int:
        return int(self._psql("SELECT count(*) FROM nodes WHERE kind='agent' AND state='online'",
                              self.db) or 0)

    def drop(self) -> None:
        import redis

        client = redis.Redis.from_url(REDIS)
        try:
            batch = list(client.scan_iter(match=f"{self.prefix}*", count=1000))
            for i in range(0, len(batch), 500):
                client.delete(*batch[i : i + 500])
        finally:
            client.close()
        self._psql(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')


# -- one instance ----------------------------------------------------------------------------


@dataclass(slots=True)
class Instance:
    name: str
    workdir: Path
    stores: Stores
    cluster: bool = True
    proxy_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    hub_port: int = field(default_factory=free_port)
    link_port: int = field(default_factory=free_port)
    proc: Proc | None = None

    def start(self, timeout: float = 60.0) -> float:
        """Start and wait for /healthz; returns the time (time.time()) the hub port opened."""
        d = self.workdir / self.name
        d.mkdir(parents=True, exist_ok=True)
        conf = d / "exitgate.toml"
        cluster = f'\n[cluster]\nlisten = "127.0.0.1:{self.link_port}"\n' if self.cluster else ""
        conf.write_text(f"""[proxy]
listen = "127.0.0.1:{self.proxy_port}"
max_connections_per_ip = 0

[admin]
listen = "127.0.0.1:{self.admin_port}"
token = "{ADMIN_TOKEN}"

[hub]
listen = "127.0.0.1:{self.hub_port}"
token = "{HUB_TOKEN}"

[store]
url = "{self.stores.url}"
redis_url = "{REDIS}"
redis_prefix = "{self.stores.prefix}"

[exit]
allow_private = true

[log]
level = "warning"
{cluster}""")
        self.proc = Proc(f"exitgate-{self.name}", [str(EXITGATE), "serve", "--config", str(conf)],
                         d / "exitgate.log", cwd=d)  # generated secret files land in d
        self.proc.start()
        if not wait_port(self.hub_port, timeout, self.proc.popen):  # type: ignore[arg-type]
            raise RuntimeError(f"{self.name} did not start:\n{self.proc.tail()}")
        opened = time.time()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(urllib.error.URLError, OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/healthz", timeout=1)
                return opened
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: no /healthz:\n{self.proc.tail()}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(grace=10)


# -- part a: the forwarded hop -----------------------------------------------------------------


def loadgen(*args: str, timeout: float = 120) -> dict[str, Any]:
    r = subprocess.run([str(LOADGEN), *args], capture_output=True, text=True, timeout=timeout,
                       check=False)
    if r.returncode != 0 or not r.stdout.strip():
        return {"run_failed": f"rc={r.returncode}: {' '.join(r.stderr.split())[:300]}"}
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


def part_hop(stores: Stores, workdir: Path, seconds: float, reps: int, mb: int) -> dict[str, Any]:
    a = Instance("a", workdir, stores)
    b = Instance("b", workdir, stores)
    origin = Proc("origin", [str(LOADGEN), "origin", "--listen", "127.0.0.1:0"],
                  workdir / "origin.log")
    agent: Proc | None = None
    try:
        origin.start()
        deadline = time.monotonic() + 10
        port = 0
        while not port and time.monotonic() < deadline:
            for line in origin.log.read_text().splitlines():
                if line.startswith("PORT "):
                    port = int(line.split()[1])
            time.sleep(0.05)
        target = f"127.0.0.1:{port}"
        a.start()
        b.start()
        org = call(a.admin_port, "POST", "/v1/orgs", {"name": "bench", "credits": None})
        key = call(a.admin_port, "POST", "/v1/packages", {"org_id": org["id"]})["key"]
        agent = Proc("agent", [str(PYTHON), "-m", "exitgate.agent",
                               "--hub", f"127.0.0.1:{a.hub_port}", "--token", HUB_TOKEN,
                               "--id", "hop-agent", "--country", "jp", "--network", "dc",
                               "--allow-private", "--max-streams", "10000",
                               "--state-file", str(workdir / "agent.state"),
                               "--log-level", "warning"], workdir / "agent.log")
        agent.start()
        common = ["--via", "http", "--target", target, "--user", "country-jp", "--pass", key]
        # both instances must see the agent and the package: one tunnel through each succeeds
        deadline = time.monotonic() + 30
        for inst in (a, b):
            while True:
                probe = loadgen("connect", "--proxy", f"127.0.0.1:{inst.proxy_port}", *common,
                                "-c", "1", "-d", "0.2", "--warmup", "0", "--max-seconds", "10")
                if probe.get("completed") and not sum(probe.get("errors", {"x": 1}).values()):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no tunnel through {inst.name}: {probe}\n{a.proc.tail()}")  # type: ignore[union-attr]
                time.sleep(0.3)
        pids = {"a": a.proc.pid, "b": b.proc.pid, "agent": agent.pid}  # type: ignore[union-attr]
        out: dict[str, Any] = {}

        def run(label: str, inst: Instance, *args: str) -> None:
            cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
            t0 = time.monotonic()
            res = loadgen(args[0], "--proxy", f"127.0.0.1:{inst.proxy_port}", *common,
                          *args[1:])
            res["wall"] = round(time.monotonic() - t0, 3)
            res["cpu_s"] = {k: round(cpu_seconds(p) - cpu0[k], 3) for k, p in pids.items()}
            out.setdefault(label, []).append(res)
            log(f"hop {label} via {inst.name}: "
                f"{ {k: res.get(k) for k in ('rate', 'p50_ms', 'p99_ms', 'mb_per_s')} }")

        window = ["-d", str(seconds), "--warmup", "0.5", "--max-seconds", str(seconds + 30)]
        for _ in range(reps):
            for inst in (a, b):
                for c in (1, 16, 64):
                    run(f"connect_c{c}_{'local' if inst is a else 'forwarded'}", inst,
                        "connect", "-c", str(c), *window)
        for inst in (a, b):
            run(f"throughput_{'local' if inst is a else 'forwarded'}", inst, "throughput",
                "-c", "1", "--bytes", str(mb << 20), "--max-seconds", "90", "--timeout", "15")
        with contextlib.suppress(OSError, urllib.error.URLError):
            out["interlink_metrics"] = [
                line for line in urllib.request.urlopen(
                    f"http://127.0.0.1:{b.admin_port}/metrics", timeout=5).read().decode()
                .splitlines() if "interlink" in line and not line.startswith("#")]
        return out
    finally:
        for p in (agent, origin):
            if p is not None:
                p.stop()
        b.stop()
        a.stop()


# -- part b: 10,000 agents on one instance ---------------------------------------------------


def _connected(admin_port: int) -> int:
    """Agents the hub holds now (`exitgate_agents_connected` on /metrics)."""
    with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
        text = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).read()
        for line in text.decode().splitlines():
            if line.startswith("exitgate_agents_connected "):
                return int(float(line.split()[1]))
    return -1


def part_fleet(stores: Stores, workdir: Path, count: int, limit: float) -> dict[str, Any]:
    """`count` raw agents; polls the hub's count and PostgreSQL's online count until both
    reach it or `limit` seconds pass (then reports how far it got)."""
    inst = Instance("fleet", workdir, stores)
    procs: list[subprocess.Popen[str]] = []
    try:
        inst.start()
        pid = inst.proc.pid  # type: ignore[union-attr]
        role = [str(PYTHON), str(ROOT / "bench" / "agents_bench.py"), "--role", "agents",
                "--port", str(inst.hub_port), "--report-times"]
        warm = subprocess.Popen([*role, "--agents", "20", "--prefix", "warm"],
                                stdout=subprocess.PIPE, text=True)
        procs.append(warm)
        assert warm.stdout is not None
        json.loads(warm.stdout.readline())
        time.sleep(3)
        rss0 = rss_kib(pid)
        cpu0 = cpu_seconds(pid)
        started = time.time()
        agents = subprocess.Popen([*role, "--agents", str(count), "--prefix", "fleet"],
                                  stdout=subprocess.DEVNULL, text=True)
        procs.append(agents)
        series: list[tuple[float, int, int, float]] = []  # (s, connected, online, RSS MiB)
        all_connected = all_online = None
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            t = time.time() - started
            connected = _connected(inst.admin_port) - 20
            online = stores.online_agents() - 20
            series.append((round(t, 1), connected, online, round(rss_kib(pid) / 1024, 1)))
            if all_connected is None and connected >= count:
                all_connected = t
            if online >= count:
                all_online = t
                break
            time.sleep(1.0)
        cpu_reg = cpu_seconds(pid) - cpu0
        wall_reg = time.time() - started
        time.sleep(5)
        rss1 = rss_kib(pid)
        connected = _connected(inst.admin_port) - 20
        cpu1 = cpu_seconds(pid)
        time.sleep(10)
        idle_cpu = (cpu_seconds(pid) - cpu1) / 10
        step = max(1, len(series) // 40)
        return {
            "agents": count,
            "limit_s": limit,
            "connected_at_end": connected,
            "online_in_postgres_at_end": series[-1][2],
            "all_connected_s": round(all_connected, 1) if all_connected else None,
            "all_online_s": round(all_online, 1) if all_online else None,
            "connected_per_s": round(count / all_connected) if all_connected else None,
            "online_per_s": round(count / all_online) if all_online else None,
            "gateway_cpu_share_while_registering": round(cpu_reg / wall_reg, 2),
            "rss_before_mib": round(rss0 / 1024, 1),
            "rss_after_mib": round(rss1 / 1024, 1),
            "rss_per_connected_agent_kib": round((rss1 - rss0) / max(connected, 1), 1),
            "idle_cpu_percent_of_core": round(100 * idle_cpu, 1),
            "series_s_connected_online_rssmib": series[::step] + series[-1:],
        }
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        inst.stop()


# -- part c: a hub restart ---------------------------------------------------------------------


async def real_agents_main(port: int, count: int) -> None:
    """`count` real Agent instances; on stdin `report`, every registration's time.time()."""
    tasks, registrations = recorded_agents(port, count, HUB_TOKEN, "rs-")
    while len({i for i, _ in registrations}) < count:
        await asyncio.sleep(0.05)
    print(json.dumps({"ready": time.time()}), flush=True)
    await answer_reports(tasks, lambda: {"registrations": registrations})


def part_restart(stores: Stores, workdir: Path, count: int) -> dict[str, Any]:
    inst = Instance("restart", workdir, stores)
    agents: subprocess.Popen[str] | None = None
    try:
        inst.start()
        spawned = time.time()
        agents = subprocess.Popen(
            [str(PYTHON), __file__, "--role", "real-agents", "--port", str(inst.hub_port),
             "--restart-agents", str(count)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert agents.stdout is not None and agents.stdin is not None
        ready = json.loads(agents.stdout.readline())["ready"]
        time.sleep(3)
        stopped_at = time.time()
        inst.stop()
        down_s = time.time() - stopped_at
        opened = inst.start()
        deadline = time.monotonic() + 120
        back: list[float] = []
        while time.monotonic() < deadline:
            agents.stdin.write("report\n")
            agents.stdin.flush()
            regs = json.loads(agents.stdout.readline())["registrations"]
            latest: dict[int, float] = {}
            for i, t in regs:
                if t > stopped_at:
                    latest[i] = max(t, latest.get(i, 0.0))
            if len(latest) >= count:
                back = sorted(latest.values())
                break
            time.sleep(0.5)
        if not back:
            return {"agents": count, "error": f"only {len(latest)} back within 120 s"}
        # back at the hub is not yet routable: each node must be written `online` again
        online_at = None
        while time.monotonic() < deadline:
            if stores.online_agents() >= count:
                online_at = time.time()
                break
            time.sleep(0.5)
        buckets: dict[int, int] = {}
        for t in back:
            k = int((t - opened) * 10)
            buckets[k] = buckets.get(k, 0) + 1
        first = min(buckets)
        hist = [buckets.get(k, 0) for k in range(first, max(buckets) + 1)]
        return {
            "agents": count,
            "spawn_to_all_registered_s": round(ready - spawned, 2),
            "stop_took_s": round(down_s, 2),
            "hub_down_s": round(opened - stopped_at, 2),
            "all_back_after_hub_up_s": round(back[-1] - opened, 2),
            "all_back_after_stop_s": round(back[-1] - stopped_at, 2),
            "p50_back_after_hub_up_s": round(back[len(back) // 2] - opened, 2),
            "all_online_in_postgres_after_hub_up_s": (
                round(online_at - opened, 2) if online_at else "not within 120 s"),
            "first_bucket_after_hub_up_ms": first * 100,
            "per_100ms": hist,
            "max_per_100ms": max(hist),
        }
    finally:
        if agents is not None:
            agents.kill()
            agents.wait()
        inst.stop()


# -- machine facts and main ------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               "?")
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return {
        "cpu": cpu, "cores": os.cpu_count(), "mem_gib": round(int(mem) / 2**20, 1),
        "kernel": platform.release(), "python": platform.python_version(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "when_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=("bench", "real-agents"), default="bench")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--parts", default="hop,fleet,restart")
    parser.add_argument("--agents", type=int, default=10000)
    parser.add_argument("--restart-agents", type=int, default=1000)
    parser.add_argument("--fleet-limit", type=float, default=240.0,
                        help="fleet: give up waiting for all agents after this many seconds")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--mb", type=int, default=256)
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep configs and logs in this directory (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "build" / "cluster.json")
    args = parser.parse_args()
    raise_nofile()
    if args.role == "real-agents":
        import uvloop

        uvloop.run(real_agents_main(args.port, args.restart_agents))
        return
    import tempfile

    if not LOADGEN.exists():
        subprocess.run(["gcc", "-O2", str(ROOT / "bench" / "loadgen.c"), "-o", str(LOADGEN)],
                       check=True)
    report: dict[str, Any] = {"machine": machine()}
    stores = Stores()
    with tempfile.TemporaryDirectory(prefix="egcluster-") as tmp_dir:
        tmp = str(args.keep) if args.keep else tmp_dir
        try:
            for part in args.parts.split(","):
                stores.reset()
                report[f"loadavg_before_{part}"] = Path("/proc/loadavg").read_text().split()[:3]
                log(f"part {part}")
                if part == "hop":
                    report["hop"] = part_hop(stores, Path(tmp) / "hop", args.seconds, args.reps,
                                             args.mb)
                elif part == "fleet":
                    report["fleet"] = part_fleet(stores, Path(tmp) / "fleet", args.agents,
                                                 args.fleet_limit)
                elif part == "restart":
                    report["restart"] = part_restart(stores, Path(tmp) / "restart",
                                                     args.restart_agents)
                else:
                    raise SystemExit(f"unknown part {part!r}")
                log(json.dumps(report[part])[:2000])
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(report, indent=2))  # kept if a later part fails
        finally:
            stores.drop()
    report["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
