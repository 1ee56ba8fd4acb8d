"""The benchmark's setup step: comparison proxies, the load generator. Idempotent.

- Debian packages: squid, tinyproxy, dante-server (installed once with apt-get; their
  system services are left alone: the benchmark runs its own instances on free ports).
- PyPI: proxy.py and pproxy (with uvloop, which pproxy uses when present, as exitgate
  does) in their own venv under bench/build/, so the project's venv is not touched.
- A system user for dante: danted checks RFC 1929 credentials against the system's
  password database, so its benchmark user has to exist there.
- bench/loadgen.c compiled with gcc -O2 into bench/build/loadgen.
- The compiled build of exitgate (variant `compiled`), unpacked under bench/build/compiled/.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BUILD = BENCH / "build"
LOADGEN = BUILD / "loadgen"
PEERS_VENV = BUILD / "peers-venv"
APT_PACKAGES = ("squid", "tinyproxy", "dante-server")
# Pinned: the report compares against named releases. uvloop 0.21: pproxy 2.7.9 calls
# asyncio.get_event_loop() before any loop exists, which uvloop 0.22+ refuses.
PYPI_PACKAGES = ("proxy.py==2.4.10", "pproxy==2.7.9", "uvloop==0.21.0")
DANTE_USER = "egbench"
DANTE_PASS = "benchpass42"


def log(msg: str) -> None:
    print(f"[setup] {msg}", file=sys.stderr, flush=True)


def _dpkg_installed(pkg: str) -> bool:
    r = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True, check=False
    )
    return r.returncode == 0 and "install ok installed" in r.stdout


def apt_packages() -> None:
    missing = [p for p in APT_PACKAGES if not _dpkg_installed(p)]
    if not missing:
        return
    log(f"apt-get install {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def peers_venv() -> None:
    py = PEERS_VENV / "bin" / "python"
    if py.exists():
        probe = subprocess.run(
            [str(py), "-c", "import proxy, pproxy, uvloop"], capture_output=True, check=False
        )
        if probe.returncode == 0:
            return
    log(f"venv {PEERS_VENV} with {' '.join(PYPI_PACKAGES)}")
    BUILD.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(PEERS_VENV)], check=True)
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PYPI_PACKAGES],
        check=True,
    )


def dante_user() -> None:
    have = subprocess.run(["getent", "passwd", DANTE_USER], capture_output=True, check=False)
    if have.returncode != 0:
        log(f"system user {DANTE_USER} (for danted's RFC 1929 check)")
        subprocess.run(
            ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", DANTE_USER],
            check=True,
        )
    # Set every time: cheap, and a user left by an older run may have another password.
    # MD5-crypt: with Debian's default (yescrypt) each RFC 1929 check costs danted ~13 ms
    # of hashing, which would measure the hash, not the proxy.
    subprocess.run(
        ["chpasswd", "-c", "MD5"], input=f"{DANTE_USER}:{DANTE_PASS}\n", text=True, check=True
    )


def loadgen() -> Path:
    src = BENCH / "loadgen.c"
    if LOADGEN.exists() and LOADGEN.stat().st_mtime >= src.stat().st_mtime:
        return LOADGEN
    log(f"gcc -O2 {src.name}")
    BUILD.mkdir(parents=True, exist_ok=True)
    cc = shutil.which("gcc") or shutil.which("cc") or "gcc"
    subprocess.run([cc, "-O2", "-Wall", "-o", str(LOADGEN), str(src)], check=True)
    return LOADGEN


def compiled_tree() -> Path:
    """The compiled build (hatch_build.py) of the working tree, unpacked: a folder to put
    first on PYTHONPATH. Built once per state of the sources (about 80 s on 2 cores)."""
    digest = hashlib.sha256()
    files = [ROOT / "pyproject.toml", ROOT / "hatch_build.py"]
    files += sorted((ROOT / "src" / "exitgate").rglob("*.py"))
    for path in files:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    tree = BUILD / "compiled" / digest.hexdigest()[:16]
    if (tree / "exitgate").is_dir():
        return tree
    log("mypyc: building the compiled wheel (EXITGATE_COMPILE=1)")
    shutil.rmtree(BUILD / "compiled", ignore_errors=True)
    wheels = BUILD / "compiled" / "wheel"
    pip = ROOT / ".venv" / "bin" / "pip"
    env = dict(os.environ, EXITGATE_COMPILE="1")
    subprocess.run(
        [str(pip), "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)], env=env, check=True
    )
    (wheel,) = wheels.glob("exitgate-*.whl")
    partial = tree.with_suffix(".partial")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(partial)
    partial.rename(tree)
    return tree


def setup(peers: bool = True) -> None:
    loadgen()
    if peers:
        apt_packages()
        peers_venv()
        dante_user()


if __name__ == "__main__":
    setup()
