# ruff: noqa: RUF001  (the report prints multiplication and comparison signs on purpose)
"""The issue's performance targets, checked against one run's medians (for RESULTS.md).

Each target is a ratio measured in the same run; "met" is computed, never typed. The reasons
for a miss and what would close it are hand-written in bench/ANALYSIS.md, which the report
includes after this table.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.report import Results, median

ANALYSIS = Path(__file__).with_name("ANALYSIS.md")


@dataclass(frozen=True)
class Target:
    name: str
    case: str
    metric: str
    other: str  # the column compared with, or "" for an absolute bound
    bound: float  # required ratio (or absolute value)
    higher_is_better: bool = True
    mine: str = "exitgate"  # the column measured (a variant, for the sessions/limits targets)


_SOURCE_TARGETS = [
    # issue 10: the connection path against the Python floor (bench/floorproxy.py)
    Target(
        "CONNECT CPU per tunnel c=64 ≤ 1.3× floor",
        "connect_rate c=64",
        "cpu_ms_per_1k",
        "floor",
        1.3,
        higher_is_better=False,
    ),
    Target("CONNECT tunnels/s c=64 ≥ 1.0× squid", "connect_rate c=64", "rate", "squid", 1.0),
    Target(
        "(stretch) CONNECT c=64 ≥ 1.0× tinyproxy", "connect_rate c=64", "rate", "tinyproxy", 1.0
    ),
    Target("SOCKS5 tunnels/s c=64 ≥ 0.8× floor", "socks5_rate c=64", "rate", "floor", 0.8),
    Target("forward req/s c=64 ≥ 1.0× squid", "forward_rps c=64", "rate", "squid", 1.0),
    Target("(stretch) forward c=64 ≥ 1.5× squid", "forward_rps c=64", "rate", "squid", 1.5),
    Target(
        "sessions: CONNECT c=64 within 15% of sessionless",
        "connect_rate c=64",
        "rate",
        "exitgate",
        0.85,
        mine="exitgate sessions",
    ),
    Target(
        "sessions: SOCKS5 c=64 within 15% of sessionless",
        "socks5_rate c=64",
        "rate",
        "exitgate",
        0.85,
        mine="exitgate sessions",
    ),
    Target(
        "sessions: forward c=64 within 15% of sessionless",
        "forward_rps c=64",
        "rate",
        "exitgate",
        0.85,
        mine="exitgate sessions",
    ),
    Target(
        "limits: CONNECT c=64 within 10% of unlimited",
        "connect_rate c=64",
        "rate",
        "exitgate",
        0.9,
        mine="exitgate limits",
    ),
    Target(
        "limits: SOCKS5 c=64 within 10% of unlimited",
        "socks5_rate c=64",
        "rate",
        "exitgate",
        0.9,
        mine="exitgate limits",
    ),
    Target(
        "limits: forward c=64 within 10% of unlimited",
        "forward_rps c=64",
        "rate",
        "exitgate",
        0.9,
        mine="exitgate limits",
    ),
    Target(
        "one tunnel both ways ≥ 0.7× direct",
        "tunnel_throughput 1 tunnel, 1 GiB each way",
        "mb_per_s",
        "direct",
        0.7,
    ),
    Target(
        "CPU s per GB ≤ squid's",
        "tunnel_throughput 1 tunnel, 1 GiB each way",
        "cpu_s_per_gb",
        "squid",
        1.0,
        higher_is_better=False,
    ),
    Target("SOCKS5 tunnels/s c=64 ≥ 2× dante", "socks5_rate c=64", "rate", "dante", 2.0),
    Target("SOCKS5 tunnels/s c=64 ≥ 1.5× pproxy", "socks5_rate c=64", "rate", "pproxy", 1.5),
    Target(
        "idle tunnel ≤ 8 KiB (PSS)",
        "idle_tunnels 5000 tunnels",
        "kib_per_tunnel",
        "",
        8.0,
        higher_is_better=False,
    ),
    Target(
        "CONNECT + request p50 at c=1 ≤ tinyproxy's",
        "connect_rate c=1",
        "p50_ms",
        "tinyproxy",
        1.0,
        higher_is_better=False,
    ),
    Target(
        "metering on within 10% of off (CONNECT c=64)",
        "connect_rate c=64",
        "rate",
        "exitgate metering off",
        0.9,
    ),
    Target(
        "metering on within 10% of off (forward c=64)",
        "forward_rps c=64",
        "rate",
        "exitgate metering off",
        0.9,
    ),
]


# The issue's own targets again for the compiled build (hatch_build.py; variant "compiled"),
# listed right after the stretch targets they share the table with.
COMPILED_TARGETS = (
    "CONNECT CPU per tunnel c=64 ≤ 1.3× floor",
    "CONNECT tunnels/s c=64 ≥ 1.0× squid",
    "SOCKS5 tunnels/s c=64 ≥ 0.8× floor",
    "SOCKS5 tunnels/s c=64 ≥ 2× dante",
    "forward req/s c=64 ≥ 1.0× squid",
    "CONNECT + request p50 at c=1 ≤ tinyproxy's",
)
_BY_NAME = {t.name: t for t in _SOURCE_TARGETS}
_AT = [t.name for t in _SOURCE_TARGETS].index("(stretch) forward c=64 ≥ 1.5× squid") + 1
TARGETS = [
    *_SOURCE_TARGETS[:_AT],
    *(
        replace(_BY_NAME[name], name=f"compiled: {name}", mine="exitgate compiled")
        for name in COMPILED_TARGETS
    ),
    *_SOURCE_TARGETS[_AT:],
]

# issue 10's summary table: (row label, case, metric, the column the ratio is to, unit)
ISSUE10_ROWS = [
    ("CONNECT tunnels/s, c=64", "connect_rate c=64", "rate", "squid", ""),
    ("proxy CPU per tunnel, c=64", "connect_rate c=64", "cpu_ms_per_1k", "", " µs"),
    ("forward req/s, c=64, keep-alive", "forward_rps c=64", "rate", "squid", ""),
    ("SOCKS5 tunnels/s, c=64", "socks5_rate c=64", "rate", "dante", ""),
    ("SOCKS5 proxy CPU per tunnel, c=64", "socks5_rate c=64", "cpu_ms_per_1k", "", " µs"),
    ("CONNECT + GET p50 at c=1", "connect_rate c=1", "p50_ms", "tinyproxy", " ms"),
]
ISSUE10_COLUMNS = ["exitgate", "exitgate compiled", "squid", "tinyproxy", "dante", "floor"]


def render_issue10(results: Results) -> list[str]:
    """The issue's table: each figure with its ratio to the row's reference in parentheses."""
    out = [
        "| figure | " + " | ".join(ISSUE10_COLUMNS) + " |",
        "|---|" + "---:|" * len(ISSUE10_COLUMNS),
    ]
    for label, case, metric, ref, unit in ISSUE10_ROWS:
        per: dict[str, Any] = results.get(case, {})
        base = median(per.get(ref, []), metric) if ref else None
        cells = []
        for col in ISSUE10_COLUMNS:
            v = median(per.get(col, []), metric)
            if v is None:
                cells.append("-")
                continue
            text = f"{v:,.0f}{unit}" if v >= 100 else f"{v:.3g}{unit}"
            if base:
                text += f" ({v / base:.2f})"
            cells.append(text)
        title = f"{label} (ratio to {ref})" if ref else label
        out.append(f"| {title} | " + " | ".join(cells) + " |")
    return out


def render_targets(results: Results) -> list[str]:
    out = [
        "| target | measured | required | met |",
        "|---|---|---|---|",
    ]
    for t in TARGETS:
        per: dict[str, Any] = results.get(t.case, {})
        mine = median(per.get(t.mine, []), t.metric)
        if t.other:
            theirs = median(per.get(t.other, []), t.metric)
            value = None if mine is None or not theirs else mine / theirs
            shown = "n/a" if value is None else f"{value:.2f}×"
            required = f"{'≥' if t.higher_is_better else '≤'} {t.bound:g}×"
        else:
            value = mine
            shown = "n/a" if value is None else f"{value:.1f}"
            required = f"{'≥' if t.higher_is_better else '≤'} {t.bound:g}"
        if value is None:
            met = "not run"
        elif t.higher_is_better:
            met = "yes" if value >= t.bound else f"no ({value / t.bound:.0%} of target)"
        else:
            met = "yes" if value <= t.bound else f"no ({t.bound / value:.0%} of target)"
        out.append(f"| {t.name} | {shown} | {required} | {met} |")
    out.append("")
    out.append("Node selection: see the last section (target: under 50 µs per pick at 10^6).")
    if ANALYSIS.exists():
        out += ["", ANALYSIS.read_text().rstrip()]
    return out
