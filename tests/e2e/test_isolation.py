"""Issue 12 hole 8: the suite never reads the working folder or home directory.

A new user runs `exitgate serve --demo` (which leaves `admin.token` in the working folder),
then the tests from that same folder. The CLI test that once picked up that token must pass.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_demo_cli import _start_demo

ROOT = Path(__file__).resolve().parents[2]
VICTIM = "tests/e2e/test_admin_cli.py::test_token_sources_and_failures"


def test_fixture_isolates_cwd_home_and_settings(tmp_path: Path) -> None:
    assert Path.cwd() != ROOT and not any(Path.cwd().iterdir())
    assert Path.home() != ROOT and not any(Path.home().iterdir())
    assert not [name for name in os.environ if name.startswith("EXITGATE_")]


@pytest.mark.slow
def test_suite_passes_after_serve_demo_in_the_same_folder(tmp_path: Path) -> None:
    scratch = tmp_path / "newuser"
    scratch.mkdir()
    proc, _ = _start_demo(scratch)
    # (not `_stop`: a demo stopped right after its start may print a lifespan traceback from
    # the checker's uvicorn, a separate race this test is not about)
    proc.terminate()
    proc.communicate(timeout=15)
    assert (scratch / "admin.token").is_file()  # what the CLI used to pick up
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    # the user's shell may carry settings too: the suite must ignore them
    env["EXITGATE_ADMIN_TOKEN"] = "the-users-own-token"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / VICTIM)],
        cwd=scratch, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout
