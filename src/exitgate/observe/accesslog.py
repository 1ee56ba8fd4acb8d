"""The access log: one JSON line per tunnel, SOCKS5 connection and forwarded request.

Theory of operation. The data path never formats, encodes or writes. At the one place where a
request ends it builds an `Entry` (a plain tuple of values it already holds: the `Rules` and
`Target` objects, monotonic timestamps) and `put`s it on a bounded deque: one length check and
one append. A writer thread wakes every `interval` seconds, takes everything queued, formats
the lines (`format_line`) and writes them to the sink in one write. When the queue is full
(a slow disk, a blocked pipe, a burst) the entry is dropped and `LiveStats.accesslog_dropped`
counts it: the relay never waits for the log (the failure mode of Proxy Manager #75, #112).

What is logged is chosen here, not by the callers' strings: the package id (never its key),
the *canonical* rules (never the username as sent, never a password), target host:port (never
a path or query, which may carry tokens), the node id (never an upstream URL with its
credentials) and the exit IP.

`deque.append` / `popleft` are atomic under the GIL, so the loop thread and the writer share
the deque without a lock; the bound is checked before the append (a race can overshoot it by
one entry, which is harmless).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
import threading
from collections import deque
from datetime import UTC, datetime
from typing import IO, Any

from exitgate.model import Target
from exitgate.observe.stats import LiveStats
from exitgate.rules import Rules

log = logging.getLogger("exitgate.accesslog")

# (wall time, client ip, package id, protocol, target, rules, node id, exit ip, outcome,
#  status, bytes up, bytes down, started, connect started, connected, ended)
# target: a `Target` or an already formatted "host:port"; times from time.monotonic(),
# 0.0 when unknown.
Entry = tuple[
    float, str, "str | None", str, "Target | str", "Rules | None", "str | None", "str | None",
    str, int, int, int, float, float, float, float,
]  # fmt: skip

OFF = "off"
STDOUT = "stdout"
STDERR = "stderr"
BATCH = 4096  # entries formatted per write


def _ms(start: float, end: float) -> float | None:
    if not start or not end or end < start:
        return None
    return round((end - start) * 1000, 3)


def format_line(entry: Entry) -> str:
    (
        at, client, package, protocol, target, rules, node, exit_ip,
        outcome, status, up, down, started, connect_started, connected, ended,
    ) = entry  # fmt: skip
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
        "client": client,
        "package": package,
        "protocol": str(protocol),
        "target": target if isinstance(target, str) else target.authority,
        "rules": rules.canonical() if rules is not None else None,
        "session": rules.session if rules is not None else None,
        "node": node,
        "exit": exit_ip or None,
        "outcome": outcome,
        "status": status,
        "bytes_up": up,
        "bytes_down": down,
        "admission_ms": _ms(started, connect_started),
        "connect_ms": _ms(connect_started, connected),
        "total_ms": _ms(started, ended),
    }
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)


class AccessLog:
    """The bounded queue and its writer thread. `put` is the only method the data path calls."""

    def __init__(
        self, target: str, stats: LiveStats, *, capacity: int = 65536, interval: float = 0.2
    ) -> None:
        if target in ("", OFF):
            raise ValueError("an access log needs a target (stdout, stderr or a file path)")
        self.target = target
        self.stats = stats
        self.capacity = capacity
        self.interval = interval
        self.queue: deque[Entry] = deque()
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._out: IO[str] | None = None
        self._owned = False

    # -- the data path ----------------------------------------------------------------------
    def put(self, entry: Entry) -> None:
        if len(self.queue) < self.capacity:
            self.queue.append(entry)
            self.stats.accesslog_lines += 1
        else:
            self.stats.accesslog_dropped += 1

    # -- life -------------------------------------------------------------------------------
    def start(self) -> None:
        """Open the sink (a regular file now, so a bad path stops the start with its reason;
        a FIFO in the writer, since opening one waits for its reader) and start the writer."""
        if self.target == STDOUT:
            self._out = sys.stdout
        elif self.target == STDERR:
            self._out = sys.stderr
        elif not _is_fifo(self.target):
            self._out = open(self.target, "a", encoding="utf-8")  # noqa: SIM115 - kept open
            self._owned = True
        self._writer = threading.Thread(target=self._run, name="exitgate-accesslog", daemon=True)
        self._writer.start()

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (for at most `timeout` seconds) and stop the writer; the
        writer closes its file as it leaves. A writer stuck in a write (a FIFO nobody reads,
        a hung disk) is left behind: it is a daemon thread, and the relay never waited."""
        self._stop.set()
        thread = self._writer
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("access log %s: writer still blocked at close", self.target)
            else:
                self._writer = None

    # -- the writer thread ------------------------------------------------------------------
    def _run(self) -> None:
        if self._out is None:
            try:
                self._out = open(self.target, "a", encoding="utf-8")  # noqa: SIM115
                self._owned = True
            except OSError as exc:
                log.error("access log %s cannot be opened: %s", self.target, exc.strerror)
                return
        try:
            while True:
                stopping = self._stop.wait(self.interval)
                self._drain()
                if stopping:
                    return
        finally:
            if self._owned and self._out is not None:
                try:
                    self._out.close()
                except OSError as exc:
                    log.warning("access log %s: %s", self.target, exc.strerror)
                self._out = None

    def _drain(self) -> None:
        queue = self.queue
        out = self._out
        while queue and out is not None:
            lines = []
            for _ in range(min(len(queue), BATCH)):
                try:
                    lines.append(format_line(queue.popleft()))
                except Exception:  # one bad entry must not stop the log
                    log.exception("access log entry not formatted")
            if not lines:
                continue
            try:
                out.write("\n".join(lines) + "\n")
                out.flush()
            except (OSError, ValueError) as exc:
                log.warning("access log %s write failed: %s", self.target, exc)
                self.stats.accesslog_failed += len(lines)  # this thread's own counter


def _is_fifo(path: str) -> bool:
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False
