"""A tiny HTTP CONNECT proxy, run as a real process: an `upstream` exit that can really die.

    python -m tests.support.upstream_proxy --listen 127.0.0.11:0 --bind 127.0.0.11 \
        [--refuse [STATUS]]

It prints its bound port on the first line of stdout, then one line `conn` per accepted
connection (so a test can count how often the gateway tried it). Outgoing connections leave
from `--bind`, so the origin's `/ip` shows which upstream served. With `--refuse` it answers
every CONNECT with STATUS (default 502) and connects nowhere. A refused target connection is
answered `502` with `Proxy-Status: ...; error=connection_refused` (RFC 9209), a slow one `504`.

`UpstreamProcess` runs it from a test: start, SIGKILL, restart on the same port.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_PRINT = threading.Lock()


def _say(line: str) -> None:
    with _PRINT:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class _Handler(socketserver.BaseRequestHandler):
    server: _Proxy

    def handle(self) -> None:
        _say("conn")
        client: socket.socket = self.request
        client.settimeout(10)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk or len(head) > 65536:
                return
            head += chunk
        head, _, early = head.partition(b"\r\n\r\n")
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or parts[0] != b"CONNECT":
            client.sendall(_answer(405, "Only CONNECT"))
            return
        if self.server.refuse:
            client.sendall(_answer(self.server.refuse, "Refused by test upstream"))
            return
        host, _, port = parts[1].decode("ascii").rpartition(":")
        try:
            target = socket.create_connection(
                (host.strip("[]"), int(port)), timeout=5, source_address=(self.server.bind, 0)
            )
        except ConnectionRefusedError:
            client.sendall(_answer(502, "Refused", "error=connection_refused"))
            return
        except TimeoutError:
            client.sendall(_answer(504, "Timeout", "error=connection_timeout"))
            return
        except OSError:
            client.sendall(_answer(502, "Unreachable", "error=destination_unavailable"))
            return
        with target:
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if early:
                target.sendall(early)
            client.settimeout(None)
            target.settimeout(None)
            other = threading.Thread(target=_pipe, args=(target, client), daemon=True)
            other.start()
            _pipe(client, target)
            other.join()


def _answer(status: int, reason: str, error: str = "") -> bytes:
    extra = f"Proxy-Status: test-upstream; {error}\r\n" if error else ""
    return (
        f"HTTP/1.1 {status} {reason}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
    ).encode("ascii")


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    """Copy until EOF, then half-close the other side (so echo tests see the end)."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


class _Proxy(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True  # a restart after SIGKILL takes the same port at once

    def __init__(self, listen: tuple[str, int], bind: str, refuse: int) -> None:
        super().__init__(listen, _Handler)
        self.bind = bind
        self.refuse = refuse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="host:port (port 0: any)")
    parser.add_argument("--bind", required=True, help="source address of outgoing connections")
    parser.add_argument("--refuse", type=int, nargs="?", const=502, default=0,
                        help="answer every CONNECT with this status (default 502)")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    server = _Proxy((host, int(port)), args.bind, args.refuse)
    _say(str(server.server_address[1]))
    server.serve_forever()


# -- the test side -----------------------------------------------------------------------------


class UpstreamProcess:
    """The proxy above as a child process of the test; `kill()` is a real SIGKILL."""

    def __init__(self, bind: str, port: int = 0, refuse: int = 0) -> None:
        self.bind = bind
        self.port = port
        self.connections = 0  # `conn` lines seen, over every (re)start
        self.proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self.start(refuse)

    @property
    def url(self) -> str:
        return f"http://{self.bind}:{self.port}"

    def start(self, refuse: int = 0) -> None:
        """Start (again, on the same port once it has one)."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("already running")
        command = [sys.executable, "-m", "tests.support.upstream_proxy",
                   "--listen", f"{self.bind}:{self.port}", "--bind", self.bind]
        if refuse:
            command += ["--refuse", str(refuse)]
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.proc = proc
        ready = threading.Event()
        self._reader = threading.Thread(target=self._read, args=(proc, ready), daemon=True)
        self._reader.start()
        if not ready.wait(10) or proc.poll() is not None:
            self.kill()
            raise RuntimeError(f"upstream proxy on {self.bind} did not start")

    def _read(self, proc: subprocess.Popen[str], ready: threading.Event) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if not ready.is_set():
                self.port = int(line)
                ready.set()
            elif line.strip() == "conn":
                self.connections += 1
        ready.set()  # the process ended before printing its port

    def kill(self) -> None:
        """SIGKILL: the exit dies at once, as a crashed machine would."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(5)
        if self._reader is not None:
            self._reader.join(5)  # it ends at the pipe's EOF
        if proc.stdout is not None:
            proc.stdout.close()

    def restart(self, refuse: int = 0) -> None:
        self.kill()
        deadline = time.monotonic() + 5
        while True:  # the port of a killed process is free at once (SO_REUSEADDR)
            try:
                self.start(refuse)
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        self.kill()


if __name__ == "__main__":
    main()
