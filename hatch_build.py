"""Optional compiled build: the connection path's modules compiled with mypyc.

    EXITGATE_COMPILE=1 pip install .        # or: pip wheel . -w dist

Off by default, and never for editable installs (`pip install -e .`): there a compiled
module would shadow its edited source. The modules to compile are listed once, in
pyproject.toml (`[tool.hatch.build.targets.wheel.hooks.custom] compile`); the wheel keeps
every `.py` beside the extension modules, so the package is the same code either way and
`exitgate.compiled()` tells which one runs. docs/decisions.md ("A compiled build") has the
figures and why these modules.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

# Pinned: mypyc's output depends on the version, and the build is measured with this one.
MYPY = "mypy==2.4.1"
SETUPTOOLS = "setuptools>=70"


def wanted() -> bool:
    value = os.environ.get("EXITGATE_COMPILE", "").strip().lower()
    if value in {"", "0", "false", "no", "off"}:
        return False
    if value in {"1", "true", "yes", "on"}:
        return True
    raise ValueError(f"EXITGATE_COMPILE={value!r}: expected 1 or 0 (true/false, yes/no, on/off)")


class CompileHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def dependencies(self) -> list[str]:
        return [MYPY, SETUPTOOLS] if wanted() else []

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if version == "editable" or not wanted():
            return
        modules = list(self.config.get("compile", []))
        if not modules:
            return
        work = Path(tempfile.mkdtemp(prefix="exitgate-mypyc-"))
        try:
            built = _compile(Path(self.root) / "src", modules, work)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        for so in built:
            build_data["force_include"][str(work / so)] = so
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        self._work = work

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        work = getattr(self, "_work", None)
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


def _compile(src: Path, modules: list[str], work: Path) -> list[str]:
    """mypyc over a copy of the package; the extension modules, relative to `work`."""
    from mypyc.build import mypycify  # the build environment has it (dependencies above)
    from setuptools import setup

    shutil.copytree(src / "exitgate", work / "exitgate", ignore=shutil.ignore_patterns("*.so"))
    cwd = Path.cwd()
    os.chdir(work)
    try:
        extensions = mypycify(
            # Third-party packages are not in an isolated build environment: their types
            # are Any here, which mypyc compiles to generic (always correct) operations.
            ["--ignore-missing-imports", "--cache-dir", str(work / ".mypy_cache"), *modules],
            opt_level="3",
            multi_file=True,  # several C files, compiled in parallel below
            group_name="exitgate_core",
        )
        jobs = str(max(1, os.cpu_count() or 1))
        setup(
            name="exitgate-core",
            ext_modules=extensions,
            script_args=["-q", "build_ext", "--inplace", "-j", jobs],
        )
    finally:
        os.chdir(cwd)
    built = sorted(
        str(p.relative_to(work))
        for p in work.rglob("*.so")
        if "build" not in p.relative_to(work).parts
    )
    if not built:
        raise RuntimeError("mypyc produced no extension modules")
    return built
