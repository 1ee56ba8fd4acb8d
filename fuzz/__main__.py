"""`python -m fuzz <target> [libFuzzer flags]`: run one target under atheris.

The kept seeds in fuzz/corpus/<target>/ are read, never written: units libFuzzer finds go to
fuzz/build/<target>/corpus/ (git-ignored), crash artifacts to fuzz/build/<target>/.
`--merge` minimises the kept seeds plus the found units back into fuzz/corpus/<target>/
(libFuzzer's -merge=1: only units that add coverage survive).
"""

from __future__ import annotations

import importlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from fuzz import TARGETS

HERE = Path(__file__).resolve().parent
# Inputs longer than this add little for head/line parsers and slow every execution down.
MAX_LEN = {"rules": 512, "h2_guard": 2048, "body": 1024, "http_head": 2048, "socks5": 1024}
DEFAULT_MAX_LEN = 4096


def corpus_dir(target: str) -> Path:
    return HERE / "corpus" / target


def build_dir(target: str) -> Path:
    # FUZZ_WORK moves found units and crash files elsewhere (the tests use a tmp dir).
    d = Path(os.environ.get("FUZZ_WORK") or HERE / "build") / target
    (d / "corpus").mkdir(parents=True, exist_ok=True)
    return d


def replay(target: str) -> int:
    module = importlib.import_module(f"fuzz.{target}")
    files = sorted(p for p in corpus_dir(target).iterdir() if p.is_file())
    for path in files:
        module.test_one_input(path.read_bytes())
    print(f"{target}: {len(files)} corpus files replayed, contract held")
    return 0


def run(target: str, flags: list[str], dirs: list[str] | None = None) -> None:
    import atheris  # the `fuzz` extra: pip install -e '.[fuzz]'

    # Instrument exitgate for coverage (not the target's own checks: they would slow every
    # input and reward the fuzzer for exploring the harness). Modules imported before this
    # point would run uninstrumented, so nothing from exitgate is imported above.
    with atheris.instrument_imports(include=["exitgate"]):
        module = importlib.import_module(f"fuzz.{target}")
    work = build_dir(target)
    if not any(f.startswith("-max_len=") for f in flags):
        flags.append(f"-max_len={MAX_LEN.get(target, DEFAULT_MAX_LEN)}")
    flags += [f"-artifact_prefix={work}/", "-print_final_stats=1"]
    if dirs is None:
        dirs = [str(work / "corpus"), str(corpus_dir(target))]
    # libFuzzer's merge re-runs argv[0] as a program: --merge passes an executable wrapper.
    argv0 = os.environ.get("FUZZ_ARGV0") or sys.argv[0]
    atheris.Setup([argv0, *flags, *dirs], module.test_one_input)
    atheris.Fuzz()


def merge(target: str) -> int:
    """Minimise kept seeds + found units into a fresh folder, then make it the kept corpus.

    libFuzzer exits the process after a merge, so the merge runs in a child process."""
    fresh = Path(tempfile.mkdtemp(prefix=f"fuzz-{target}-"))
    work = build_dir(target)
    wrapper = work / "merge-entry"
    wrapper.write_text(
        f"#!/bin/sh\ncd {shlex.quote(str(HERE.parent))} && "
        f"exec {shlex.quote(sys.executable)} -m fuzz {target} --dirs \"$@\"\n"
    )
    wrapper.chmod(0o755)
    argv = [str(wrapper), str(fresh), str(corpus_dir(target)), str(work / "corpus"), "-merge=1"]
    env = dict(os.environ, FUZZ_ARGV0=str(wrapper))
    code = subprocess.run(argv, check=False, env=env).returncode  # noqa: S603
    if code != 0 or not any(fresh.iterdir()):
        print(f"merge failed ({code}); kept corpus unchanged", file=sys.stderr)
        return code or 1
    kept = corpus_dir(target)
    for crash in kept.glob("crash-*"):  # regressions stay, whatever coverage they add
        shutil.copy(crash, fresh / crash.name)
    shutil.rmtree(kept)
    shutil.copytree(fresh, kept)
    shutil.rmtree(fresh)
    print(f"{target}: kept corpus is now {len(list(kept.iterdir()))} files")
    return 0


def summary(log_name: str = "run.log") -> int:
    """A markdown table from the logs of the last runs (`... 2>fuzz/build/<target>/run.log`)."""
    import re

    print("| target | inputs | exec/s | cov | ft | corpus units | crashes |")
    print("|---|---|---|---|---|---|---|")
    for target in TARGETS:
        path = build_dir(target) / log_name
        if not path.exists():
            print(f"| {target} | not run | | | | | |")
            continue
        text = path.read_text(errors="replace")
        stat = dict(re.findall(r"stat::(\w+):\s+(\d+)", text))
        cov = re.findall(r"cov: (\d+) ft: (\d+) corp: (\d+)/", text)
        crashes = len(re.findall(r"Test unit written to .*crash-", text))
        last = cov[-1] if cov else ("?", "?", "?")
        print(f"| {target} | {int(stat.get('number_of_executed_units', 0)):,} | "
              f"{stat.get('average_exec_per_sec', '?')} | {last[0]} | {last[1]} | {last[2]} | "
              f"{crashes} |")  # fmt: skip
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("targets:", ", ".join(TARGETS))
        return 0
    if argv[0] == "--summary":
        return summary(*argv[1:2])
    if argv[0] == "--list":
        print("\n".join(TARGETS))
        return 0
    target, flags = argv[0], argv[1:]
    if target not in TARGETS:
        print(f"unknown target {target!r}; one of: {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    if "--replay" in flags:
        return replay(target)
    if "--merge" in flags:
        return merge(target)
    if "--dirs" in flags:  # internal: explicit corpus folders (used by --merge)
        at = flags.index("--dirs")
        dirs = [f for f in flags[at + 1 :] if not f.startswith("-")]
        flags = flags[:at] + [f for f in flags[at + 1 :] if f.startswith("-")]
        run(target, flags, dirs)
        return 0
    run(target, flags)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
