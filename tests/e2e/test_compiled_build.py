"""The compiled build (hatch_build.py): `EXITGATE_COMPILE=1 pip wheel .` compiles the
connection path with mypyc. The wheel is built, unpacked, and checked: the listed modules
are extension modules, every module of the package imports beside them, and the real-wire
suites of the connection path pass again with the compiled package first on the path (a
pytest of their own, so this process keeps the source build).

A whole-suite run builds and runs those suites in a background job started with the session
(tests/support/compiled.py), and these tests wait for its results; a run that picks these
tests out does the same work in the foreground."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import compiled

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def _compiled_modules() -> list[str]:
    config = tomllib.loads((compiled.ROOT / "pyproject.toml").read_text())
    paths = config["tool"]["hatch"]["build"]["targets"]["wheel"]["hooks"]["custom"]["compile"]
    return [p.removesuffix(".py").replace("/", ".") for p in paths]


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The job's directory and its build result: the background job's, or one run here."""
    background = os.environ.get(compiled.ENV)
    if background:
        out = Path(background)
        yield out, compiled.wait_for(out / "build.json", compiled.BUILD_TIMEOUT + 300)
        return
    out = tmp_path_factory.mktemp("compiled-job")
    yield out, compiled.build(out)


@pytest.fixture(scope="module")
def tree(job: tuple[Path, dict[str, Any]]) -> Path:
    _, built = job
    assert built["ok"], built["error"]
    assert "-py3-none-any" not in built["wheel"]  # a platform wheel: it carries extension modules
    return Path(built["tree"])


def test_the_listed_modules_are_compiled_and_the_whole_package_imports(
    tree: Path, tmp_path: Path
) -> None:
    modules = _compiled_modules()
    assert "exitgate.net.conn" in modules and "exitgate.wire.http1" in modules
    probe = f"""
import importlib, importlib.machinery, pkgutil, sys
import exitgate
assert exitgate.__file__.startswith({str(tree)!r}), exitgate.__file__
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
    done = compiled.run_on(tree, ["-c", probe], tmp_path, 120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-4000:]


def test_the_connection_path_suites_pass_on_the_compiled_build(
    job: tuple[Path, dict[str, Any]], tree: Path
) -> None:
    out, _ = job
    if os.environ.get(compiled.ENV):
        suites = compiled.wait_for(out / "suites.json", compiled.SUITES_TIMEOUT + 60)
    else:
        suites = compiled.run_suites(tree, out)
    assert suites["returncode"] == 0, suites["stdout"]
    assert " passed" in suites["stdout"] and " failed" not in suites["stdout"]
