"""The compiled build's check, run beside the suite instead of inside it.

Building the mypyc wheel (about two and a half minutes of CPU) and running the connection
path's suites on it (about a minute and a half, mostly waiting on sockets) took one xdist
worker for four minutes, while the suite as a whole keeps the two cores only half busy. So
when a run selects `tests/e2e/test_compiled_build.py`, the session's first process starts
this module as a background job (at a lower CPU priority) and the tests there only wait for
its results, which it writes as JSON files into its own temporary directory:

    python -m tests.support.compiled DIR     # DIR/build.json, then DIR/suites.json

Any other run (one test picked with -k, say) builds in the foreground, as before.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TEST_FILE = ROOT / "tests" / "e2e" / "test_compiled_build.py"
# The variable through which the session's workers find the job; not EXITGATE_*, which the
# gateway reads as settings and every test clears.
ENV = "PYTEST_EXITGATE_COMPILED"
# The suites that drive CONNECT, SOCKS5, forwarding and every error code through a real
# gateway, and packages' limits, metering and kept-alive credentials: what the compiled
# modules do.
SUITES = [
    "tests/e2e/test_http_proxy.py",
    "tests/e2e/test_socks5.py",
    "tests/e2e/test_error_codes.py",
    "tests/e2e/test_packages.py",
]
NICENESS = 5
LOG = "job.log"  # the job's own errors (a crash before it could write a result)
BUILD_TIMEOUT = 600.0
SUITES_TIMEOUT = 800.0


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("EXITGATE_", ENV))}


def build(out: Path) -> dict[str, Any]:
    """`EXITGATE_COMPILE=1 pip wheel .`, unpacked into `out/tree`."""
    wheels = out / "wheels"
    wheels.mkdir()
    env = clean_env()
    env["EXITGATE_COMPILE"] = "1"
    try:
        built = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)],
            env=env,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"the wheel build ran over {BUILD_TIMEOUT:.0f} s"}
    if built.returncode != 0:
        return {"ok": False, "error": built.stderr[-4000:]}
    found = sorted(wheels.glob("exitgate-*.whl"))
    if len(found) != 1:
        return {"ok": False, "error": f"expected one wheel, found {[p.name for p in found]}"}
    tree = out / "tree"
    with zipfile.ZipFile(found[0]) as zf:
        zf.extractall(tree)
    return {"ok": True, "wheel": found[0].name, "tree": str(tree)}


def run_on(
    tree: Path, argv: list[str], cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    """`argv` (a Python program) with the compiled package first on its path."""
    env = clean_env()
    env["PYTHONPATH"] = str(tree)
    return subprocess.run(
        [sys.executable, *argv],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_suites(tree: Path, out: Path) -> dict[str, Any]:
    inner = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
             "--basetemp", str(out / "inner"), *SUITES]  # fmt: skip
    try:
        done = run_on(tree, inner, ROOT, SUITES_TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"returncode": None, "stdout": f"the suites ran over {SUITES_TIMEOUT:.0f} s"}
    return {"returncode": done.returncode, "stdout": done.stdout[-6000:]}


def _write(path: Path, result: dict[str, Any]) -> None:
    partial = path.with_suffix(".part")
    partial.write_text(json.dumps(result))
    partial.replace(path)  # a reader never sees half a file


def job(out: Path) -> None:
    os.nice(NICENESS)
    try:
        result = build(out)
        _write(out / "build.json", result)
        if result["ok"]:
            _write(out / "suites.json", run_suites(Path(result["tree"]), out))
    except BaseException as exc:  # the waiting tests get the reason instead of a timeout
        failed = {"ok": False, "error": repr(exc), "returncode": None, "stdout": repr(exc)}
        for name in ("build.json", "suites.json"):
            if not (out / name).exists():
                _write(out / name, failed)
        raise


def wait_for(path: Path, timeout: float) -> dict[str, Any]:
    """The job's result file, once it is there."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            log = path.parent / LOG
            said = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            raise TimeoutError(f"{path.name} did not appear within {timeout:.0f} s\n{said}")
        time.sleep(0.5)
    result: dict[str, Any] = json.loads(path.read_text())
    return result


# -- the session's side (tests/conftest.py) ---------------------------------------------------

_started: tuple[subprocess.Popen[bytes], Path] | None = None


def selected(args: list[str], invocation_dir: Path, markexpr: str, keyword: str) -> bool:
    """Whether a run with these arguments collects the compiled-build tests. A filter by
    mark or keyword answers no: the tests then build in the foreground if they run at all."""
    if markexpr or keyword or os.environ.get(ENV):
        return False
    for arg in args:
        path = (invocation_dir / arg.split("::", 1)[0]).resolve()
        if path == TEST_FILE or path in TEST_FILE.parents:
            return True
    return False


def start() -> None:
    global _started
    out = Path(tempfile.mkdtemp(prefix="exitgate-compiled-"))
    with (out / LOG).open("wb") as log:  # the child writes to its own copy
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.compiled", str(out)],
            cwd=ROOT,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,  # its own process group, so stop() ends its children too
        )
    os.environ[ENV] = str(out)  # the xdist workers start after this and inherit it
    _started = (proc, out)


def stop() -> None:
    """Ends the job if it still runs (the tests were deselected or the run was cut short)."""
    global _started
    if _started is None:
        return
    proc, out = _started
    _started = None
    os.environ.pop(ENV, None)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    job(Path(sys.argv[1]))
