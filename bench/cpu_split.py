"""User against system CPU per tunnel, per thread: exitgate and the floor, one after the other.

    .venv/bin/python -m bench.cpu_split [--mode connect|socks5] [-c 64] [--seconds 5]
                                        [--src DIR] [--rounds 1] [--python EXE]

The instruction counts of `bench/instr.py` see user space only; this splits a tunnel's CPU
into user and system time. The proxy is pinned to core 0 and the load generator to core 1
(`taskset`), so whatever runs on the proxy's core is charged to it, as in a deployment that
gives the proxy its own core. For each proxy: a 1 s warm-up, then `--seconds` of load, with
`utime` and `stime` of every thread (`/proc/PID/task/*/stat`) and the host's TCP counters
(`/proc/net/snmp`) read before and after; each is divided by the tunnels done. Equal
segment counts mean the kernel did the same work for both proxies; a difference in system
time then is where it was charged (a saturated core pays for the softirq work that lands
on it), not what the proxy asked for.

`--src DIR` runs exitgate from DIR (first on PYTHONPATH): a compiled build, say
`.venv/bin/python -c "from bench import install; print(install.compiled_tree())"`. Needs
`--python EXE` runs both proxies under another interpreter (the python of a venv where
exitgate and uvloop are installed), to set one CPython build against another: exitgate's
script is handed to EXE, and exitgate is imported from EXE's environment. Needs
bench/build/loadgen (`bench/run --setup-only`) and `taskset`. Used for ANALYSIS.md's
seventh and eighth passes on issue 10.
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
from bench.lab import lab, start_origin
from bench.peers import PASS, USER
from bench.procs import Proc, free_port, raise_nofile, wait_port

TICK = os.sysconf("SC_CLK_TCK")
SEGMENTS = ("OutSegs", "InSegs", "RetransSegs", "ActiveOpens", "PassiveOpens", "OutRsts")


def thread_times(pid: int) -> dict[tuple[str, str], tuple[float, float]]:
    """(thread id, name) → (user s, system s) for every thread of `pid`."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[(tid, name)] = (int(fields[11]) / TICK, int(fields[12]) / TICK)
    return out


def tcp_counters() -> dict[str, int]:
    rows = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()]
    names, values = (r for r in rows if r[0] == "Tcp:")
    return dict(zip(names[1:], map(int, values[1:]), strict=True))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cpu_split", description=__doc__)
    p.add_argument("--mode", choices=("connect", "socks5"), default="connect")
    p.add_argument("-c", type=int, default=64)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--src", default="", help="run exitgate from this folder (a compiled build)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--python", default="", help="run both proxies under this interpreter")
    args = p.parse_args(argv)
    if shutil.which("taskset") is None:
        sys.exit("taskset not found")
    raise_nofile()
    install.loadgen()
    via = "http" if args.mode == "connect" else "socks5"
    with lab("exitgate-split-") as (work, started):
        target = start_origin(work, started)
        env = dict(os.environ, PYTHONPATH=args.src) if args.src else None
        python = args.python or sys.executable
        inst = Instance("exitgate", work, env=env, prefix=(args.python,) if args.python else ())
        inst.start()
        started.append(inst)
        inst.provision(None)
        assert inst.proc is not None
        floor_port = free_port()
        floor_py = Path(__file__).with_name("floorproxy.py")
        floor = Proc(
            "floor",
            [python, str(floor_py), str(floor_port), USER, PASS],
            work / "floor.log",
        )
        floor.start()
        started.append(floor)
        if not wait_port(floor_port, 10, floor.popen):
            sys.exit(f"the floor did not start: {floor.tail()}")
        proxies = [
            ("exitgate", inst.proxy_port, inst.proc.pid, inst.key),
            ("floor", floor_port, floor.pid, PASS),
        ]

        def load(port: int, password: str, seconds: float) -> dict[str, float]:
            argv = [
                "taskset", "-c", "1", str(install.LOADGEN), "connect",
                "--proxy", f"127.0.0.1:{port}", "--via", via, "--target", target,
                "--user", USER, "--pass", password, "-c", str(args.c),
                "-d", str(seconds), "--warmup", "0",
            ]  # fmt: skip
            r = subprocess.run(
                argv, capture_output=True, text=True, timeout=seconds + 60, check=False
            )
            if r.returncode != 0 or not r.stdout.strip():
                sys.exit(f"loadgen failed: {r.stderr.strip()[:300]}")
            result: dict[str, float] = json.loads(r.stdout.strip().splitlines()[-1])
            return result

        print("| round | proxy | units/s | thread | user µs/unit | system µs/unit |")
        print("|---|---|---:|---|---:|---:|")
        for rnd in range(1, args.rounds + 1):
            for name, port, pid, password in proxies:
                subprocess.run(
                    ["taskset", "-a", "-p", "-c", "0", str(pid)], capture_output=True, check=True
                )
                load(port, password, 1.0)
                before, tcp0 = thread_times(pid), tcp_counters()
                done = load(port, password, args.seconds)["completed"]
                after, tcp1 = thread_times(pid), tcp_counters()
                if not done:
                    sys.exit(f"{name}: no tunnel completed")
                rate = done / args.seconds
                for key, (user1, sys1) in sorted(after.items()):
                    user0, sys0 = before.get(key, (0.0, 0.0))
                    user, system = 1e6 * (user1 - user0) / done, 1e6 * (sys1 - sys0) / done
                    if user + system >= 0.05:
                        print(
                            f"| {rnd} | {name} | {rate:,.0f} | {key[1]} | "
                            f"{user:.1f} | {system:.1f} |"
                        )
                per = {k: (tcp1[k] - tcp0[k]) / done for k in SEGMENTS}
                print(
                    f"<!-- {name} round {rnd}, per unit: "
                    + ", ".join(f"{k} {v:.2f}" for k, v in per.items())
                    + " -->"
                )
                time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
