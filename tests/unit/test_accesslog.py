"""The access log's queue and formatter, without a gateway."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from exitgate.model import Target
from exitgate.observe.accesslog import AccessLog, Entry, format_line
from exitgate.observe.stats import LiveStats
from exitgate.rules import Rules


def entry(**changes: object) -> Entry:
    base: list[object] = [
        1_800_000_000.25, "10.0.0.1", "pkg_1", "https", Target("example.com", 443),
        Rules(country="us", session="s1"), "node_1", "203.0.113.9", "OK", 200, 10, 20,
        100.0, 100.002, 100.012, 101.5,
    ]  # fmt: skip
    names = ["at", "client", "package", "protocol", "target", "rules", "node", "exit",
             "outcome", "status", "up", "down", "started", "connect_started", "connected",
             "ended"]  # fmt: skip
    for name, value in changes.items():
        base[names.index(name)] = value
    return tuple(base)  # type: ignore[return-value]


def test_format_line_renders_every_field() -> None:
    line = json.loads(format_line(entry()))
    assert line == {
        "time": "2027-01-15T08:00:00.250Z",
        "client": "10.0.0.1",
        "package": "pkg_1",
        "protocol": "https",
        "target": "example.com:443",
        "rules": "country-us-session-s1",
        "session": "s1",
        "node": "node_1",
        "exit": "203.0.113.9",
        "outcome": "OK",
        "status": 200,
        "bytes_up": 10,
        "bytes_down": 20,
        "admission_ms": 2.0,
        "connect_ms": 10.0,
        "total_ms": 1500.0,
    }


def test_unknown_times_and_a_preformatted_target_are_null_and_kept() -> None:
    line = json.loads(
        format_line(entry(target="[::1]:80", rules=None, started=0.0, connect_started=0.0))
    )
    assert line["target"] == "[::1]:80"
    assert line["rules"] is None and line["session"] is None
    assert line["admission_ms"] is None and line["connect_ms"] is None
    assert line["total_ms"] is None


def test_a_full_queue_drops_and_counts_without_blocking() -> None:
    stats = LiveStats()
    log = AccessLog("stdout", stats, capacity=3)  # not started: nothing drains it
    for _ in range(10):
        log.put(entry())
    assert len(log.queue) == 3
    assert (stats.accesslog_lines, stats.accesslog_dropped) == (3, 7)


def test_writer_batches_lines_into_the_file_and_close_flushes(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    stats = LiveStats()
    log = AccessLog(str(path), stats, interval=5.0)  # only close() wakes it in time
    log.start()
    for i in range(100):
        log.put(entry(status=i))
    log.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["status"] for x in lines] == list(range(100))


def test_a_blocked_fifo_never_blocks_put(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # open, never read
    filler = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:  # the pipe is full before the log writes: its first write blocks, whatever the timing
        while True:
            os.write(filler, b"x" * 65536)
    except BlockingIOError:
        pass
    finally:
        os.close(filler)
    try:
        stats = LiveStats()
        log = AccessLog(str(fifo), stats, capacity=100, interval=0.01)
        log.start()
        for _ in range(20_000):
            log.put(entry())
        assert stats.accesslog_dropped > 0
        assert stats.accesslog_lines + stats.accesslog_dropped == 20_000
        log.close(timeout=0.2)  # the writer is stuck in write(): close gives up, put never did
    finally:
        os.close(reader)
    log.close(timeout=5.0)  # the reader is gone: the write fails, the writer leaves
    assert stats.accesslog_failed > 0


def test_off_is_not_a_sink() -> None:
    with pytest.raises(ValueError, match="target"):
        AccessLog("off", LiveStats())
