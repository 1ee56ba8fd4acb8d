"""RESULTS.md: figures only. Medians over repetitions, spread as half the range.

    .venv/bin/python -m bench.report [bench/RESULTS.json] [--out bench/RESULTS.md]

renders a report again from the raw JSON a run wrote beside it: after ANALYSIS.md (which the
report ends with) or this renderer changed, without measuring anything again.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

NA = "n/a"
NO_RATIO = frozenset({"loadgen_cpu_pct"})  # a property of the client, not of the proxy
Results = dict[str, dict[str, list[dict[str, Any]]]]

RATE = [
    ("rate", "{unit}/s"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
    ("cpu_ms_per_1k", "gateway CPU ms per 1,000"),
    ("loadgen_cpu_pct", "load generator CPU % of one core"),
]
METRICS: dict[str, list[tuple[str, str]]] = {
    "connect_rate": [(k, u.format(unit="tunnels")) for k, u in RATE],
    "forward_rps": [(k, u.format(unit="req")) for k, u in RATE],
    "socks5_rate": [(k, u.format(unit="tunnels")) for k, u in RATE],
    "tunnel_throughput": [
        ("mb_per_s", "MB/s, both directions"),
        ("cpu_s_per_gb", "gateway CPU s per GB"),
        ("loadgen_cpu_pct", "load generator CPU % of one core"),
    ],
    "idle_tunnels": [
        ("kib_per_tunnel", "gateway PSS KiB per tunnel"),
        ("rss_kib_per_tunnel", "gateway RSS KiB per tunnel"),
        ("open_seconds", "s to open all"),
    ],
}


def _values(samples: list[dict[str, Any]], metric: str) -> list[float]:
    out = []
    for s in samples:
        v = s.get(metric)
        if "run_failed" not in s and isinstance(v, (int, float)):
            out.append(float(v))
    return out


def median(samples: list[dict[str, Any]], metric: str) -> float | None:
    vals = _values(samples, metric)
    return statistics.median(vals) if vals else None


def _num(v: float) -> str:
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def cell(samples: list[dict[str, Any]] | None, metric: str) -> str:
    if not samples:
        return NA
    vals = _values(samples, metric)
    if not vals:
        return "failed" if any("run_failed" in s for s in samples) else NA
    m = statistics.median(vals)
    text = _num(m)
    if len(vals) > 1 and m:
        text += f" ±{(max(vals) - min(vals)) / 2 / abs(m) * 100:.0f}%"
    if len(vals) < len(samples):
        text += f" ({len(samples) - len(vals)} failed)"
    return text


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return NA
    return f"{a / b:.2f}"


def table(
    results: Results, base: str, columns: list[str], ratio_to: list[str], ratio_label: str
) -> list[str]:
    head = ["scenario", "figure", *columns, *[f"{ratio_label} ÷ {c}" for c in ratio_to]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for case_key, per in results.items():
        scenario = case_key.split(" ", 1)[0]
        for metric, unit in METRICS.get(scenario, []):
            if not any(_values(per.get(c, []), metric) for c in columns):
                continue
            row = [case_key, unit, *[cell(per.get(c), metric) for c in columns]]
            mine = median(per.get(base, []), metric)
            if metric in NO_RATIO:
                row += [""] * len(ratio_to)
            else:
                row += [ratio(mine, median(per.get(c, []), metric)) for c in ratio_to]
            lines.append("| " + " | ".join(row) + " |")
    return lines


def problems(results: Results) -> list[str]:
    lines = []
    for case_key, per in results.items():
        for target, samples in per.items():
            failed = [s["run_failed"] for s in samples if "run_failed" in s]
            errs: dict[str, int] = {}
            reconnects = 0
            for s in samples:
                for k, v in s.get("errors", {}).items():
                    errs[k] = errs.get(k, 0) + int(v)
                reconnects += int(s.get("reconnects", 0) or 0)
                for k in ("failed", "dropped_during_hold"):
                    if isinstance(s.get(k), int) and s[k]:
                        errs[f"idle {k}"] = errs.get(f"idle {k}", 0) + s[k]
                if isinstance(s.get("tunnels"), int) and s.get("tunnels_ok", 0) < s["tunnels"]:
                    errs["unfinished tunnels"] = errs.get("unfinished tunnels", 0) + (
                        s["tunnels"] - s.get("tunnels_ok", 0)
                    )
                if (
                    "alive_after_hold" in s
                    and s.get("answered_after_hold") != s["alive_after_hold"]
                ):
                    errs["idle unanswered"] = errs.get("idle unanswered", 0) + (
                        s["alive_after_hold"] - s.get("answered_after_hold", 0)
                    )
            errs = {k: v for k, v in errs.items() if v}
            if failed or errs or reconnects:
                parts = []
                if errs:
                    parts.append("errors " + ", ".join(f"{k} {v}" for k, v in sorted(errs.items())))
                if reconnects:
                    parts.append(f"{reconnects} reconnects (server closed a kept-alive connection)")
                if failed:
                    parts.append(f"{len(failed)} failed runs: {failed[0]}")
                lines.append(f"- {case_key}, {target}: " + "; ".join(parts))
    return lines


def render(results: Results, meta: dict[str, Any]) -> str:
    peers: list[str] = meta["peers"]
    variants: list[str] = meta["variants"]
    has_eg = "exitgate" in meta["targets"]
    out = [
        "# exitgate benchmark results",
        "",
        f"Generated by `{meta['command']}` on {meta['date']}; "
        f"{meta['reps']} repetition(s) per cell, interleaved across targets. "
        "Method and scenario definitions: [README.md](README.md).",
        "",
        "Cells: median ±half the range between the lowest and highest repetition, as % of the "
        "median. Ratio columns: exitgate's median ÷ the other column's median (for every figure, "
        "including latency, CPU and memory). 'n/a': the target does not speak that protocol, or "
        "was not run.",
        "",
        "## Machine",
        "",
    ]
    out += [f"- {k}: {v}" for k, v in meta["machine"].items()]
    out += ["", "## Software", ""]
    out += [f"- {name}: {ver}" for name, ver in meta["versions"].items()]
    if meta.get("notes"):
        out += ["", "## Run notes", ""]
        out += [f"- {n}" for n in meta["notes"]]
    cols = (["exitgate"] if has_eg else []) + peers + ["direct"]
    out += ["", "## exitgate and the comparison proxies", ""]
    if has_eg:
        out += table(results, "exitgate", cols, [*peers, "direct"], "exitgate")
    else:
        out += table(results, "direct", cols, [], "")
    if has_eg and variants:
        out += [
            "",
            "## exitgate variants",
            "",
            "Same scenarios; 'exitgate' is the direct exit with metering on. CPU and memory are "
            "the gateway's (and the agent's, for the agent exit); the upstream proxy's are not "
            "counted.",
            "",
        ]
        out += table(results, "exitgate", ["exitgate", *variants], variants, "exitgate")
    if has_eg:
        from bench.targets import render_issue10, render_targets

        out += ["", "## Issue 10's table", ""]
        out += render_issue10(results)
        out += ["", "## Targets (issues 6 and 10)", ""]
        out += render_targets(results)
    probs = problems(results)
    out += ["", "## Errors and reconnects", ""]
    out += probs or ["- none"]
    if meta.get("select"):
        out += [
            "",
            "## Node selection (bench/select_bench.py)",
            "",
            "```",
            meta["select"].rstrip(),
            "```",
        ]
    out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__)
    p.add_argument("raw", nargs="?", type=Path, default=Path(__file__).with_name("RESULTS.json"))
    p.add_argument("--out", type=Path, help="the report (default: RAW with .md)")
    args = p.parse_args(argv)
    raw = json.loads(args.raw.read_text())
    out: Path = args.out or args.raw.with_suffix(".md")
    out.write_text(render(raw["results"], raw["meta"]))
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
