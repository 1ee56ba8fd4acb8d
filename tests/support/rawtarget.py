"""A raw TCP target for wire tests: records exactly what reaches it, answers scripted bytes.

Each accepted connection reads until the end of the first head (CRLFCRLF), then sends the
script: a list of byte strings, a float in the list is a pause in seconds. After the script
the connection keeps reading (everything is recorded) until the peer closes or `linger`
seconds pass, then closes.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence

Script = Sequence[bytes | float]


class RawTarget:
    def __init__(self, script: Script = (), linger: float = 2.0, host: str = "127.0.0.1") -> None:
        self.script = list(script)
        self.linger = linger
        self.received: list[bytes] = []  # per connection, everything it got
        self._lock = threading.Lock()
        self._sock = socket.create_server((host, 0))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def heads(self) -> list[bytes]:
        """The first head each connection received (through its blank line)."""
        with self._lock:
            return [r.partition(b"\r\n\r\n")[0] + b"\r\n\r\n" for r in self.received if r]

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.received.append(b"")
                slot = len(self.received) - 1
            thread = threading.Thread(target=self._one, args=(conn, slot), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _record(self, slot: int, data: bytes) -> None:
        with self._lock:
            self.received[slot] += data

    def _one(self, conn: socket.socket, slot: int) -> None:
        with conn:
            conn.settimeout(0.1)
            deadline = time.monotonic() + 10
            try:
                while b"\r\n\r\n" not in self.received[slot] and time.monotonic() < deadline:
                    if not self._read(conn, slot):
                        return
                for step in self.script:
                    if isinstance(step, float):
                        end = time.monotonic() + step
                        while time.monotonic() < end and self._read(conn, slot):
                            pass
                    else:
                        conn.sendall(step)
                end = time.monotonic() + self.linger
                while time.monotonic() < end and self._read(conn, slot):
                    pass
            except OSError:
                return

    def _read(self, conn: socket.socket, slot: int) -> bool:
        """Read what is there (waiting up to 0.1 s); False when the peer closed."""
        try:
            data = conn.recv(65536)
        except TimeoutError:
            return True
        if not data:
            return False
        self._record(slot, data)
        return True

    def stop(self) -> None:
        self._stop.set()
        self._sock.close()
        self._accept.join(2)
        for thread in self._threads:
            thread.join(self.linger + 1)
