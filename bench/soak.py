"""Soak: N minutes of mixed clients against a real gateway, then memory, descriptors, errors.

    .venv/bin/python -m bench.soak --minutes 30 --clients 500 [--json FILE]

Everything runs on loopback: `exitgate serve` (a subprocess, SQLite store, provisioned over
the admin API as in `bench/gateway.py`), one `exitgate agent` exit (country jp), and in this
process an HTTP origin and the clients. Each client is a loop until the deadline, with a
random pause between operations (mean --think, 1 s: 500 clients offer a few hundred
operations a second, a load, not a saturation test); the mix (shares of --clients):

    connect  35%  CONNECT + Basic auth, one GET through the tunnel, close   (country-us)
    forward  25%  absolute-form GETs with Basic auth on a kept-alive connection
    socks5   20%  RFC 1929 auth, CONNECT to the origin's IPv4, one GET, close
    session  10%  CONNECT as country-us-session-sN (sticky sessions, 50 ids)
    agent     8%  CONNECT as country-jp: through the agent
    badauth   2%  a wrong key, once a second: the deliberate source of 407s

Clients spread over source addresses 127.0.0.10-59 (the bad-key clients use 127.0.0.3), so
per-address caps and throttles see a realistic population and the wrong keys cannot throttle
the good clients. Every answer that is not the expected one is counted by code: the gateway's
X-SOAX-Error for HTTP, the reply code for SOCKS5, or a transport kind (timeout, reset, eof).
Errors from the badauth share are "expected"; any other is "unexplained".

Figures: operations per kind; gateway RSS sampled every --sample seconds after a warm-up,
drift = mean of the last 10% of samples over the mean of the first 10%; open descriptors
before the load (baseline) and after it stops, re-read until they return to baseline or
--settle seconds pass; tracebacks in the gateway log. Every loop is bounded: operations by
--op-timeout, the whole run by its duration plus the settle time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.gateway import Instance
from bench.procs import raise_nofile, rss_kib

MIX = (("connect", 35), ("forward", 25), ("socks5", 20), ("session", 10), ("agent", 8),
       ("badauth", 2))
GOOD_SOURCES = [f"127.0.0.{i}" for i in range(10, 60)]
BAD_SOURCE = "127.0.0.3"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


# -- the origin ------------------------------------------------------------------------------


async def origin_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """HTTP/1.1: `200 ok` per request, kept alive unless the request says close."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            close = b"connection: close" in head.lower()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            if close:
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()


# -- clients ---------------------------------------------------------------------------------


class Refused(Exception):
    """The gateway answered with an error: `code` is what it said."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(slots=True)
class Tally:
    ok: Counter[str] = field(default_factory=Counter)
    errors: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, code)
    seconds: dict[str, list[float]] = field(default_factory=dict)  # successful operations
    start: float = 0.0
    span: float = 1.0
    errors_by_tenth: Counter[int] = field(default_factory=Counter)  # when, in tenths of the run

    def error(self, kind: str, code: str) -> None:
        self.errors[kind, code] += 1
        if kind != "badauth":
            self.errors_by_tenth[min(9, int(10 * (time.monotonic() - self.start) / self.span))] += 1

    def done(self, kind: str, began: float) -> None:
        self.ok[kind] += 1
        self.seconds.setdefault(kind, []).append(time.monotonic() - began)


def basic(user: str, key: str) -> str:
    return base64.b64encode(f"{user}:{key}".encode()).decode()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


def refusal(status: int, headers: dict[str, str]) -> Refused:
    return Refused(headers.get("x-soax-error") or f"HTTP {status}")


async def tunnel_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"GET / HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n")
    data = await reader.read(-1)
    if not (data.startswith(b"HTTP/1.1 200") and data.endswith(b"ok")):
        raise Refused("bad tunnel response")


async def op_connect(cfg: Config, user: str, key: str, source: str) -> None:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", cfg.proxy_port, local_addr=(source, 0)
    )
    try:
        writer.write(
            f"CONNECT 127.0.0.1:{cfg.origin_port} HTTP/1.1\r\nHost: 127.0.0.1:{cfg.origin_port}"
            f"\r\nProxy-Authorization: Basic {basic(user, key)}\r\n\r\n".encode()
        )
        status, headers, _ = await read_response(reader)
        if status != 200:
            raise refusal(status, headers)
        await tunnel_get(reader, writer)
    finally:
        writer.close()


async def op_socks5(cfg: Config, source: str) -> None:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", cfg.proxy_port, local_addr=(source, 0)
    )
    try:
        user, key = b"country-us", cfg.key.encode()
        writer.write(b"\x05\x01\x02")
        if await reader.readexactly(2) != b"\x05\x02":
            raise Refused("socks method refused")
        writer.write(bytes((1, len(user))) + user + bytes((len(key),)) + key)
        if (await reader.readexactly(2))[1] != 0:
            raise Refused("socks auth failed")
        writer.write(b"\x05\x01\x00\x01\x7f\x00\x00\x01" + cfg.origin_port.to_bytes(2, "big"))
        reply = await reader.readexactly(10)
        if reply[1] != 0:
            raise Refused(f"socks reply {reply[1]:#04x}")
        await tunnel_get(reader, writer)
    finally:
        writer.close()


async def forward_client(cfg: Config, tally: Tally, source: str, deadline: float) -> None:
    auth = basic("country-us", cfg.key)
    request = (
        f"GET http://127.0.0.1:{cfg.origin_port}/ HTTP/1.1\r\nHost: 127.0.0.1:{cfg.origin_port}"
        f"\r\nProxy-Authorization: Basic {auth}\r\n\r\n"
    ).encode()
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", cfg.proxy_port, local_addr=(source, 0)),
                cfg.op_timeout,
            )
        except (OSError, TimeoutError) as exc:
            tally.error("forward", _kind(exc))
            await asyncio.sleep(cfg.think)
            continue
        try:
            while time.monotonic() < deadline:
                began = time.monotonic()
                writer.write(request)
                status, headers, body = await asyncio.wait_for(
                    read_response(reader), cfg.op_timeout
                )
                if status != 200 or body != b"ok":
                    raise refusal(status, headers)
                tally.done("forward", began)
                if headers.get("connection", "").lower() == "close":
                    break
                await asyncio.sleep(random.uniform(0, 2 * cfg.think))
        except Refused as exc:
            tally.error("forward", exc.code)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            tally.error("forward", _kind(exc))
        finally:
            writer.close()


def _kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "eof"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    return type(exc).__name__


async def client(cfg: Config, tally: Tally, kind: str, n: int, deadline: float) -> None:
    source = BAD_SOURCE if kind == "badauth" else GOOD_SOURCES[n % len(GOOD_SOURCES)]
    await asyncio.sleep(random.uniform(0, 2.0))  # no thundering start
    if kind == "forward":
        await forward_client(cfg, tally, source, deadline)
        return
    while time.monotonic() < deadline:
        try:
            if kind == "socks5":
                op = op_socks5(cfg, source)
            elif kind == "badauth":
                op = op_connect(cfg, "country-us", "wrong-key", source)
            else:
                user = {"connect": "country-us", "agent": "country-jp"}.get(
                    kind, f"country-us-session-s{n % 50}"
                )
                op = op_connect(cfg, user, cfg.key, source)
            began = time.monotonic()
            await asyncio.wait_for(op, cfg.op_timeout)
            tally.done(kind, began)
        except Refused as exc:
            tally.error(kind, exc.code)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            tally.error(kind, _kind(exc))
        pause = 1.0 if kind == "badauth" else random.uniform(0, 2 * cfg.think)
        await asyncio.sleep(pause)


# -- the run ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Config:
    proxy_port: int
    origin_port: int
    key: str
    op_timeout: float
    think: float


def shares(clients: int) -> list[str]:
    kinds = [k for k, pct in MIX for _ in range(max(1, round(clients * pct / 100)))]
    return (kinds + ["connect"] * clients)[:clients]


async def sampler(pid: int, agent_pid: int | None, out: dict[str, list[Any]], stop: float,
                  every: float, warmup: float) -> None:
    start = time.monotonic()
    while time.monotonic() < stop:
        await asyncio.sleep(every)
        if time.monotonic() - start < warmup:
            continue
        out["rss"].append(rss_kib(pid))
        out["fds"].append(fds(pid))
        if agent_pid is not None:
            out["agent_rss"].append(rss_kib(agent_pid))


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    at = lambda q: round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)  # noqa: E731
    return {"p50": at(0.5), "p99": at(0.99), "max": round(1000 * ordered[-1], 1)}


def drift(samples: list[int]) -> float | None:
    if len(samples) < 10:
        return None
    k = max(1, len(samples) // 10)
    first, last = statistics.fmean(samples[:k]), statistics.fmean(samples[-k:])
    return round(100 * (last - first) / first, 2)


async def soak(args: argparse.Namespace, inst: Instance) -> dict[str, Any]:
    server = await asyncio.start_server(origin_conn, "127.0.0.1", 0, backlog=4096)
    origin_port = server.sockets[0].getsockname()[1]
    assert inst.proc is not None
    pid = inst.proc.pid
    agent_pid = inst.agent.pid if inst.agent is not None else None
    cfg = Config(inst.proxy_port, origin_port, inst.key, args.op_timeout, args.think)
    await asyncio.sleep(1.0)
    baseline_fds, baseline_rss = fds(pid), rss_kib(pid)
    log(f"baseline: {baseline_fds} descriptors, RSS {baseline_rss} KiB; "
        f"{args.clients} clients for {args.minutes} min")
    tally = Tally(start=time.monotonic(), span=args.minutes * 60)
    samples: dict[str, list[Any]] = {"rss": [], "fds": [], "agent_rss": []}
    started = time.monotonic()
    deadline = started + args.minutes * 60
    kinds = shares(args.clients)
    warmup = min(args.warmup, args.minutes * 60 / 5)
    progress_every = max(10.0, args.minutes * 6)

    async def progress() -> None:
        while time.monotonic() < deadline:
            await asyncio.sleep(min(progress_every, max(0.1, deadline - time.monotonic())))
            log(f"{time.monotonic() - started:6.0f}s  ok {sum(tally.ok.values())}  errors "
                f"{sum(tally.errors.values())}  rss {rss_kib(pid)} KiB  fds {fds(pid)}")

    # Clients stop at the deadline; their last operations end within op_timeout.
    await asyncio.wait_for(
        asyncio.gather(
            *(client(cfg, tally, k, i, deadline) for i, k in enumerate(kinds)),
            sampler(pid, agent_pid, samples, deadline, args.sample, warmup),
            progress(),
        ),
        args.minutes * 60 + args.op_timeout * 3,
    )
    elapsed = time.monotonic() - started
    settle_start = time.monotonic()
    after = [(0.0, fds(pid))]
    while after[-1][1] > baseline_fds and time.monotonic() - settle_start < args.settle:
        await asyncio.sleep(1.0)
        after.append((round(time.monotonic() - settle_start, 1), fds(pid)))
    server.close()
    log_text = Path(inst.proc.log).read_text(errors="replace")
    ops = sum(tally.ok.values()) + sum(tally.errors.values())
    return {
        "loadavg_1min_at_end": round(os.getloadavg()[0], 1),
        "cpus": os.cpu_count(),
        "minutes": args.minutes,
        "clients": args.clients,
        "mix": dict(Counter(kinds)),
        "elapsed_s": round(elapsed, 1),
        "ok": dict(tally.ok),
        "ops_per_s": round(ops / elapsed, 1),
        "latency_ms": {k: _percentiles(v) for k, v in sorted(tally.seconds.items())},
        "errors": {f"{k}:{c}": n for (k, c), n in sorted(tally.errors.items())},
        "unexplained_errors_by_tenth_of_run": [tally.errors_by_tenth[i] for i in range(10)],
        "unexplained_errors": sum(n for (k, _), n in tally.errors.items() if k != "badauth"),
        "rss_kib": {"baseline": baseline_rss, "samples": len(samples["rss"]),
                    "min": min(samples["rss"], default=0), "max": max(samples["rss"], default=0),
                    "drift_pct": drift(samples["rss"])},
        "agent_rss_drift_pct": drift(samples["agent_rss"]),
        "fds": {"baseline": baseline_fds, "peak": max(samples["fds"], default=0),
                "after_stop": after, "back_to_baseline": after[-1][1] <= baseline_fds},
        "gateway_log": {
            "tracebacks": log_text.count("Traceback"),
            "error_lines": sum(" ERROR " in ln for ln in log_text.splitlines()),
        },
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="load duration (default 30)")
    p.add_argument("--clients", type=int, default=500, help="concurrent clients (default 500)")
    p.add_argument("--think", type=float, default=1.0, help="mean pause between operations, s")
    p.add_argument("--op-timeout", type=float, default=30.0, help="bound of one operation, s")
    p.add_argument("--sample", type=float, default=1.0, help="RSS/descriptor sampling period, s")
    p.add_argument("--warmup", type=float, default=30.0, help="seconds before the first sample")
    p.add_argument("--settle", type=float, default=60.0, help="max wait for descriptors, s")
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="exitgate-soak-"))
    inst = Instance("soak", work)
    try:
        inst.start()
        inst.provision(None)
        if not inst.start_agent():
            log("the agent exit did not come online: the agent share will fail")
        try:
            import uvloop

            runner: Any = uvloop.run
        except ImportError:
            runner = asyncio.run
        result = runner(soak(args, inst))
    finally:
        inst.stop()
        if args.keep:
            log(f"work directory kept: {work}")
        else:
            with contextlib.suppress(OSError):
                import shutil

                shutil.rmtree(work)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
