"""The compiled build (hatch_build.py): `EXITGATE_COMPILE=1 pip wheel .` compiles the
connection path with mypyc. The wheel is built here, unpacked, and checked: the listed modules
are extension modules, every module of the package imports beside them, and the real-wire
suites of the connection path pass again with the compiled package first on the path (a
pytest of their own, so this process keeps the source build)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The suites that drive CONNECT, SOCKS5, forwarding and every error code through a real
# gateway: what the compiled modules do (about 85 s; the build takes about 70 s more).
SUITES = [
    "tests/e2e/test_http_proxy.py",
    "tests/e2e/test_socks5.py",
    "tests/e2e/test_error_codes.py",
]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _compiled_modules() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    paths = config["tool"]["hatch"]["build"]["targets"]["wheel"]["hooks"]["custom"]["compile"]
    return [p.removesuffix(".py").replace("/", ".") for p in paths]


@pytest.fixture(scope="module")
def compiled_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wheels = tmp_path_factory.mktemp("wheels")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXITGATE_")}
    env["EXITGATE_COMPILE"] = "1"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-4000:]
    (wheel,) = wheels.glob("exitgate-*.whl")
    assert "-py3-none-any" not in wheel.name  # a platform wheel: it carries extension modules
    tree = tmp_path_factory.mktemp("compiled")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(tree)
    return tree


def _run_on(
    tree: Path, argv: list[str], cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    """`argv` (a Python program) with the compiled package first on its path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXITGATE_")}
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


def test_the_listed_modules_are_compiled_and_the_whole_package_imports(
    compiled_tree: Path, tmp_path: Path
) -> None:
    modules = _compiled_modules()
    assert "exitgate.net.conn" in modules and "exitgate.wire.http1" in modules
    probe = f"""
import importlib, importlib.machinery, pkgutil, sys
import exitgate
assert exitgate.__file__.startswith({str(compiled_tree)!r}), exitgate.__file__
assert exitgate.compiled()
for name in {modules!r}:
    spec = importlib.util.find_spec(name)
    assert isinstance(spec.loader, importlib.machinery.ExtensionFileLoader), name
skip = ("__main__", "exitgate.store.migrations.env")  # run as programs, not imported
for info in pkgutil.walk_packages(exitgate.__path__, "exitgate."):
    if not info.name.endswith(skip):
        importlib.import_module(info.name)  # an interpreted subclass of a compiled class fails here
print("ok")
"""
    done = _run_on(compiled_tree, ["-c", probe], tmp_path, 120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-4000:]


def test_the_connection_path_suites_pass_on_the_compiled_build(
    compiled_tree: Path, tmp_path: Path
) -> None:
    inner = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
             "--basetemp", str(tmp_path / "inner"), *SUITES]  # fmt: skip
    done = _run_on(compiled_tree, inner, ROOT, 800)
    assert done.returncode == 0, done.stdout[-6000:]
    assert " passed" in done.stdout and " failed" not in done.stdout
