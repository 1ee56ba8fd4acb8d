"""`exitgate serve --workers N`: N gateway processes on one host behind one proxy port.

Python runs one event loop per process on one core; a gateway host with more cores runs more
processes. The supervisor (this module, in the parent process) starts N workers, each a plain
`exitgate serve` with:

- the proxy and hub listeners bound with `SO_REUSEPORT`, so the kernel spreads connections
  (and agents) over the workers;
- the admin listener (API, dashboard, /metrics) on worker 0 only;
- an interlink on an ephemeral loopback port (unless `[cluster] listen` is set), so an agent
  held by one worker serves requests admitted by another;
- everything else shared through the store and Redis, exactly as separate instances share it:
  that is why N > 1 without `[store] redis_url` stops with an error.

Secrets the workers would otherwise generate (admin and hub tokens) are made here first, so
they agree. A worker that dies is restarted after a delay that doubles while it keeps dying
young (1 s .. 30 s); SIGTERM or SIGINT stops them all (SIGTERM, then SIGKILL after `grace`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from exitgate.settings import Settings, split_hostport

log = logging.getLogger("exitgate.supervisor")

GRACE = 15.0
YOUNG = 10.0  # a worker that dies sooner than this after its start is restarted more slowly
MAX_DELAY = 30.0


class WorkersError(ValueError):
    """The settings cannot run several workers; the message says why."""


def check(settings: Settings, workers: int, demo: bool) -> None:
    if workers < 1:
        raise WorkersError("--workers must be at least 1")
    if workers == 1:
        return
    if demo:
        raise WorkersError("--demo runs one process; drop --workers")
    if not settings.store.redis_url:
        raise WorkersError(
            "--workers N > 1 needs [store] redis_url: the workers share sessions, limits and "
            "agents through Redis (and should share a PostgreSQL store)"
        )


def worker_env(index: int, settings: Settings, admin_token: str, hub_token: str) -> dict[str, str]:
    """The environment of worker `index`: settings overrides on top of the parent's env."""
    env = dict(os.environ)
    env["EXITGATE_PROXY_REUSE_PORT"] = "true"
    env["EXITGATE_HUB_REUSE_PORT"] = "true"
    env["EXITGATE_ADMIN_TOKEN"] = admin_token
    env["EXITGATE_HUB_TOKEN"] = hub_token
    # every worker needs an interlink port of its own: the configured address (or loopback)
    # with an ephemeral port, advertised with the port it gets
    cluster = settings.cluster
    host = split_hostport(cluster.listen)[0] if cluster.listen else "127.0.0.1"
    shown = split_hostport(cluster.advertise)[0] if cluster.advertise else host
    env["EXITGATE_CLUSTER_LISTEN"] = f'"{_join(host, 0)}"'
    env["EXITGATE_CLUSTER_ADVERTISE"] = f'"{_join(shown, 0)}"' if cluster.advertise else '""'
    if index > 0:
        env["EXITGATE_ADMIN_LISTEN"] = '""'  # worker 0 alone serves the admin API
    env["EXITGATE_WORKER_INDEX"] = str(index)
    return env


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent goes (Linux PR_SET_PDEATHSIG)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    delay: float = 1.0


class Supervisor:
    def __init__(
        self, settings: Settings, config: Path | None, workers: int, *, grace: float = GRACE
    ) -> None:
        from exitgate.app import HUB_TOKEN_FILE, admin_token, stored_secret

        self.settings = settings
        self.config = config
        self.count = workers
        self.grace = grace
        self.admin_token, _ = admin_token(settings)
        self.hub_token, _ = stored_secret(settings, settings.hub.token, HUB_TOKEN_FILE)
        self.workers: dict[int, _Worker] = {}
        self.stopping = False

    def _spawn(self, index: int, delay: float = 1.0) -> None:
        command = [sys.executable, "-m", "exitgate", "serve"]
        if self.config is not None:
            command += ["--config", str(self.config)]
        env = worker_env(index, self.settings, self.admin_token, self.hub_token)
        # a worker dies with its supervisor, even one killed with SIGKILL (no orphans)
        proc = subprocess.Popen(command, env=env, preexec_fn=_die_with_parent)  # noqa: S603, PLW1509
        self.workers[index] = _Worker(index, proc, delay=delay)
        log.info("worker %d started (pid %d)", index, proc.pid)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        for index in range(self.count):
            self._spawn(index)
        restart_at: dict[int, tuple[float, float]] = {}
        while not self.stopping:
            time.sleep(0.2)
            now = time.monotonic()
            for index, worker in list(self.workers.items()):
                code = worker.proc.poll()
                if code is None or index in restart_at:
                    continue
                young = now - worker.started < YOUNG
                delay = min(worker.delay * 2, MAX_DELAY) if young else 1.0
                log.warning("worker %d (pid %d) exited with %s; restarting in %.0f s",
                            index, worker.proc.pid, code, delay)
                restart_at[index] = (now + delay, delay)
            for index, (when, delay) in list(restart_at.items()):
                if now >= when and not self.stopping:
                    del restart_at[index]
                    self._spawn(index, delay)
        return self.stop()

    def stop(self) -> int:
        live = [w.proc for w in self.workers.values() if w.proc.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for proc in live:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop in %.0f s: killed", proc.pid, self.grace)
                proc.kill()
                proc.wait(5)
        return 0


__all__ = ["Supervisor", "WorkersError", "check", "worker_env"]
