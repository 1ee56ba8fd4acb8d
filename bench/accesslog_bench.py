"""Access-log cost: CONNECT tunnels/s with the access log off, on with a full queue, and on.

    .venv/bin/python -m bench.accesslog_bench [--seconds 3] [--reps 5] [-c 64]

Three `exitgate serve` instances on 127.0.0.1, provisioned like the main benchmark's (one
package, one direct node), driven in turn (A B C, A B C, ...) by `bench/build/loadgen
connect` against the loadgen origin:

- `off`: `[accesslog] target = "off"` (the default);
- `full`: the log goes to a FIFO that this script opens and never reads, with
  `queue = 64`: the writer thread blocks once the pipe holds 64 KiB, the queue fills, and
  from then on every tunnel's entry is dropped and counted. This is the issue's "queue full"
  case: the relay must not notice the log (target: within 5% of `off`);
- `file`: the log goes to a regular file with the default queue, every line written (the cost
  of formatting and writing on the same cores, for reference).

Prints one JSON object: per variant the median tunnels/s, p50/p99 latency and gateway CPU ms
per 1,000 tunnels, the ratios to `off`, the `full` instance's access-log counters from its
/metrics (dropped must be > 0, else the queue was never full and the run proves nothing), and
a micro-benchmark of the end-of-request hook (`ProxyContext.served`) with the log off and with
a full queue, in ns per call: the figure that does not depend on how busy the machine is.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.gateway import Instance
from bench.install import ROOT
from bench.procs import Proc, cpu_seconds, raise_nofile, tree

LOADGEN = ROOT / "bench" / "build" / "loadgen"


def build_loadgen() -> None:
    src = ROOT / "bench" / "loadgen.c"
    if not LOADGEN.exists() or LOADGEN.stat().st_mtime < src.stat().st_mtime:
        LOADGEN.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-O2", str(src), "-o", str(LOADGEN)], check=True)


def start_origin(workdir: Path) -> tuple[Proc, int]:
    origin = Proc("origin", [str(LOADGEN), "origin", "--listen", "127.0.0.1:0"], workdir / "o.log")
    origin.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in origin.log.read_text().splitlines() if origin.log.exists() else []:
            if line.startswith("PORT "):
                return origin, int(line.split()[1])
        time.sleep(0.02)
    raise SystemExit("origin did not start")


def run(inst: Instance, origin_port: int, conc: int, seconds: float) -> dict[str, Any]:
    argv = [
        str(LOADGEN), "connect", "--via", "http", "--proxy", f"127.0.0.1:{inst.proxy_port}",
        "--target", f"127.0.0.1:{origin_port}", "--user", "country-us", "--pass", inst.key,
        "-c", str(conc), "-d", str(seconds), "--warmup", "0.5",
        "--max-seconds", str(seconds + 30),
    ]  # fmt: skip
    assert inst.proc is not None
    pids = tree(inst.proc.pid)
    cpu0 = sum(cpu_seconds(p) for p in pids)
    t0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    wall = time.monotonic() - t0
    cpu = sum(cpu_seconds(p) for p in pids) - cpu0
    if r.returncode != 0:
        raise SystemExit(f"loadgen failed: {r.stderr.strip()[:300]}")
    out: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    # the gateway's CPU per 1,000 tunnels (warm-up included in both, so scaled to the run)
    done = out["completed"] * wall / max(out["seconds"], 1e-9)
    out["cpu_ms_per_1k"] = cpu * 1e6 / done if done else None
    return out


def hot_path_ns(n: int = 200_000) -> dict[str, float]:
    """ns per `ProxyContext.served` call (what the relay runs when a tunnel ends): log off,
    log on with its queue full (entries dropped and counted), and log on with room (entries
    queued; no writer runs, so this is the enqueue alone)."""
    from types import SimpleNamespace

    from exitgate.model import Protocol, Target
    from exitgate.net.context import ProxyContext
    from exitgate.observe.accesslog import AccessLog
    from exitgate.observe.stats import LiveStats
    from exitgate.rules import Rules

    admitted = SimpleNamespace(
        protocol=Protocol.HTTPS, package=SimpleNamespace(id="pkg_1"),
        target=Target("127.0.0.1", 80), rules=Rules(country="us"),
    )  # fmt: skip
    route = SimpleNamespace(
        node=SimpleNamespace(id="node_1"), exit="127.0.0.2", connect_started=1.0, connected=2.0
    )
    meter = SimpleNamespace(up=100, down=200)
    out = {}
    for name, capacity in (("off", 0), ("full_queue", 1), ("queued", n + 10)):
        stats = LiveStats()
        log = AccessLog("stdout", stats, capacity=capacity) if capacity else None
        if log is not None:
            log.put(("filler",))  # type: ignore[arg-type] - fills the queue; never written
        ctx = SimpleNamespace(stats=stats, accesslog=log, node_bytes={})
        served = ProxyContext.served
        t0 = time.perf_counter()
        for _ in range(n):
            served(ctx, admitted, "127.0.0.1", route, meter, started=0.5)  # type: ignore[arg-type]
        out[name] = round((time.perf_counter() - t0) * 1e9 / n, 1)
    return out


def accesslog_counters(inst: Instance) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{inst.admin_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith("exitgate_accesslog_"):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument(
        "--pause", type=float, default=5.0, help="seconds between repetitions (TIME_WAIT ports)"
    )
    args = parser.parse_args()
    raise_nofile()
    build_loadgen()
    workdir = Path(tempfile.mkdtemp(prefix="eg-accesslog-"))
    fifo = workdir / "access.fifo"
    os.mkfifo(fifo)
    # Opened for reading first (the gateway's writer then opens it at once) and never read.
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    variants = {
        "off": Instance("off", workdir),
        "full": Instance(
            "full", workdir, extra=f'\n[accesslog]\ntarget = "{fifo}"\nqueue = 64\n'
        ),
        "file": Instance(
            "file", workdir, extra=f'\n[accesslog]\ntarget = "{workdir / "access.log"}"\n'
        ),
    }
    origin, origin_port = start_origin(workdir)
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    try:
        for inst in variants.values():
            inst.start()
            inst.provision(None)
            run(inst, origin_port, 8, 0.5)  # warm: imports, first-use caches
        for rep in range(args.reps):
            if rep:
                time.sleep(args.pause)  # let loopback ports in TIME_WAIT go
            for name, inst in variants.items():
                sample = run(inst, origin_port, args.concurrency, args.seconds)
                samples[name].append(sample)
                print(f"rep {rep + 1} {name}: {sample['rate']:.0f}/s", file=sys.stderr)
        counters = accesslog_counters(variants["full"])
    finally:
        for inst in variants.values():
            inst.stop()
        origin.stop()
        os.close(reader)

    def ok(name: str) -> list[dict[str, Any]]:
        # A run that completed nothing (the machine out of loopback ports, say) is reported
        # as failed, not averaged in.
        return [s for s in samples[name] if s.get("completed")]

    def median(name: str, key: str) -> float:
        return statistics.median(s[key] for s in ok(name))

    rates = {name: median(name, "rate") for name in variants}
    report = {
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "reps": args.reps,
        "tunnels_per_s": {n: round(r, 1) for n, r in rates.items()},
        "all_rates": {n: [round(s["rate"]) for s in samples[n]] for n in variants},
        "failed_runs": {n: len(samples[n]) - len(ok(n)) for n in variants},
        "p50_ms": {n: median(n, "p50_ms") for n in variants},
        "p99_ms": {n: median(n, "p99_ms") for n in variants},
        "cpu_ms_per_1k": {n: round(median(n, "cpu_ms_per_1k"), 1) for n in variants},
        "ratio_full_to_off": round(rates["full"] / rates["off"], 4),
        "ratio_file_to_off": round(rates["file"] / rates["off"], 4),
        "full_queue_counters": counters,
        "served_ns_per_call": hot_path_ns(),
    }
    shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
