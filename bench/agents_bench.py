"""Agent hub benchmark: memory per idle agent, hub CPU at idle, throughput through one agent.

    python bench/agents_bench.py [--agents 1000] [--mb 256] [--idle-seconds 10]
    python bench/agents_bench.py --mode fleet [--agents 10000] [--idle-seconds 30]
        [--redis redis://127.0.0.1:6379/0 | --redis ''] [--down-seconds 2] [--json FILE]

Three processes on 127.0.0.1, so that nothing but the hub is in the measured RSS:
- `hub`: the hub alone over an in-memory store (`sqlite://`), reporting its RSS and CPU time;
- `agents`: N minimal agents (hello + a bare h2 server answering PINGs) on one loop;
- for throughput, a full gateway (proxy port, hub wired into its dialer) in this process, one
  real `python -m exitgate.agent` process, and a target that sinks or sources bytes; the
  client does one CONNECT per direction and moves `--mb` MiB through one agent stream.

`--mode fleet` (issue 9, agent fleets): the hub process as above but over a SQLite file store
and, unless `--redis ''`, with the cluster's agent directory and interlink (Redis key prefix
`egbench:fleet:<pid>:`, deleted at the end); `--agents` *real* agents
(`exitgate.agent.client.Agent`: keepalive, jittered backoff) in one process. Reports:
- registration: agents/s from the agents' start to all registered at the hub, and to all
  agent nodes `online` in the hub's registry (written to the store: routable);
- RSS per agent (hub process) and idle CPU per agent per second over `--idle-seconds`;
- restart: the hub is stopped (gracefully: GOAWAY to every agent) and a new hub process
  started on the same port after `--down-seconds`; time until every agent is registered and
  online again, and the most registrations in any 100 ms (the reconnect storm, if any).
Everything binds 127.0.0.1; every process started is stopped by PID at the end.
`EXITGATE_BENCH_SRC=/path/to/src` measures another source tree with this script (A/B).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SRC = os.environ.get("EXITGATE_BENCH_SRC", str(ROOT / "src"))
sys.path.insert(0, SRC)
TOKEN = "bench-hub-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds() -> float:
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the hub process ------------------------------------------------------------------------------


async def hub_main(port: int = 0, store_url: str = "sqlite://", redis_url: str = "",
                   prefix: str = "") -> None:
    from exitgate.hub.server import build_hub
    from exitgate.model import NodeKind, NodeState
    from exitgate.registry import Registry
    from exitgate.services import AccountService
    from exitgate.settings import HubSettings
    from exitgate.store.base import open_store

    store = open_store(store_url)
    registry = Registry()
    registry.load(store)
    hub = build_hub(HubSettings(listen=f"127.0.0.1:{port}", token=TOKEN),
                    AccountService(store, registry), registry)
    address = await hub.start()
    interlink = None
    if redis_url:  # the cluster's agent directory and interlink, as `[cluster] listen` has
        from redis.asyncio import Redis

        from exitgate.cluster.directory import AgentDirectory
        from exitgate.cluster.interlink import Interlink

        directory = AgentDirectory(Redis.from_url(redis_url), f"bench-{os.getpid()}", "",
                                   prefix=prefix)
        interlink = Interlink(hub, directory, TOKEN)
        link = await interlink.start("127.0.0.1:0")
        directory.addr = f"{link[0]}:{link[1]}"
    print(json.dumps({"port": address[1]}), flush=True)
    series: list[tuple[float, int]] = []  # (time.time(), agents held) every 100 ms

    async def sample() -> None:
        while True:
            series.append((time.time(), len(hub.live)))
            await asyncio.sleep(0.1)

    from exitgate.tasks import spawn

    sampler = spawn(sample(), "bench-sampler")
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip() == b"series":
            print(json.dumps(series), flush=True)
        elif line.strip() == b"stats":
            online = sum(1 for n in list(registry.nodes.values())
                         if n.kind is NodeKind.AGENT and n.state is NodeState.ONLINE)
            print(json.dumps({"rss_kib": rss_kib(), "cpu": cpu_seconds(), "live": len(hub.live),
                              "online": online, "batches": getattr(hub.book, "batches", None)}),
                  flush=True)
    sampler.cancel()
    await hub.close()
    if interlink is not None:
        await interlink.close()
        await interlink.directory.redis.aclose()
    store.close()


# -- the agents process ---------------------------------------------------------------------------


class IdleAgent(asyncio.Protocol):
    def __init__(self, hello: bytes, ready: asyncio.Future[None]) -> None:
        self.hello, self.ready = hello, ready
        self.transport: Any = None
        self.h2: Any = None
        self.buf = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.hello)

    def data_received(self, data: bytes) -> None:
        if self.h2 is None:
            self.buf += data
            line, sep, rest = self.buf.partition(b"\n")
            if not sep:
                return
            from h2.config import H2Configuration
            from h2.connection import H2Connection

            self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
            self.h2.initiate_connection()
            if not self.ready.done():
                self.ready.set_result(None) if line.startswith(b"OK") else self.ready.set_exception(
                    RuntimeError(line.decode())
                )
            data = rest
        if data:
            self.h2.receive_data(data)
        self.transport.write(self.h2.data_to_send())


async def agents_main(port: int, count: int, prefix: str, report_times: bool = False) -> None:
    from exitgate.hub.protocol import Hello, encode_hello
    from exitgate.model import NodeAttrs

    loop = asyncio.get_running_loop()
    pending = []
    first_hello = time.time()
    for i in range(count):
        ready: asyncio.Future[None] = loop.create_future()
        hello = encode_hello(Hello(TOKEN, f"{prefix}-{i}", NodeAttrs(country="us"), ""))
        await loop.create_connection(lambda h=hello, r=ready: IdleAgent(h, r), "127.0.0.1", port)
        pending.append(ready)
    connected = time.time()
    await asyncio.gather(*pending)
    if report_times:  # bench/cluster_bench.py: wall-clock times of the registration
        print(json.dumps({"first_hello": first_hello, "connected": connected,
                          "last_ok": time.time()}), flush=True)
    else:
        print("ready", flush=True)
    await asyncio.Event().wait()


def measure_rss(count: int, idle_seconds: float) -> dict[str, float]:
    python = sys.executable
    hub = subprocess.Popen([python, __file__, "--role", "hub", "--redis", ""],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert hub.stdin is not None and hub.stdout is not None
    port = json.loads(hub.stdout.readline())["port"]

    def stats() -> dict[str, Any]:
        assert hub.stdin is not None and hub.stdout is not None
        hub.stdin.write("stats\n")
        hub.stdin.flush()
        return dict(json.loads(hub.stdout.readline()))

    procs = []
    try:
        # warm up code paths and allocator pools with a few agents first
        role = [python, __file__, "--role", "agents", "--port", str(port)]
        warm = subprocess.Popen([*role, "--agents", "20", "--prefix", "warm"],
                                stdout=subprocess.PIPE, text=True)
        procs.append(warm)
        assert warm.stdout is not None and warm.stdout.readline().strip() == "ready"
        time.sleep(2)
        before = stats()
        started = time.monotonic()
        agents = subprocess.Popen([*role, "--agents", str(count), "--prefix", "idle"],
                                  stdout=subprocess.PIPE, text=True)
        procs.append(agents)
        assert agents.stdout is not None and agents.stdout.readline().strip() == "ready"
        while stats()["live"] < count + 20:
            time.sleep(0.1)
        registered = time.monotonic() - started
        time.sleep(2)
        after = stats()
        time.sleep(idle_seconds)
        idle = stats()
        assert idle["live"] == count + 20, idle
        return {
            "agents": count,
            "registered_s": round(registered, 2),
            "rss_before_mib": round(before["rss_kib"] / 1024, 1),
            "rss_after_mib": round(after["rss_kib"] / 1024, 1),
            "rss_per_agent_kib": round((after["rss_kib"] - before["rss_kib"]) / count, 1),
            "idle_cpu_percent": round(100 * (idle["cpu"] - after["cpu"]) / idle_seconds, 1),
        }
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        hub.stdin.close()
        hub.wait(10)


# -- fleet: real agents, registration, idle cost, restart ----------------------------------------


def recorded_agents(
    port: int, count: int, token: str, prefix: str
) -> tuple[list[asyncio.Task[None]], list[tuple[int, float]]]:
    """`count` real agents started on the hub at `port`, and the list their registrations
    go into as they happen: (agent index, time.time()). Also bench/cluster_bench.py's."""
    from exitgate.agent.client import Agent, AgentConfig
    from exitgate.tasks import spawn

    registrations: list[tuple[int, float]] = []

    class Recording(asyncio.Event):
        def __init__(self, index: int) -> None:
            super().__init__()
            self.index = index

        def set(self) -> None:
            registrations.append((self.index, time.time()))
            super().set()

    agents = []
    for i in range(count):
        agent = Agent(AgentConfig(hub=f"127.0.0.1:{port}", token=token, agent_id=f"{prefix}{i}"))
        agent.registered = Recording(i)
        agents.append(agent)
    return [spawn(a.run(), f"agent-{i}") for i, a in enumerate(agents)], registrations


async def answer_reports(tasks: list[asyncio.Task[None]], report: Callable[[], object]) -> None:
    """Print `report()` as JSON for every `report` line on stdin; at EOF stop the agents."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip() == b"report":
            print(json.dumps(report()), flush=True)
    for t in tasks:
        t.cancel()


async def real_agents_main(port: int, count: int) -> None:
    """`count` real agents; on stdin `report`: [index, time.time()] of every registration."""
    tasks, registrations = recorded_agents(port, count, TOKEN, "fl-")
    print(json.dumps({"spawned": time.time()}), flush=True)
    await answer_reports(tasks, lambda: registrations)


class HubProc:
    """The hub role as a child process on a fixed port; `stats()` over its stdin/stdout."""

    def __init__(self, port: int, store: str, redis: str, prefix: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--role", "hub", "--port", str(port), "--store", store,
             "--redis", redis, "--redis-prefix", prefix],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(json.loads(self.proc.stdout.readline())["port"])
        self.opened = time.time()

    def ask(self, what: str) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{what}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stats(self) -> dict[str, Any]:
        return dict(self.ask("stats"))

    def stop(self, timeout: float = 60) -> float:
        """Graceful stop (stdin closed: `Hub.close`); seconds it took."""
        started = time.time()
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return time.time() - started


def _until(check: Any, limit: float, step: float = 0.2) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if check():
            return time.monotonic() - started
        time.sleep(step)
    return None


def measure_fleet(count: int, idle_seconds: float, redis: str, down: float,
                  limit: float = 300.0) -> dict[str, Any]:
    prefix = f"egbench:fleet:{os.getpid()}:"
    port = free_port()
    tmp = tempfile.TemporaryDirectory(prefix="egfleet-")
    store = f"sqlite:///{tmp.name}/fleet.db"
    hub = HubProc(port, store, redis, prefix)
    agents: subprocess.Popen[str] | None = None
    out: dict[str, Any] = {"agents": count, "redis_directory": bool(redis),
                           "loadavg_before": Path("/proc/loadavg").read_text().split()[:3]}
    try:
        time.sleep(1)
        before = hub.stats()
        agents = subprocess.Popen(
            [sys.executable, __file__, "--role", "real-agents", "--port", str(port),
             "--agents", str(count)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert agents.stdin is not None and agents.stdout is not None
        spawned = float(json.loads(agents.stdout.readline())["spawned"])
        seen: dict[str, Any] = {}

        def reached(key: str) -> bool:
            seen.update(hub.stats())
            return int(seen[key]) >= count

        _until(lambda: reached("live"), limit)
        all_live = time.time()
        _until(lambda: reached("online"), limit)
        all_online = time.time()
        cpu_reg = hub.stats()["cpu"] - before["cpu"]
        agents.stdin.write("report\n")
        agents.stdin.flush()
        first = json.loads(agents.stdout.readline())
        registered = max((t for _, t in first), default=all_live)
        out |= {
            "registered_at_hub": len({i for i, _ in first}),
            "all_registered_s": round(registered - spawned, 2),
            "all_online_s": round(all_online - spawned, 2) if seen["online"] >= count else None,
            "registered_per_s": round(count / (registered - spawned)),
            "online_per_s": round(count / (all_online - spawned)),
            "online_in_registry": seen["online"],
            "hub_cpu_s_registering": round(cpu_reg, 2),
            "store_batches": seen.get("batches"),
        }
        time.sleep(5)  # let the allocator and the first keepalive round settle
        after = hub.stats()
        time.sleep(idle_seconds)
        idle = hub.stats()
        cpu = idle["cpu"] - after["cpu"]
        out |= {
            "rss_before_mib": round(before["rss_kib"] / 1024, 1),
            "rss_after_mib": round(after["rss_kib"] / 1024, 1),
            "rss_per_agent_kib": round((after["rss_kib"] - before["rss_kib"]) / count, 1),
            "idle_seconds": idle_seconds,
            "idle_cpu_percent_of_core": round(100 * cpu / idle_seconds, 2),
            "idle_cpu_us_per_agent_per_s": round(1e6 * cpu / idle_seconds / count, 2),
            "live_after_idle": idle["live"],
        }
        # restart: graceful stop, down for `down` s, a new hub process on the same port
        stopped = time.time()
        out["stop_took_s"] = round(hub.stop(), 2)
        time.sleep(max(0.0, down - (time.time() - stopped)))
        hub = HubProc(port, store, redis, prefix)
        opened = hub.opened
        out["hub_down_s"] = round(opened - stopped, 2)
        back_s = _until(lambda: reached("live"), limit)
        online_back_s = _until(lambda: reached("online"), limit)
        agents.stdin.write("report\n")
        agents.stdin.flush()
        regs = json.loads(agents.stdout.readline())
        latest: dict[int, float] = {}
        for i, t in regs:
            if t > opened - 1:
                latest[i] = max(t, latest.get(i, 0.0))
        buckets: dict[int, int] = {}
        for t in latest.values():
            k = int((t - opened) * 10)
            buckets[k] = buckets.get(k, 0) + 1
        hist = [buckets.get(k, 0) for k in range(min(buckets, default=0),
                                                   max(buckets, default=0) + 1)]
        ordered = sorted(latest.values())
        # the hub's own view: agents held, sampled every 100 ms from its port opening on
        held = [n for t, n in hub.ask("series") if t >= opened]
        steps = [b - a for a, b in zip([0, *held], held, strict=False)]
        out["restart_at_hub"] = {
            "max_new_per_100ms": max(steps, default=0),
            "new_per_s": [sum(steps[i : i + 10]) for i in range(0, len(steps), 10)
                          if any(steps[i:])],
        }
        out["restart"] = {
            "back_at_hub": len(latest),
            "all_back_after_hub_up_s": round(back_s, 2) if back_s is not None else None,
            "half_back_after_hub_up_s": round(ordered[len(ordered) // 2] - opened, 2)
            if ordered else None,
            "all_online_after_hub_up_s": round(back_s + online_back_s, 2)
            if back_s is not None and online_back_s is not None else None,
            "max_registrations_per_100ms": max(hist, default=0),
            "registrations_per_s": [sum(hist[i : i + 10]) for i in range(0, len(hist), 10)],
        }
        out["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
        return out
    finally:
        if agents is not None:
            agents.kill()
            agents.wait()
        hub.stop(30)
        tmp.cleanup()
        if redis:
            import redis as redis_sync

            client = redis_sync.Redis.from_url(redis)
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            for i in range(0, len(keys), 500):
                client.delete(*keys[i : i + 500])
            client.close()


# -- throughput -----------------------------------------------------------------------------------


def measure_throughput(mb: int) -> dict[str, float]:
    sys.path.insert(0, str(ROOT))
    from tests.support.agents import AgentProcess, attach_hub, detach_hub, wait_online
    from tests.support.gateway import GatewayThread

    size = mb * 1024 * 1024
    sink = socket.create_server(("127.0.0.1", 0))
    source = socket.create_server(("127.0.0.1", 0))
    block = os.urandom(1 << 20)

    def serve_sink() -> None:
        conn, _ = sink.accept()
        while conn.recv(1 << 20):
            pass
        conn.close()

    def serve_source() -> None:
        conn, _ = source.accept()
        sent = 0
        while sent < size:
            conn.sendall(block)
            sent += len(block)
        conn.close()

    with tempfile.TemporaryDirectory() as tmp:
        gw = GatewayThread(Path(tmp), hub={"token": "hub-test-token-0123456789"})
        hub = attach_hub(gw)
        agent = AgentProcess(hub, "bench-1", "--country", "us", "--log-level", "warning",
                             tmp=Path(tmp))
        try:
            wait_online(gw, "bench-1")
            _, key = gw.package()
            auth = base64.b64encode(f"country-us:{key}".encode()).decode()
            results = {}
            for name, server, serve in (("upload", sink, serve_sink),
                                        ("download", source, serve_source)):
                thread = threading.Thread(target=serve, daemon=True)
                thread.start()
                sock = socket.create_connection((gw.proxy_host, gw.proxy_port))
                port = server.getsockname()[1]
                sock.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n"
                             f"Proxy-Authorization: Basic {auth}\r\n\r\n".encode())
                head = b""
                while b"\r\n\r\n" not in head:
                    head += sock.recv(1)
                assert head.startswith(b"HTTP/1.1 200"), head
                started = time.monotonic()
                if name == "upload":
                    for _ in range(mb):
                        sock.sendall(block)
                    sock.shutdown(socket.SHUT_WR)
                    sock.recv(1)  # the far side closes once it read everything
                else:
                    got = 0
                    while chunk := sock.recv(1 << 20):
                        got += len(chunk)
                    assert got == size
                elapsed = time.monotonic() - started
                sock.close()
                thread.join(30)
                results[f"{name}_mib_s"] = round(mb / elapsed, 1)
            return results
        finally:
            agent.stop()
            detach_hub(gw)
            gw.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=("bench", "hub", "agents", "real-agents"),
                        default="bench")
    parser.add_argument("--mode", choices=("rss", "fleet"), default="rss")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--store", default="sqlite://", help="hub role: its store URL")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0",
                        help="fleet: Redis for the agent directory ('' for none)")
    parser.add_argument("--redis-prefix", default="egbench:fleet:")
    parser.add_argument("--down-seconds", type=float, default=2.0)
    parser.add_argument("--limit", type=float, default=300.0,
                        help="fleet: give up waiting for a phase after this many seconds")
    parser.add_argument("--json", type=Path, default=None, help="fleet: also write the report")
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--prefix", default="idle")
    parser.add_argument("--mb", type=int, default=256)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--report-times", action="store_true",
                        help="agents role: print first-hello/all-OK times as JSON, not 'ready'")
    args = parser.parse_args()
    import resource  # 10,000 agents need 10,000 descriptors: soft limit up to the hard one

    import uvloop

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.role == "hub":
        uvloop.run(hub_main(args.port, args.store, args.redis, args.redis_prefix))
    elif args.role == "agents":
        uvloop.run(agents_main(args.port, args.agents, args.prefix, args.report_times))
    elif args.role == "real-agents":
        uvloop.run(real_agents_main(args.port, args.agents))
    elif args.mode == "fleet":
        report = measure_fleet(args.agents, args.idle_seconds, args.redis, args.down_seconds,
                               args.limit)
        text = json.dumps(report, indent=2)
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(text)
        print(text)
    else:
        report = measure_rss(args.agents, args.idle_seconds)
        report |= measure_throughput(args.mb)
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
