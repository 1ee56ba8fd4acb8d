"""Before/after of one change to the connection path: two exitgates, interleaved.

    .venv/bin/python -m bench.cpu_ab --base HEAD~1 [--modes connect,socks5,forward]
                                      [--rounds 5] [--seconds 3] [-c 64]
                                      [--sessions N] [--limited]

"base" is the source tree at git revision `--base` (extracted with `git archive` into a
temporary directory and put first on PYTHONPATH); "new" is the working tree. `--base-src
DIR` and `--new-src DIR` run prepared trees instead, such as two compiled builds. Both run
from the project's venv with the same config and provisioning, against the same origin, round
by round in alternating order (A B, B A, ...), so a busy machine slows both alike. The figure
that matters is gateway CPU per unit (µs per tunnel or per forwarded request: user+system
of the gateway process over the whole run, divided by the units done in it); it moves far
less with other load on the machine than a rate does. Rates are printed too.

Needs bench/build/loadgen (`bench/run --setup-only`). Used for the figures in the commit
messages of issue 10's optimisations.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

from bench import install
from bench.gateway import ExitgateTarget, Instance
from bench.lab import lab, start_origin, tree_at
from bench.peers import CONNECT, FORWARD, SOCKS5
from bench.procs import raise_nofile
from bench.scenarios import FULL, Case, Runner

MODES = {"connect": CONNECT, "socks5": SOCKS5, "forward": FORWARD}
SCENARIO = {"connect": "connect_rate", "socks5": "socks5_rate", "forward": "forward_rps"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cpu_ab", description=__doc__)
    p.add_argument("--base", required=True, help="git revision to compare the working tree with")
    p.add_argument("--modes", default="connect,socks5,forward")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("-c", type=int, default=64)
    p.add_argument("--sessions", type=int, default=0, help="username sessions (loadgen)")
    p.add_argument(
        "--limited", action="store_true", help="use the package with rps and concurrency limits"
    )
    p.add_argument(
        "--base-src",
        default="",
        help="run 'base' from this source folder instead of --base (a compiled build)",
    )
    p.add_argument(
        "--new-src",
        default="",
        help="run 'new' from this source folder instead of the working tree (a compiled build)",
    )
    args = p.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    raise_nofile()
    install.loadgen()
    with lab("exitgate-ab-") as (work, started):
        base_src = args.base_src or str(tree_at(work, args.base))
        env = dict(os.environ, PYTHONPATH=base_src)
        origin = start_origin(work, started)
        targets = []
        new_env = dict(os.environ, PYTHONPATH=args.new_src) if args.new_src else None
        for name, e in (("base", env), ("new", new_env)):
            inst = Instance(name, work, env=e)
            inst.start()
            started.append(inst)
            inst.provision(None)
            t = ExitgateTarget(name, inst, "us", sessions=args.sessions, limited=args.limited)
            t.refresh()
            targets.append(t)
        sizes = dataclasses.replace(FULL, seconds=args.seconds, warmup=0.5)
        runner = Runner(install.LOADGEN, origin, sizes, log, lambda t: None)
        for t in targets:
            runner.warm(t)
        per: dict[tuple[str, str], list[dict[str, float]]] = {}
        for r in range(args.rounds):
            order = targets if r % 2 == 0 else targets[::-1]
            for mode in modes:
                case = Case(SCENARIO[mode], f"c={args.c}", MODES[mode], args.c)
                for t in order:
                    s = runner._one(t, case)
                    per.setdefault((mode, t.name), []).append(s)
                    log(
                        f"{mode} round {r + 1} {t.name}: rate={s.get('rate', 0):.0f} "
                        f"cpu_us={s.get('cpu_ms_per_1k', 0):.0f}"
                    )
        print(f"| mode (c={args.c}) | figure | base ({args.base}) | new | new ÷ base |")
        print("|---|---|---:|---:|---:|")
        for mode in modes:
            for metric, label in (
                ("cpu_ms_per_1k", "gateway CPU µs per unit"),
                ("rate", "units/s"),
            ):
                b = statistics.median(float(s.get(metric) or 0) for s in per[(mode, "base")])
                n = statistics.median(float(s.get(metric) or 0) for s in per[(mode, "new")])
                ratio = f"{n / b:.3f}" if b else "n/a"
                print(f"| {mode} | {label} | {b:.0f} | {n:.0f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
