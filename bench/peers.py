"""The comparison proxies: configuration, start, version.

Every peer is bound to 127.0.0.1 on a free port, with its access log off, Basic or RFC 1929
authentication on where it has it, and limits (descriptors, clients, backlog) raised so that
5,000 idle tunnels fit. Each runs in the foreground as a child of the benchmark.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.install import DANTE_PASS, DANTE_USER, PEERS_VENV, ROOT
from bench.procs import Proc, free_port, wait_port

USER = "country-us"
PASS = "benchpass42"  # the peers' password; exitgate's is its package key

CONNECT, FORWARD, SOCKS5 = "connect", "forward", "socks5"


@dataclass(slots=True)
class Server:
    """A proxy the load generator can be pointed at (a peer, or an exitgate instance)."""

    name: str
    lang: str
    caps: frozenset[str]
    user: str = USER
    password: str = PASS
    port: int = 0
    proc: Proc | None = None
    extra_pids: list[Proc] = field(default_factory=list)

    def pids(self) -> list[int]:
        """Roots of the process trees whose CPU and memory count as 'the gateway'."""
        procs = [self.proc, *self.extra_pids]
        return [p.pid for p in procs if p is not None and p.alive()]

    def start(self, workdir: Path) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        for p in [*self.extra_pids, self.proc]:
            if p is not None:
                p.stop()

    def version(self) -> str:
        raise NotImplementedError

    def _launch(self, argv: list[str], workdir: Path, timeout: float = 20.0) -> None:
        self.proc = Proc(self.name, argv, workdir / f"{self.name}.log", cwd=workdir)
        self.proc.start()
        if not wait_port(self.port, timeout, self.proc.popen):
            tail = self.proc.tail()
            self.proc.stop()
            raise RuntimeError(f"{self.name} did not start listening on {self.port}:\n{tail}")


def _first_line(argv: list[str]) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    out = (r.stdout or r.stderr).strip().splitlines()
    return out[0].strip() if out else "?"


class Squid(Server):
    def __init__(self) -> None:
        super().__init__("squid", "C++", frozenset({CONNECT, FORWARD}))

    def start(self, workdir: Path) -> None:
        self.port = self.port or free_port()  # a restart keeps the port
        d = workdir / "squid"
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o777)  # squid drops to its own user after start
        pw = subprocess.run(
            ["openssl", "passwd", "-apr1", self.password],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        (d / "passwd").write_text(f"{self.user}:{pw}\n")
        (d / "passwd").chmod(0o644)
        conf = d / "squid.conf"
        conf.write_text(
            f"""http_port 127.0.0.1:{self.port}
pid_filename none
access_log none
cache_store_log none
cache_log {d}/cache.log
debug_options ALL,0
logfile_rotate 0
coredump_dir {d}
cache deny all
dns_nameservers 127.0.0.1
shutdown_lifetime 0 seconds
max_filedescriptors 20000
auth_param basic program /usr/lib/squid/basic_ncsa_auth {d}/passwd
auth_param basic children 4 startup=2 idle=1
auth_param basic realm bench
auth_param basic credentialsttl 2 hours
acl authed proxy_auth REQUIRED
http_access allow authed
http_access deny all
"""
        )
        # -N: no daemon, no kid processes; one process to measure.
        self._launch(["squid", "-N", "-f", str(conf)], workdir)

    def version(self) -> str:
        return _first_line(["squid", "-v"]).replace("Squid Cache: Version ", "squid ")


class Tinyproxy(Server):
    def __init__(self) -> None:
        super().__init__("tinyproxy", "C", frozenset({CONNECT, FORWARD}))

    def start(self, workdir: Path) -> None:
        self.port = self.port or free_port()  # a restart keeps the port
        conf = workdir / "tinyproxy.conf"
        conf.write_text(
            f"""User nobody
Group nogroup
Port {self.port}
Listen 127.0.0.1
Timeout 600
MaxClients 6000
LogLevel Critical
DisableViaHeader Yes
BasicAuth {self.user} {self.password}
"""
        )
        self._launch(["tinyproxy", "-d", "-c", str(conf)], workdir)

    def version(self) -> str:
        return _first_line(["tinyproxy", "-v"])


class Dante(Server):
    def __init__(self) -> None:
        super().__init__("dante", "C", frozenset({SOCKS5}), user=DANTE_USER, password=DANTE_PASS)

    def start(self, workdir: Path) -> None:
        self.port = self.port or free_port()  # a restart keeps the port
        conf = workdir / "danted.conf"
        conf.write_text(
            f"""logoutput: /dev/null
errorlog: {workdir}/danted.err
internal: 127.0.0.1 port = {self.port}
external: 127.0.0.1
socksmethod: username
clientmethod: none
user.privileged: root
user.unprivileged: nobody
client pass {{
  from: 127.0.0.0/8 to: 0.0.0.0/0
}}
socks pass {{
  from: 127.0.0.0/8 to: 127.0.0.0/8
  command: connect
}}
"""
        )
        self._launch(["danted", "-f", str(conf), "-p", str(workdir / "danted.pid")], workdir)

    def version(self) -> str:
        return _first_line(["danted", "-v"]).split(".  Copyright")[0].replace("Dante v", "dante ")


class ProxyPy(Server):
    def __init__(self) -> None:
        super().__init__("proxy.py", "Python", frozenset({CONNECT, FORWARD}))

    def start(self, workdir: Path) -> None:
        self.port = self.port or free_port()  # a restart keeps the port
        argv = [
            str(PEERS_VENV / "bin" / "proxy"),
            "--hostname",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--basic-auth",
            f"{self.user}:{self.password}",
            "--log-level",
            "ERROR",
            "--backlog",
            "4096",
            "--timeout",
            "600",
            "--open-file-limit",
            "20000",
        ]
        self._launch(argv, workdir)

    def version(self) -> str:
        return "proxy.py " + _first_line([str(PEERS_VENV / "bin" / "proxy"), "--version"])


class Pproxy(Server):
    def __init__(self) -> None:
        super().__init__("pproxy", "Python", frozenset({CONNECT, FORWARD, SOCKS5}))

    def start(self, workdir: Path) -> None:
        self.port = self.port or free_port()  # a restart keeps the port
        # --auth 0: pproxy otherwise trusts a client IP for 30 days after one good login,
        # and would skip the credential check the other proxies do on every connection.
        argv = [
            str(PEERS_VENV / "bin" / "pproxy"),
            "-l",
            f"http+socks5://127.0.0.1:{self.port}/#{self.user}:{self.password}",
            "--auth",
            "0",
        ]
        self._launch(argv, workdir)

    def version(self) -> str:
        return (
            "pproxy " + _first_line([str(PEERS_VENV / "bin" / "pproxy"), "--version"]).split()[-1]
        )


class Floor(Server):
    """The Python floor (bench/floorproxy.py): uvloop callbacks, one fixed credential, relay.

    Runs on the project's venv (it needs only uvloop). It tunnels (CONNECT and SOCKS5) but
    does not forward, so it has no forward_rps cell.
    """

    def __init__(self) -> None:
        super().__init__("floor", "Python", frozenset({CONNECT, SOCKS5}))

    def start(self, workdir: Path) -> None:
        self.port = self.port or free_port()  # a restart keeps the port
        script = Path(__file__).with_name("floorproxy.py")
        python = ROOT / ".venv" / "bin" / "python"
        self._launch([str(python), str(script), str(self.port), self.user, self.password], workdir)

    def version(self) -> str:
        return (
            "bench/floorproxy.py (uvloop "
            + _first_line(
                [
                    str(ROOT / ".venv" / "bin" / "python"),
                    "-c",
                    "import uvloop; print(uvloop.__version__)",
                ]
            )
            + ")"
        )


PEERS: dict[str, Callable[[], Server]] = {
    "squid": Squid,
    "tinyproxy": Tinyproxy,
    "dante": Dante,
    "proxy.py": ProxyPy,
    "pproxy": Pproxy,
    "floor": Floor,
}
