"""Scenarios: what the load generator runs against each target, and what is measured.

Every case runs rep by rep, and within a rep target after target (A B C A B C ...), so a
drift of the machine spreads over all columns instead of landing on one.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.peers import CONNECT, FORWARD, SOCKS5, Server
from bench.procs import cpu_seconds, pss_kib, rss_kib

SCENARIOS = ("connect_rate", "forward_rps", "socks5_rate", "tunnel_throughput", "idle_tunnels")
GiB = 1 << 30
MiB = 1 << 20


class Direct(Server):
    """No proxy: the load generator straight against the origin (the ceiling)."""

    def __init__(self) -> None:
        super().__init__("direct", "-", frozenset({CONNECT, FORWARD, SOCKS5}))

    def version(self) -> str:
        return "-"


@dataclass(frozen=True, slots=True)
class Sizes:
    reps: int
    seconds: float  # measuring window of the rate scenarios
    warmup: float
    concurrency: tuple[int, ...]
    forward_conc: int
    bulk_one: int  # bytes each way, one tunnel
    bulk_many: int  # bytes each way, all 16 tunnels together
    many_tunnels: int
    idle_count: int
    bulk_cap: float  # seconds a throughput run may take at most


FULL = Sizes(3, 2.0, 0.5, (1, 64, 512), 64, GiB, GiB, 16, 5000, 45.0)
QUICK = Sizes(1, 0.5, 0.2, (1, 64, 512), 64, 64 * MiB, 64 * MiB, 16, 500, 20.0)


@dataclass(frozen=True, slots=True)
class Case:
    scenario: str
    label: str
    need: str  # CONNECT, FORWARD, SOCKS5, or "tunnel" (CONNECT, else SOCKS5)
    conc: int = 1
    bulk: int = 0

    @property
    def key(self) -> str:
        return f"{self.scenario} {self.label}"


def cases(sizes: Sizes, scenarios: tuple[str, ...]) -> list[Case]:
    out: list[Case] = []
    if "connect_rate" in scenarios:
        out += [Case("connect_rate", f"c={c}", CONNECT, c) for c in sizes.concurrency]
    if "forward_rps" in scenarios:
        out.append(Case("forward_rps", f"c={sizes.forward_conc}", FORWARD, sizes.forward_conc))
    if "socks5_rate" in scenarios:
        out += [Case("socks5_rate", f"c={c}", SOCKS5, c) for c in sizes.concurrency]
    if "tunnel_throughput" in scenarios:
        one, many, n = sizes.bulk_one, sizes.bulk_many, sizes.many_tunnels
        out.append(Case("tunnel_throughput", f"1 tunnel, {_size(one)} each way", "tunnel", 1, one))
        out.append(
            Case(
                "tunnel_throughput",
                f"{n} tunnels, {_size(many)} each way in all",
                "tunnel",
                n,
                many // n,
            )
        )
    if "idle_tunnels" in scenarios:
        out.append(Case("idle_tunnels", f"{sizes.idle_count} tunnels", "tunnel", sizes.idle_count))
    return out


def _size(n: int) -> str:
    return f"{n // GiB} GiB" if n % GiB == 0 else f"{n // MiB} MiB"


def supports(target: Server, case: Case) -> bool:
    if case.need == "tunnel":
        return bool({CONNECT, SOCKS5} & target.caps)
    return case.need in target.caps


def _via(target: Server, case: Case) -> list[str]:
    if isinstance(target, Direct):
        return ["--via", "none"]
    if case.need == SOCKS5 or (case.need == "tunnel" and CONNECT not in target.caps):
        return ["--via", "socks5", "--proxy", f"127.0.0.1:{target.port}"]
    return ["--via", "http", "--proxy", f"127.0.0.1:{target.port}"]


@dataclass(slots=True)
class Runner:
    loadgen: Path
    origin: str  # host:port
    sizes: Sizes
    log: Callable[[str], None]
    restart: Callable[[Server], None]  # idle_tunnels: a fresh process per repetition
    results: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    crashes: list[str] = field(default_factory=list)

    def _argv(self, target: Server, case: Case) -> list[str]:
        s = self.sizes
        mode = {CONNECT: "connect", SOCKS5: "connect", FORWARD: "forward"}.get(case.need)
        if case.scenario == "tunnel_throughput":
            mode = "throughput"
        elif case.scenario == "idle_tunnels":
            mode = "idle"
        argv = [str(self.loadgen), str(mode), "--target", self.origin, *_via(target, case)]
        argv += ["--user", target.user, "--pass", target.password]
        sessions = getattr(target, "sessions", 0)  # exitgate's sessions variant
        if sessions and mode in ("connect", "forward"):
            argv += ["--sessions", str(sessions)]
        if mode in ("connect", "forward"):
            argv += ["-c", str(case.conc), "-d", str(s.seconds), "--warmup", str(s.warmup)]
            argv += ["--max-seconds", str(s.seconds + s.warmup + 30)]
        elif mode == "throughput":
            argv += ["-c", str(case.conc), "--bytes", str(case.bulk)]
            argv += ["--max-seconds", str(s.bulk_cap), "--timeout", "15"]
        else:
            argv += ["-n", str(case.conc), "-c", "256", "--hold", "60", "--max-seconds", "120"]
        return argv

    def warm(self, target: Server) -> None:
        """A short run first, so lazy imports and first-use caches are not measured."""
        case = Case("connect_rate", "warm", CONNECT if CONNECT in target.caps else SOCKS5, 8)
        argv = self._argv(target, case)
        argv[argv.index("-d") + 1] = "0.3"
        subprocess.run(argv, capture_output=True, timeout=60, check=False)

    def run_case(self, case: Case, targets: list[Server]) -> None:
        usable = [t for t in targets if supports(t, case)]
        per = self.results.setdefault(case.key, {})
        for rep in range(self.sizes.reps):
            for t in usable:
                if t.proc is not None and not t.proc.alive():
                    # A crashed target is restarted, and the crash is on the record.
                    self.log(f"{t.name} is not running; restarting it:\n{t.proc.tail(5)}")
                    self.crashes.append(f"{t.name} had exited before {case.key} rep {rep + 1}")
                    try:
                        self.restart(t)
                    except Exception as exc:
                        self.crashes.append(f"{t.name} did not restart: {one_line(exc)}")
                try:
                    sample = (
                        self._idle(t, case)
                        if case.scenario == "idle_tunnels"
                        else self._one(t, case)
                    )
                except Exception as exc:  # one target failing must not end the run
                    sample = {"run_failed": one_line(exc)}
                per.setdefault(t.name, []).append(sample)
                self.log(f"{case.key} rep {rep + 1}/{self.sizes.reps} {t.name}: {_brief(sample)}")

    def _one(self, target: Server, case: Case) -> dict[str, Any]:
        argv = self._argv(target, case)
        pids = target.pids()
        cpu0 = sum(cpu_seconds(p) for p in pids)
        t0 = time.monotonic()
        r = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
        wall = time.monotonic() - t0
        cpu = sum(cpu_seconds(p) for p in pids) - cpu0
        if r.returncode != 0 or not r.stdout.strip():
            return {"run_failed": f"loadgen rc={r.returncode}: {' '.join(r.stderr.split())[:300]}"}
        out: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
        out["wall"] = wall
        out["loadgen_cpu_pct"] = 100 * out.pop("cpu_s", 0.0) / wall if wall else None
        if pids:
            out["cpu_s"] = cpu
            if case.scenario == "tunnel_throughput":
                moved = out["bytes_up"] + out["bytes_down"]
                out["cpu_s_per_gb"] = cpu / (moved / 1e9) if moved else None
            elif out.get("completed"):
                # The loadgen's window excludes warm-up; CPU covers the whole run, so scale.
                done = out["completed"] * (wall / max(out["seconds"], 1e-9))
                out["cpu_ms_per_1k"] = cpu * 1e3 / (done / 1e3) if done else None
        return out

    def _idle(self, target: Server, case: Case) -> dict[str, Any]:
        if not isinstance(target, Direct):
            self.restart(target)
            self.warm(target)
            time.sleep(0.5)
        pids = target.pids()
        pss0 = sum(pss_kib(p) for p in pids)
        rss0 = sum(rss_kib(p) for p in pids)
        proc = subprocess.Popen(
            self._argv(target, case), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            ready = proc.stdout.readline()
            if not ready.startswith("READY "):
                raise RuntimeError(f"loadgen idle: {ready.strip()[:200]}")
            opened = json.loads(ready[6:])
            time.sleep(1.0)  # let the proxy finish its per-tunnel setup work
            pss1 = sum(pss_kib(p) for p in pids)
            rss1 = sum(rss_kib(p) for p in pids)
            proc.stdin.write("\n")
            proc.stdin.close()
            final = proc.stdout.read()
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out: dict[str, Any] = json.loads(final.strip().splitlines()[-1]) if final.strip() else {}
        out.update(opened)
        n = max(opened.get("open", 0), 1)
        if pids:
            out["pss_kib_before"], out["pss_kib_open"] = pss0, pss1
            out["rss_kib_before"], out["rss_kib_open"] = rss0, rss1
            out["kib_per_tunnel"] = (pss1 - pss0) / n
            out["rss_kib_per_tunnel"] = (rss1 - rss0) / n
        return out


def one_line(exc: BaseException) -> str:
    """The exception's type and the last line of its text (a traceback tail ends with the
    error itself), for one line of the report."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:300]


def _brief(s: dict[str, Any]) -> str:
    if "run_failed" in s:
        return "FAILED " + str(s["run_failed"])
    parts = []
    for k in (
        "rate",
        "p50_ms",
        "p99_ms",
        "mb_per_s",
        "cpu_s_per_gb",
        "kib_per_tunnel",
        "reconnects",
    ):
        v = s.get(k)
        if isinstance(v, (int, float)):
            parts.append(f"{k}={v:.4g}")
    errs = {k: v for k, v in s.get("errors", {}).items() if v}
    if errs:
        parts.append(f"errors={errs}")
    return " ".join(parts)
