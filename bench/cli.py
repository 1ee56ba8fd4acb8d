"""`python -m bench`: set up, start everything on loopback, run the scenarios, write the report."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import install
from bench.gateway import ExitgateTarget, GatewayUnavailable, Instance
from bench.lab import origin_port
from bench.peers import PEERS, Server, Squid
from bench.procs import Proc, raise_nofile
from bench.report import render
from bench.scenarios import FULL, QUICK, SCENARIOS, Direct, Runner, cases, one_line

VARIANTS = ("compiled", "metering_off", "upstream", "agent", "sessions", "limits")
SESSIONS = 10_000  # issue 10: distinct session-... usernames, each reused
VARIANT_NAMES = {
    "compiled": "exitgate compiled",
    "sessions": "exitgate sessions",
    "limits": "exitgate limits",
    "metering_off": "exitgate metering off",
    "upstream": "exitgate upstream exit (squid)",
    "agent": "exitgate agent exit",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _list(value: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    if value in ("", "none"):
        return ()
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [v for v in items if v not in allowed]
    if bad:
        raise SystemExit(f"unknown {what}: {', '.join(bad)} (choose from {', '.join(allowed)})")
    return items


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 1 rep, short windows, small sizes"
    )
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma list (default: all)")
    p.add_argument("--peers", default=",".join(PEERS), help="comma list, or 'none' (default: all)")
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="exitgate variants: compiled, metering_off, upstream, agent, sessions, limits, "
        "or 'none'",
    )
    p.add_argument("--no-exitgate", action="store_true", help="peers and direct only")
    p.add_argument("--no-select", action="store_true", help="skip bench/select_bench.py")
    p.add_argument("--reps", type=int, help="repetitions per cell (default 3, --quick 1)")
    p.add_argument("--seconds", type=float, help="measuring window of rate scenarios")
    p.add_argument(
        "--idle-count",
        type=int,
        help="idle_tunnels: tunnels to hold (default 5000; one client to one proxy port is "
        "bounded by the ephemeral port range, ~28,000 by default)",
    )
    p.add_argument("--no-setup", action="store_true", help="do not install or build anything")
    p.add_argument("--setup-only", action="store_true", help="install and build, then stop")
    p.add_argument("--out", type=Path, help="report path (default bench/RESULTS.md for a full run)")
    p.add_argument(
        "--profile",
        metavar="SVG",
        type=Path,
        help="py-spy record the main exitgate process into this flame graph",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    return p.parse_args(argv)


def machine() -> dict[str, str]:
    def read(path: str) -> str:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return "?"

    model = "?"
    for line in read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = read("/proc/meminfo").splitlines()[0].split()[1:2]
    gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True, check=False)
    import resource

    return {
        "nproc": str(os.cpu_count()),
        "CPU": model,
        "memory": f"{int(mem[0]) // 1024 // 1024} GiB" if mem else "?",
        "kernel": platform.release(),
        "Python": platform.python_version(),
        "gcc (load generator)": gcc.stdout.splitlines()[0] if gcc.stdout else "?",
        "descriptor limit (ulimit -n)": str(resource.getrlimit(resource.RLIMIT_NOFILE)[0]),
        "net.core.somaxconn": read("/proc/sys/net/core/somaxconn"),
        "net.ipv4.tcp_tw_reuse": read("/proc/sys/net/ipv4/tcp_tw_reuse"),
        "net.ipv4.ip_local_port_range": read("/proc/sys/net/ipv4/ip_local_port_range").replace(
            "\t", "-"
        ),
    }


def run_select(quick: bool) -> str:
    script = install.BENCH / "select_bench.py"
    if not script.exists():
        return "bench/select_bench.py not present"
    argv = [str(install.ROOT / ".venv" / "bin" / "python"), str(script)]
    if quick:
        argv += ["--sizes", "1000,100000", "--picks", "2000"]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    except subprocess.TimeoutExpired:
        return "select_bench.py: stopped after 300 s"
    if r.returncode != 0:
        return f"select_bench.py exited {r.returncode}:\n{r.stderr.strip()[-1500:]}"
    return r.stdout


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    scenarios = _list(args.scenarios, SCENARIOS, "scenario")
    peer_names = _list(args.peers, tuple(PEERS), "peer")
    variants = () if args.no_exitgate else _list(args.variants, VARIANTS, "variant")
    sizes = QUICK if args.quick else FULL
    if args.reps:
        sizes = dataclasses.replace(sizes, reps=args.reps)
    if args.seconds:
        sizes = dataclasses.replace(sizes, seconds=args.seconds)
    if args.idle_count:
        sizes = dataclasses.replace(sizes, idle_count=args.idle_count)
    nofile = raise_nofile(2 * sizes.idle_count + 2000)
    if nofile < 2 * sizes.idle_count + 2000:
        log(f"warning: descriptor limit {nofile} is low for {sizes.idle_count} idle tunnels")
    if not args.no_setup:
        install.setup(peers=bool(peer_names) or "upstream" in variants)
    if args.setup_only:
        return 0
    loadgen = install.LOADGEN
    if not loadgen.exists():
        raise SystemExit(f"{loadgen} missing: run without --no-setup once")

    started = time.monotonic()
    load_before = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="exitgate-bench-"))
    workdir.chmod(0o777)  # squid and tinyproxy drop privileges and write there
    notes: list[str] = []
    stoppables: list[Any] = []
    profiler: Proc | None = None
    meta: dict[str, Any] = {}
    runner: Runner | None = None
    try:
        origin = Proc(
            "origin", [str(loadgen), "origin", "--max-seconds", "2400"], workdir / "origin.log"
        )
        origin.start()
        stoppables.append(origin)
        port = origin_port(origin)
        log(f"origin on 127.0.0.1:{port}; work dir {workdir}")

        peers: list[Server] = []
        for name in peer_names:
            server = PEERS[name]()
            try:
                server.start(workdir)
                stoppables.append(server)
                peers.append(server)
                log(f"{name} on 127.0.0.1:{server.port}")
            except Exception as exc:
                notes.append(f"{name} did not start: {one_line(exc)}")
                log(f"{name} did not start: {exc}")

        eg_targets: list[ExitgateTarget] = []
        instances: list[Instance] = []
        if not args.no_exitgate:
            eg_targets, instances, upstream = _start_exitgate(workdir, variants, peers, notes)
            stoppables += instances
            if upstream is not None:
                stoppables.append(upstream)
            if args.profile and instances:
                profiler = _profile(instances[0], args.profile, notes)

        direct = Direct()
        targets: list[Server] = [*eg_targets, *peers, direct]

        def restart(target: Server) -> None:
            if isinstance(target, ExitgateTarget):
                inst = target.instance
                had_agent = inst.agent is not None
                inst.stop()
                inst.start()
                if had_agent:
                    inst.start_agent()
                for t in eg_targets:
                    if t.instance is inst:
                        t.refresh()
            else:
                target.stop()
                target.start(workdir)

        runner = Runner(loadgen, f"127.0.0.1:{port}", sizes, log, restart)
        for t in targets:
            runner.warm(t)
        for case in cases(sizes, scenarios):
            runner.run_case(case, targets)
        select = ""
        if not args.no_select:
            log("bench/select_bench.py")
            select = run_select(args.quick)
        versions = {t.name: f"{t.version()} ({t.lang})" for t in [*eg_targets[:1], *peers]}
        versions["load generator"] = "bench/loadgen.c, gcc -O2, one thread, epoll"
        meta = {
            "command": _command(args),
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "reps": sizes.reps,
            "machine": machine(),
            "versions": versions,
            "peers": [p.name for p in peers],
            "variants": [t.name for t in eg_targets[1:]],
            "targets": [t.name for t in targets],
            "notes": [
                *notes,
                *runner.crashes,
                f"whole run: {time.monotonic() - started:.0f} s",
                f"1-minute load average before the run {load_before:.2f}, after "
                f"{os.getloadavg()[0]:.2f} (any other work on the machine shares its cores)",
            ],
            "select": select,
        }
    finally:
        if profiler is not None and instances:
            instances[0].stop()  # py-spy writes its file when the process it watches ends
            with contextlib.suppress(subprocess.TimeoutExpired):
                profiler.popen.wait(30) if profiler.popen else None
            profiler.stop()
        for s in reversed(stoppables):
            s.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"work dir kept: {workdir}")
    assert runner is not None
    out = args.out or _default_out(args, scenarios, peer_names, variants)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(runner.results, meta))
    out.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "results": runner.results}, indent=1, default=str)
    )
    log(f"report: {out} (raw: {out.with_suffix('.json')})")
    return 0


def _start_exitgate(
    workdir: Path, variants: tuple[str, ...], peers: list[Server], notes: list[str]
) -> tuple[list[ExitgateTarget], list[Instance], Server | None]:
    targets: list[ExitgateTarget] = []
    instances: list[Instance] = []
    upstream: Server | None = None
    main_inst = Instance("main", workdir)
    try:
        main_inst.start()
    except GatewayUnavailable as exc:
        notes.append(f"exitgate not measured: {one_line(exc)}")
        log(f"exitgate not measured: {exc}")
        return targets, instances, None
    instances.append(main_inst)
    upstream_url = None
    if "upstream" in variants:
        squid = next((p for p in peers if isinstance(p, Squid)), None)
        if squid is None:  # not a column, but still the upstream exit's proxy
            squid = Squid()
            squid.start(workdir)
            upstream = squid
        upstream_url = f"http://{squid.user}:{squid.password}@127.0.0.1:{squid.port}"
    try:
        main_inst.provision(upstream_url)
    except GatewayUnavailable as exc:
        notes.append(f"exitgate not measured: {one_line(exc)}")
        log(f"exitgate not measured: {exc}")
        return [], instances, upstream
    targets.append(ExitgateTarget("exitgate", main_inst, "us"))
    if "compiled" in variants:
        try:
            tree = install.compiled_tree()
            inst = Instance("compiled", workdir, env=dict(os.environ, PYTHONPATH=str(tree)))
            inst.start()
            instances.append(inst)
            inst.provision(upstream_url)
            targets.append(ExitgateTarget(VARIANT_NAMES["compiled"], inst, "us"))
        except (GatewayUnavailable, subprocess.CalledProcessError) as exc:
            notes.append(f"compiled variant skipped: {one_line(exc)}")
            log(f"compiled variant skipped: {exc}")
    if "metering_off" in variants:
        inst = Instance("nometer", workdir, metering=False)
        try:
            inst.start()
            inst.provision(None)
            instances.append(inst)
            targets.append(ExitgateTarget(VARIANT_NAMES["metering_off"], inst, "us"))
        except GatewayUnavailable as exc:
            lines = str(exc).splitlines()
            why = next((ln.strip() for ln in lines if "metering" in ln), one_line(exc))
            notes.append(f"metering-off variant skipped: {why}")
            inst.stop()
    if "sessions" in variants:
        targets.append(
            ExitgateTarget(VARIANT_NAMES["sessions"], main_inst, "us", sessions=SESSIONS)
        )
    if "limits" in variants:
        targets.append(ExitgateTarget(VARIANT_NAMES["limits"], main_inst, "us", limited=True))
    if "upstream" in variants:
        targets.append(ExitgateTarget(VARIANT_NAMES["upstream"], main_inst, "de"))
    if "agent" in variants:
        if main_inst.start_agent():
            targets.append(ExitgateTarget(VARIANT_NAMES["agent"], main_inst, "jp", with_agent=True))
        else:
            notes.append("agent-exit variant skipped: `exitgate agent` not available or not online")
    for t in targets:
        t.refresh()
    log("exitgate: " + ", ".join(t.name for t in targets))
    return targets, instances, upstream


def _profile(inst: Instance, svg: Path, notes: list[str]) -> Proc | None:
    spy = install.PEERS_VENV / "bin" / "py-spy"
    if not spy.exists():
        subprocess.run(
            [str(install.PEERS_VENV / "bin" / "pip"), "install", "-q", "py-spy"], check=False
        )
    if not spy.exists() or inst.proc is None:
        notes.append("profile: py-spy not available")
        return None
    svg.parent.mkdir(parents=True, exist_ok=True)
    proc = Proc(
        "py-spy",
        [
            str(spy),
            "record",
            "--pid",
            str(inst.proc.pid),
            "--rate",
            "250",
            "--format",
            # .txt: collapsed stacks (grep-able), .json: speedscope, else an SVG flame graph
            {".txt": "raw", ".json": "speedscope"}.get(svg.suffix, "flamegraph"),
            "--output",
            str(svg.resolve()),
        ],
        svg.with_suffix(".log"),
    )
    proc.start()
    notes.append(f"profiled with py-spy into {svg} (the profiler costs the gateway CPU)")
    return proc


def _command(args: argparse.Namespace) -> str:
    return "bench/run " + " ".join(sys.argv[1:]) if len(sys.argv) > 1 else "bench/run"


def _default_out(
    args: argparse.Namespace,
    scenarios: tuple[str, ...],
    peers: tuple[str, ...],
    variants: tuple[str, ...],
) -> Path:
    full = (
        not args.quick
        and set(scenarios) == set(SCENARIOS)
        and set(peers) == set(PEERS)
        and set(variants) == set(VARIANTS)
        and not args.no_exitgate
        and not args.reps
        and not args.seconds
        and not args.idle_count
        and not args.profile
    )
    if full:
        return install.BENCH / "RESULTS.md"
    return install.BUILD / ("RESULTS-quick.md" if args.quick else "RESULTS-partial.md")


if __name__ == "__main__":
    sys.exit(main())
