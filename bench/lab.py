"""The set-up that issue 10's before/after tools share (`cpu_ab`, `cpu_split`, `instr`).

A work folder whose processes are stopped on the way out, last started first; the load
generator's origin; the package source at a git revision, to run as "base".
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from bench import install
from bench.procs import Proc


class Stoppable(Protocol):
    def stop(self) -> None: ...


@contextlib.contextmanager
def lab(prefix: str, *, keep: bool = False) -> Iterator[tuple[Path, list[Stoppable]]]:
    """A temporary work folder and the list of what is started in it. On the way out, each
    is stopped (last started first) and the folder removed, unless `keep`."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    started: list[Stoppable] = []
    try:
        yield work, started
    finally:
        for one in reversed(started):
            one.stop()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def origin_port(origin: Proc) -> int:
    """The port a started origin printed (`PORT n`)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        text = origin.log.read_text() if origin.log.exists() else ""
        for line in text.splitlines():
            if line.startswith("PORT "):
                return int(line.split()[1])
        time.sleep(0.02)
    raise SystemExit(f"origin did not start: {origin.tail()}")


def start_origin(work: Path, started: list[Stoppable]) -> str:
    """The load generator's origin, started in `work` (at most an hour): its host:port."""
    origin = Proc(
        "origin", [str(install.LOADGEN), "origin", "--max-seconds", "3600"], work / "origin.log"
    )
    origin.start()
    started.append(origin)
    return f"127.0.0.1:{origin_port(origin)}"


def tree_at(work: Path, rev: str) -> Path:
    """The package source at git revision `rev`, extracted under `work`: a folder to put
    first on PYTHONPATH."""
    base = work / "base"
    base.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(install.ROOT), "archive", rev, "src"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
    return base / "src"
