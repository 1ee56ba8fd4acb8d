"""A new user's path: `exitgate serve --demo`, then the printed curl lines, as subprocesses."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

EXITGATE = str(Path(sys.executable).with_name("exitgate"))


def _start_demo(cwd: Path) -> tuple[subprocess.Popen[str], list[str]]:
    env = dict(os.environ, EXITGATE_PROXY_LISTEN="127.0.0.1:0", EXITGATE_ADMIN_LISTEN="127.0.0.1:0",
               EXITGATE_HUB_LISTEN="127.0.0.1:0")
    proc = subprocess.Popen([EXITGATE, "serve", "--demo"], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if "an error, on purpose" in line:
            return proc, lines
    proc.kill()
    _, err = proc.communicate()
    raise AssertionError(f"demo did not print its curl lines: {lines} {err}")


def _curl_lines(lines: list[str]) -> list[list[str]]:
    return [shlex.split(line.split("#")[0]) for line in lines if line.strip().startswith("curl ")]


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_demo_prints_working_curl_lines_and_stops_cleanly(tmp_path: Path) -> None:
    proc, lines = _start_demo(tmp_path)
    try:
        http_line, socks_line, error_line = _curl_lines(lines)
        out = subprocess.run([*http_line, "-sS", "--max-time", "10"], capture_output=True,
                             text=True, check=False)
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        assert data["status"] is True and data["data"]["ip"] == "127.0.0.2"
        out = subprocess.run([*socks_line, "-sS", "--max-time", "10"], capture_output=True,
                             text=True, check=False)
        assert json.loads(out.stdout)["data"]["ip"] == "127.0.0.3"
        out = subprocess.run([*error_line, "-sS", "-i", "--max-time", "10"], capture_output=True,
                             text=True, check=False)
        assert "X-SOAX-Error: ERR_INVALID_VALUE" in out.stdout
        token_file = tmp_path / "admin.token"
        assert token_file.stat().st_mode & 0o777 == 0o600
    finally:
        _stop(proc)
    first_key = http_line[2].split(":")[2].split("@")[0]
    # a second run keeps the data and gives the demo package a fresh key
    proc, lines = _start_demo(tmp_path)
    try:
        # the generated admin token is printed once, on the first start only
        assert not any(line.strip().startswith("admin token") for line in lines)
        http_line = _curl_lines(lines)[0]
        assert http_line[2].split(":")[2].split("@")[0] != first_key
        out = subprocess.run([*http_line, "-sS", "--max-time", "10"], capture_output=True,
                             text=True, check=False)
        assert json.loads(out.stdout)["data"]["ip"] == "127.0.0.2"
    finally:
        _stop(proc)


@pytest.mark.parametrize(("content", "message"), [
    ("[proxy]\nlisten = 5\n", "proxy.listen"),
    ("[proxy]\nlisten = \"nohostport\"\n", "proxy.listen"),
    ("[proxy]\nbogus = 1\n", "proxy.bogus: unknown key"),
    ("[nosuch]\nx = 1\n", "nosuch: unknown key"),
    ("not toml at all [", "not valid TOML"),
    ("[exit]\nconnect_timeout = -1\n", "exit.connect_timeout"),
])
def test_bad_config_stops_with_a_message_naming_the_key(tmp_path: Path, content, message):
    config = tmp_path / "exitgate.toml"
    config.write_text(content)
    out = subprocess.run([EXITGATE, "serve", "--config", str(config)], capture_output=True,
                         text=True, timeout=30, check=False)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_env_overrides_are_validated_too(tmp_path: Path) -> None:
    env = dict(os.environ, EXITGATE_EXIT_CONNECT_TIMEOUT="soon")
    out = subprocess.run([EXITGATE, "serve"], capture_output=True, text=True, timeout=30,
                         cwd=tmp_path, env=env, check=False)
    assert out.returncode == 2 and "exit.connect_timeout" in out.stderr


@pytest.mark.parametrize("section", ["PROXY", "ADMIN"])
def test_port_in_use_is_a_clear_message(tmp_path: Path, section: str) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = dict(os.environ, EXITGATE_PROXY_LISTEN="127.0.0.1:0",
                   EXITGATE_ADMIN_LISTEN="127.0.0.1:0", EXITGATE_HUB_LISTEN="127.0.0.1:0")
        env[f"EXITGATE_{section}_LISTEN"] = f"127.0.0.1:{port}"
        out = subprocess.run([EXITGATE, "serve"], capture_output=True, text=True, timeout=30,
                             cwd=tmp_path, env=env, check=False)
    assert out.returncode == 1
    assert "cannot start" in out.stderr and "Traceback" not in out.stderr
