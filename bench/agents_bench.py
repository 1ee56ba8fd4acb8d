"""Agent hub benchmark: memory per idle agent, hub CPU at idle, throughput through one agent.

    python bench/agents_bench.py [--agents 1000] [--mb 256] [--idle-seconds 10]

Three processes on 127.0.0.1, so that nothing but the hub is in the measured RSS:
- `hub`: the hub alone over an in-memory store (`sqlite://`), reporting its RSS and CPU time;
- `agents`: N minimal agents (hello + a bare h2 server answering PINGs) on one loop;
- for throughput, a full gateway (proxy port, hub wired into its dialer) in this process, one
  real `python -m exitgate.agent` process, and a target that sinks or sources bytes; the
  client does one CONNECT per direction and moves `--mb` MiB through one agent stream.
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
TOKEN = "bench-hub-token"


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds() -> float:
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the hub process ------------------------------------------------------------------------------


async def hub_main() -> None:
    from exitgate.hub.server import build_hub
    from exitgate.registry import Registry
    from exitgate.services import AccountService
    from exitgate.settings import HubSettings
    from exitgate.store.base import open_store

    store = open_store("sqlite://")
    registry = Registry()
    hub = build_hub(
        HubSettings(listen="127.0.0.1:0", token=TOKEN), AccountService(store, registry), registry
    )
    address = await hub.start()
    print(json.dumps({"port": address[1]}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip() == b"stats":
            print(json.dumps({"rss_kib": rss_kib(), "cpu": cpu_seconds(), "live": len(hub.live)}),
                  flush=True)
    await hub.close()


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
    hub = subprocess.Popen([python, __file__, "--role", "hub"], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
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
    parser.add_argument("--role", choices=("bench", "hub", "agents"), default="bench")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--prefix", default="idle")
    parser.add_argument("--mb", type=int, default=256)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--report-times", action="store_true",
                        help="agents role: print first-hello/all-OK times as JSON, not 'ready'")
    args = parser.parse_args()
    import uvloop

    if args.role == "hub":
        uvloop.run(hub_main())
    elif args.role == "agents":
        import resource  # 10,000 agents need 10,000 descriptors: soft limit up to the hard one

        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        uvloop.run(agents_main(args.port, args.agents, args.prefix, args.report_times))
    else:
        report = measure_rss(args.agents, args.idle_seconds)
        report |= measure_throughput(args.mb)
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
