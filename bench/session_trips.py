"""Redis round trips and requests/s of session CONNECTs (kept or new) through a real gateway.

    .venv/bin/python -m bench.session_trips [--requests 400] [--redis redis://127.0.0.1:6379/0]
        [--sessions kept|new|both]

A `GatewayThread` (SQLite accounts, sessions in Redis under a random key prefix) with one
direct exit, and a loop of CONNECT tunnels (open, CONNECT with a `session` rule, read the 200,
one echoed byte, close) to a loopback echo server, one at a time. The session store's Redis
client is wrapped to count every command it sends (its own connection pool: nothing else of
the gateway shares it), so "round trips per request" is exact, not a sample of `INFO`.
`kept`: one session; its first request creates it and is not counted. `new`: every request
names a fresh session id, so each is a new session's first request. Besides requests/s (the client
shares the process), the gateway thread's own CPU per request (`time.thread_time` read on
its loop) is reported: it survives a busy machine better. Issue 9, point 1.

A/B against another revision's sources: `git archive <rev> src | tar -x -C /tmp/before` and
run with `PYTHONPATH=/tmp/before/src` (it wins over the editable install).
"""

from __future__ import annotations

import argparse
import base64
import collections
import secrets
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.gateway import GatewayThread  # noqa: E402
from tests.support.origin import EchoServer  # noqa: E402

import exitgate  # noqa: E402


def tunnel(port: int, target: int, auth: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(
            f"CONNECT 127.0.0.1:{target} HTTP/1.1\r\nHost: 127.0.0.1:{target}\r\n"
            f"Proxy-Authorization: Basic {auth}\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                raise RuntimeError(f"closed after {head!r}")
            head += chunk
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.decode(errors="replace"))
        s.sendall(b"x")
        if s.recv(1) != b"x":
            raise RuntimeError("no echo")
        for line in head.decode().split("\r\n"):
            if line.lower().startswith("x-exitgate-session:"):
                return line.split(":", 1)[1].strip()
        return ""


async def thread_cpu() -> float:
    return time.thread_time()


def credentials(key: str, session: str) -> str:
    return base64.b64encode(f"country-us-session-{session}:{key}".encode()).decode()


def measure(requests: int, redis_url: str, sessions: str = "kept") -> dict[str, Any]:
    prefix = f"egbench:{secrets.token_hex(4)}:"
    echo = EchoServer()
    with tempfile.TemporaryDirectory() as tmp:
        gw = GatewayThread(Path(tmp), store={"redis_url": redis_url, "redis_prefix": prefix})
        try:
            gw.direct_node(bind="127.0.0.2", country="us")
            _, key = gw.package()
            auth = credentials(key, "bench")
            fresh = [credentials(key, f"new{i}") for i in range(requests)]
            store: Any = gw.gateway.sessions.store
            counts: collections.Counter[str] = collections.Counter()
            original = store.redis.execute_command

            async def counting(*args: Any, **kwargs: Any) -> Any:
                counts[str(args[0]).upper()] += 1
                return await original(*args, **kwargs)

            store.redis.execute_command = counting
            outcomes = collections.Counter([tunnel(gw.proxy_port, echo.port, auth)])
            counts.clear()
            cpu0 = gw.call(thread_cpu())
            began = time.perf_counter()
            for i in range(requests):
                who = fresh[i] if sessions == "new" else auth
                outcomes[tunnel(gw.proxy_port, echo.port, who)] += 1
            elapsed = time.perf_counter() - began
            cpu = gw.call(thread_cpu()) - cpu0
            counts.pop("TIME", None)  # the clock sync, every 30 s, not per request
            return {
                "sessions": sessions,
                "requests": requests,
                "outcomes": dict(outcomes),
                "commands": dict(counts),
                "per_request": sum(counts.values()) / requests,
                "rps": requests / elapsed,
                "cpu_us": cpu / requests * 1e6,
                "source": exitgate.__file__,
            }
        finally:
            gw.stop()
            echo.stop()
            import redis

            client = redis.Redis.from_url(redis_url)
            keys = list(client.scan_iter(match=f"{prefix}*"))
            if keys:
                client.delete(*keys)
            client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sessions", choices=["kept", "new", "both"], default="kept")
    args = parser.parse_args()
    kinds = ["kept", "new"] if args.sessions == "both" else [args.sessions]
    for _ in range(args.runs):
        for kind in kinds:
            report(measure(args.requests, args.redis, kind))


def report(result: dict[str, Any]) -> None:
    print(
        f"{result['requests']} {result['sessions']}-session CONNECTs: "
        f"{result['per_request']:.2f} session commands per request {result['commands']}, "
        f"{result['rps']:.0f} requests/s, gateway CPU {result['cpu_us']:.0f} µs per request, "
        f"outcomes {result['outcomes']} ({result['source']})"
    )


if __name__ == "__main__":
    main()
