"""Issue 12: the descriptor limit. A real `exitgate serve` in a subprocess started with a low
hard RLIMIT_NOFILE raises its soft limit to it and says so, and at descriptor exhaustion
neither crashes, spins, nor spams its log, and serves again once connections close."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SOFT, HARD = 64, 160
CLIENTS = 300  # well past the descriptors the gateway has
PRLIMIT = shutil.which("prlimit") or "prlimit"  # util-linux
HEAD = b"GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127.0.0.1:9\r\nConnection: close\r\n\r\n"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def gateway(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    cap = getattr(request, "param", 100_000)  # default: far past the descriptors
    config = tmp_path / "exitgate.toml"
    config.write_text(
        '[proxy]\nlisten = "127.0.0.1:0"\nhandshake_timeout = 60.0\n'
        f"max_connections = {cap}\nmax_connections_per_ip = 0\n"
        '[admin]\nlisten = "127.0.0.1:0"\ntoken = "test-admin-token"\n'
        '[hub]\nlisten = ""\n'
        f'[store]\nurl = "sqlite:///{tmp_path / "exitgate.db"}"\n'
    )
    stderr = tmp_path / "stderr.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXITGATE_")}
    env["HOME"] = str(tmp_path)
    with open(stderr, "w") as err:
        proc = subprocess.Popen(
            # prlimit execs the command with the low limits (no preexec_fn in a threaded test)
            [PRLIMIT, f"--nofile={SOFT}:{HARD}", sys.executable, "-c",
             "from exitgate.cli import main; main()", "serve", "--config", str(config)],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=err, text=True,
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"proxy on 127\.0\.0\.1:(\d+)", line)
        assert found, (line, stderr.read_text())
        yield proc, int(found.group(1)), stderr
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


def _answer(port: int, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(HEAD)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
        return got


def test_descriptor_exhaustion_is_survived(gateway) -> None:
    proc, port, stderr = gateway
    log = stderr.read_text()
    assert f"descriptors: limit {HARD} (raised from {SOFT})" in log, log
    assert _answer(port).startswith(b"HTTP/1.1 407")

    held: list[socket.socket] = []
    try:
        for _ in range(CLIENTS):
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=2)
            except OSError:
                continue  # the backlog is full or the connection was reset: expected here
            held.append(sock)
        time.sleep(1.0)  # let the gateway run into the wall
        cpu_before = _cpu_seconds(proc.pid)
        time.sleep(2.0)
        spent = _cpu_seconds(proc.pid) - cpu_before
        assert proc.poll() is None, "the gateway died at descriptor exhaustion"
        assert spent < 0.5, f"{spent:.2f}s of CPU in 2s while exhausted: a busy loop"
    finally:
        for sock in held:
            sock.close()

    # descriptors come back: new connections are served again
    deadline = time.monotonic() + 15
    while True:
        try:
            if _answer(port, timeout=2).startswith(b"HTTP/1.1 407"):
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "not served again after the clients closed"
        time.sleep(0.2)
    assert proc.poll() is None
    log = stderr.read_text()
    assert "Traceback" not in log, log[-3000:]
    lines = log.splitlines()
    assert len(lines) < 40, "\n".join(lines[-40:])


@pytest.mark.parametrize("gateway", [0], indirect=True)
def test_the_derived_cap_answers_before_descriptors_run_out(gateway) -> None:
    proc, port, stderr = gateway
    cap = (HARD - 64) // 2
    assert f"connection caps: {cap} in all (derived from the limit)" in stderr.read_text()
    held: list[socket.socket] = []
    try:
        for _ in range(cap):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(HEAD.replace(b"Connection: close", b"X-Hold: 1"))
            assert sock.recv(65536).startswith(b"HTTP/1.1 407")
            held.append(sock)
        for _ in range(20):  # over the cap: each answered, none left hanging
            assert b" 503 " in _answer(port).split(b"\r\n", 1)[0]
    finally:
        for sock in held:
            sock.close()
    assert proc.poll() is None
    log = stderr.read_text()
    assert "Traceback" not in log
    assert log.count("over the cap") == 1, log
