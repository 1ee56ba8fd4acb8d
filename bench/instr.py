"""Instructions per tunnel (or per forwarded request), counted by valgrind's callgrind.

    .venv/bin/python -m bench.instr [--targets exitgate,floor] [--base REV]
                                    [--modes connect,socks5,forward] [--seconds 20] [-c 8]

Each proxy runs under `valgrind --tool=callgrind` (all at once; they are loaded one after
another). After a warm-up its counters are zeroed (`callgrind_control -z`), the load
generator runs for `--seconds`, and the counters are dumped (`callgrind_control -d`); then
the same for as long with no load. (Instructions under load - instructions idle) / units
the load generator completed, for the main thread (the event loop, where every unit's work
runs; a background thread's per-second work would be charged ~30 times over, see `total`).
Unlike CPU time this does not move with other load on the machine, so it gives a
before/after or exitgate/floor ratio while the machine is busy. It is not time: a cache
miss or a system call costs more than an instruction, and kernel work is not counted
(callgrind sees user space only), so the ratio of instructions is a ratio of the proxies'
own user-space work.

Targets: `exitgate` (the working tree), `base` (the tree at `--base REV`, via PYTHONPATH),
`src:DIR` (the source tree in DIR, via PYTHONPATH: a compiled build; named `srcN` by its
place in the list, so a before and an after can run together), `floor`
(bench/floorproxy.py). Needs valgrind and bench/build/loadgen.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench import install
from bench.gateway import Instance
from bench.lab import lab, start_origin, tree_at
from bench.peers import PASS, USER
from bench.procs import Proc, free_port, raise_nofile, wait_port

VIA = {
    "connect": ("connect", "http"),
    "socks5": ("connect", "socks5"),
    "forward": ("forward", "http"),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def callgrind(work: Path, name: str) -> list[str]:
    return [
        "valgrind", "--tool=callgrind", "--dump-instr=no", "--compress-strings=no",
        "--separate-threads=yes",
        f"--callgrind-out-file={work}/callgrind.{name}.%p",
    ]  # fmt: skip


def total(dump_dir: Path, name: str, pid: int, before: set[Path]) -> int:
    """The instruction count of the newest dump of `pid`'s main thread (its 'summary:' or
    'totals:' line). Threads are dumped apart (`-01` is the main thread): the usage
    flusher's thread does a fixed amount of work per second, and under callgrind a second
    holds ~30 times fewer units than at full speed, so counting it would charge each unit
    ~30 times its share (about 100k instructions per tunnel)."""
    dumps = sorted(p for p in set(dump_dir.glob(f"callgrind.{name}.{pid}*")) - before
                   if p.name.endswith("-01"))  # fmt: skip
    for dump in reversed(dumps):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"no callgrind dump for {name} ({pid})")


def control(flag: str, pid: int) -> None:
    """callgrind_control -z (zero the counters) or -d (dump them), and wait for it."""
    subprocess.run(["callgrind_control", flag, str(pid)], capture_output=True, check=False)
    time.sleep(0.5)  # the dump is written by the process at its next instrumented point


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.instr", description=__doc__)
    p.add_argument("--targets", default="exitgate,floor")
    p.add_argument("--base", default="HEAD", help="revision for the 'base' target")
    p.add_argument("--modes", default="connect,socks5,forward")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("-c", type=int, default=8)
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the dumps (callgrind_annotate FILE) and print where",
    )
    args = p.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind not found (apt-get install valgrind)")
    raise_nofile()
    install.loadgen()
    with lab("exitgate-instr-", keep=args.keep) as (work, started):
        work.chmod(0o777)
        if args.keep:
            log(f"dumps will be kept in {work} (callgrind_annotate FILE)")
        servers: dict[str, tuple[int, str, str, int]] = {}  # name → port, user, password, pid
        target = start_origin(work, started)
        for i, spec in enumerate(args.targets.split(",")):
            # several prepared trees (before/after compiled builds) get names of their own
            name = f"src{i}" if spec.startswith("src:") else spec
            if name == "floor":
                port = free_port()
                script = install.BENCH / "floorproxy.py"
                python = install.ROOT / ".venv" / "bin" / "python"
                proc = Proc("floor", [*callgrind(work, name), str(python), str(script),
                                      str(port), USER, PASS], work / "floor.log")  # fmt: skip
                proc.start()
                started.append(proc)
                if not wait_port(port, 300, proc.popen):
                    raise SystemExit(f"floor did not start: {proc.tail()}")
                servers[name] = (port, USER, PASS, proc.pid)
                continue
            env = None
            if name.startswith("src"):  # a prepared source tree (a compiled build)
                env = dict(os.environ, PYTHONPATH=spec.removeprefix("src:"))
            elif name == "base":
                env = dict(os.environ, PYTHONPATH=str(tree_at(work, args.base)))
            inst = Instance(name, work, env=env, prefix=tuple(callgrind(work, name)))
            inst.start(timeout=600)
            started.append(inst)
            inst.provision(None)
            assert inst.proc is not None
            servers[name] = (inst.proxy_port, "country-us", inst.key, inst.proc.pid)
        log("started: " + ", ".join(servers))

        def load(name: str, mode: str, seconds: float) -> dict[str, object]:
            port, user, password, _ = servers[name]
            kind, via = VIA[mode]
            argv = [str(install.LOADGEN), kind, "--target", target, "--via", via,
                    "--proxy", f"127.0.0.1:{port}", "--user", user, "--pass", password,
                    "-c", str(args.c), "-d", str(seconds), "--warmup", "0",
                    "--timeout", "30", "--max-seconds", str(seconds + 60)]  # fmt: skip
            out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
            return dict(json.loads(out.strip().splitlines()[-1]))

        rows = []
        for mode in args.modes.split(","):
            jobs = [n for n in servers if not (mode == "forward" and n == "floor")]
            for n in jobs:
                load(n, mode, 3.0)  # warm: imports, first-use caches
            for n in jobs:
                pid = servers[n][3]
                # the load, then as long idle: what the process does anyway (timers, the
                # usage flush, the admin server) is taken out of the per-unit figure
                before = set(work.glob("callgrind.*"))
                control("-z", pid)
                units = int(load(n, mode, args.seconds).get("completed", 0))  # type: ignore[call-overload]
                control("-d", pid)
                loaded = total(work, n, pid, before)
                before = set(work.glob("callgrind.*"))
                control("-z", pid)
                time.sleep(args.seconds)
                control("-d", pid)
                idle = total(work, n, pid, before)
                per = (loaded - idle) / units if units else float("nan")
                rows.append((mode, n, units, per, idle / args.seconds))
                log(
                    f"{mode} {n}: {units} units, {per:,.0f} instructions per unit "
                    f"(idle {idle / args.seconds:,.0f}/s taken out)"
                )
        print(f"| mode (c={args.c}) | target | units | instructions per unit | idle per s |")
        print("|---|---|---:|---:|---:|")
        for mode, n, units, per, idle_rate in rows:
            print(f"| {mode} | {n} | {units} | {per:,.0f} | {idle_rate:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
