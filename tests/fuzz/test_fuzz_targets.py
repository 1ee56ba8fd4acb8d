"""The fuzz targets of fuzz/ (issue 12): every kept corpus file replays through its target
with the contract holding, and each target survives a short mutation budget. The 10^6-input
runs are a documented command (docs/fuzzing.md), not part of the suite."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fuzz import TARGETS, mutate  # noqa: E402

CORPUS = ROOT / "fuzz" / "corpus"
BUDGET = 0.25  # seconds per target: about 2-3 s for all of them


def _target(name: str):  # type: ignore[no-untyped-def]
    return importlib.import_module(f"fuzz.{name}").test_one_input


def test_every_target_has_a_corpus() -> None:
    assert sorted(p.name for p in CORPUS.iterdir()) == sorted(TARGETS)
    total = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file())
    assert total < 400_000, f"the kept corpus grew to {total} bytes: minimise it (--merge)"


@pytest.mark.parametrize("name", TARGETS)
def test_corpus_replays(name: str) -> None:
    files = sorted(p for p in (CORPUS / name).iterdir() if p.is_file())
    assert files, f"no seeds for {name}"
    target = _target(name)
    for path in files:
        try:
            target(path.read_bytes())
        except BaseException as exc:
            exc.add_note(f"corpus file: {path.relative_to(ROOT)}")
            raise


@pytest.mark.parametrize("name", TARGETS)
def test_short_mutation_budget(name: str) -> None:
    pool = mutate.seeds(CORPUS / name)
    runs = mutate.run(_target(name), pool, BUDGET, seed=sum(name.encode()))
    assert runs > 0


def test_a_contract_break_is_reported() -> None:
    """The harness is not vacuous: a target that breaks its contract fails the loop."""

    def target(data: bytes) -> None:
        assert b"\r\n" not in data

    with pytest.raises(AssertionError) as info:
        mutate.run(target, [b"GET / HTTP/1.1\r\n"], 1.0)
    assert any("fuzz input" in note for note in info.value.__notes__)


def test_atheris_command_runs(tmp_path: Path) -> None:
    """`python -m fuzz <target> -runs=N` under atheris, when the `fuzz` extra is installed."""
    pytest.importorskip("atheris")
    env = dict(os.environ, FUZZ_WORK=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "fuzz", "h2_guard", "-runs=500"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stat::number_of_executed_units: 500" in proc.stderr
    assert not list(tmp_path.rglob("crash-*"))
