"""Every error code this gateway can produce, over HTTP (CONNECT and forward) and SOCKS5.

Each case builds its situation on a live gateway, then the same request is made three ways:
a CONNECT, an absolute-form GET, and a SOCKS5 CONNECT. HTTP answers must carry the status,
`X-SOAX-Error`, `X-SOAX-Detail`, `Proxy-Status` and the `CODE: detail` body; SOCKS5 answers
the catalogued byte at the catalogued stage; and the error lands in the package's log.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from exitgate.errors import CATALOGUE, Code
from exitgate.model import Network, PackageStatus, Protocol
from exitgate.store.base import OrgUpdate, PackageUpdate
from tests.support.gateway import GatewayThread, basic, parse_response, raw_exchange
from tests.support.origin import Origin, closed_port
from tests.support.socks import socks5_connect


@dataclass
class Situation:
    user: str | None  # None: no credentials at all
    key: str
    host: str
    port: int
    package_id: str | None = None


@pytest.fixture
def silent_proxy() -> Iterator[int]:
    """A TCP server that accepts and never answers: an upstream proxy that hangs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join()
    for s in held:
        s.close()
    server.close()


Setup = Callable[[GatewayThread, Origin, int], Situation]


def _ok(gw: GatewayThread, origin: Origin, **package: object) -> tuple[str, str]:
    pkg, key = gw.package(**package)
    gw.direct_node(bind="127.0.0.2", country="us", city="new_york", region="new_york",
                   isp="lab_isp", network=Network.RES)
    return pkg.id, key


def s_auth_required(gw, origin, hang) -> Situation:
    _ok(gw, origin)
    return Situation(None, "", "127.0.0.1", origin.port)


def s_auth_failed(gw, origin, hang) -> Situation:
    _ok(gw, origin)
    return Situation("country-us", "not-a-key", "127.0.0.1", origin.port)


def s_ip_not_allowed(gw, origin, hang) -> Situation:
    pid, key = _ok(gw, origin, ip_allowlist=(__import__("ipaddress").ip_network("10.9.0.0/16"),))
    return Situation("country-us", key, "127.0.0.1", origin.port, pid)


def _status(status: PackageStatus) -> Setup:
    def setup(gw, origin, hang) -> Situation:
        pid, key = _ok(gw, origin)
        gw.call(gw.service.update_package(pid, PackageUpdate(status=status)))
        return Situation("country-us", key, "127.0.0.1", origin.port, pid)
    return setup


def s_no_credits(gw, origin, hang) -> Situation:
    pid, key = _ok(gw, origin)
    org_id = gw.gateway.registry.package(pid).org_id
    gw.call(gw.service.update_org(org_id, OrgUpdate(credits=0)))
    return Situation("country-us", key, "127.0.0.1", origin.port, pid)


def s_protocol(gw, origin, hang) -> Situation:
    pid, key = _ok(gw, origin, protocols=frozenset())
    return Situation("country-us", key, "127.0.0.1", origin.port, pid)


def s_mail_port(gw, origin, hang) -> Situation:
    pid, key = _ok(gw, origin)
    return Situation("country-us", key, "127.0.0.1", 25, pid)


def _rules(user: str, **package: object) -> Setup:
    def setup(gw, origin, hang) -> Situation:
        pid, key = _ok(gw, origin, **package)
        return Situation(user, key, "127.0.0.1", origin.port, pid)
    return setup


def s_node_unavailable(gw, origin, hang) -> Situation:
    pkg, key = gw.package()
    gw.upstream_node(f"http://127.0.0.1:{closed_port()}", country="fr")
    return Situation("country-fr", key, "127.0.0.1", origin.port, pkg.id)


def s_target_refused(gw, origin, hang) -> Situation:
    pid, key = _ok(gw, origin)
    return Situation("country-us", key, "127.0.0.1", closed_port(), pid)


def s_timeout(gw, origin, hang) -> Situation:
    pkg, key = gw.package()
    gw.upstream_node(f"http://127.0.0.1:{hang}", country="jp")
    return Situation("country-jp", key, "127.0.0.1", origin.port, pkg.id)


# (case id, setup, code, detail fragment, SOCKS stage, SOCKS status)
CASES: list[tuple[str, Setup, Code, str, str, int]] = [
    ("auth_required", s_auth_required, Code.ERR_AUTH_REQUIRED, "No credentials", "method", 0xFF),
    ("auth_failed", s_auth_failed, Code.AUTH_FAILED, "package key", "auth", 0x01),
    ("ip_not_allowed", s_ip_not_allowed, Code.IP_NOT_ALLOWED, "127.0.0.1", "auth", 0x01),
    ("paused", _status(PackageStatus.PAUSED), Code.PACKAGE_PAUSED, "paused", "auth", 0x01),
    ("suspended", _status(PackageStatus.SUSPENDED), Code.PACKAGE_SUSPENDED, "suspended",
     "auth", 0x01),
    ("no_credits", s_no_credits, Code.PACKAGE_NO_CREDITS, "credits", "auth", 0x01),
    ("protocol", s_protocol, Code.DISALLOWED, "not in allowed list", "reply", 0x02),
    ("mail_port", s_mail_port, Code.DISALLOWED, "port 25", "reply", 0x02),
    ("missing", _rules("session-abc"), Code.ERR_MISSING_PARAMS, "targeting", "reply", 0x02),
    ("unknown", _rules("country-us-city-los-angeles"), Code.ERR_UNKNOWN_PARAM, "angeles",
     "reply", 0x02),
    ("duplicate", _rules("country-us-country-de"), Code.ERR_DUPLICATE_PARAM, "country",
     "reply", 0x02),
    ("invalid", _rules("country-USA"), Code.ERR_INVALID_VALUE, "USA", "reply", 0x02),
    ("combination", _rules("country-us-session-a1-bind-node-rotate-timed_5"),
     Code.ERR_INVALID_COMBINATION, "bind", "reply", 0x02),
    ("not_allowed", _rules("country-us-network-mob", networks=frozenset({Network.RES})),
     Code.ERR_PARAM_NOT_ALLOWED, "mob", "reply", 0x02),
    ("not_allowed_rule", _rules("country-us-isp-lab_isp", rules=frozenset({"country"})),
     Code.ERR_PARAM_NOT_ALLOWED, "isp", "reply", 0x02),
    ("node_not_found", _rules("country-us-city-new_york-network-mob"), Code.NODE_NOT_FOUND,
     "country=us, city=new_york, network=mob", "reply", 0x03),
    ("node_unavailable", s_node_unavailable, Code.NODE_UNAVAILABLE, "refused", "reply", 0x04),
    ("target_refused", s_target_refused, Code.TARGET_UNREACHABLE, "refused", "reply", 0x05),
    ("gateway_timeout", s_timeout, Code.GATEWAY_TIMEOUT, "timed out", "reply", 0x06),
]


@pytest.fixture
def fast_gw(tmp_path) -> Iterator[GatewayThread]:
    gateway = GatewayThread(tmp_path, exit={"connect_timeout": 1.0, "response_timeout": 1.0})
    yield gateway
    gateway.stop()


def _check_http(raw: bytes, code: Code, fragment: str) -> None:
    status, headers, body = parse_response(raw)
    spec = CATALOGUE[code]
    assert status == spec.status, raw
    assert headers["x-soax-error"] == code
    detail = headers["x-soax-detail"]
    assert fragment.lower() in detail.lower()
    assert headers["proxy-status"].startswith("exitgate; error=")
    assert body.decode() == f"{code}: {detail}\n"
    if status == 407:
        assert headers["proxy-authenticate"] == 'Basic realm="exitgate"'


@pytest.mark.parametrize(("name", "setup", "code", "fragment", "stage", "socks"), CASES,
                         ids=[c[0] for c in CASES])
def test_error_over_http_connect(fast_gw, origin, silent_proxy, name, setup, code, fragment,
                                 stage, socks) -> None:
    s = setup(fast_gw, origin, silent_proxy)
    auth = f"Proxy-Authorization: {basic(s.user, s.key)}\r\n" if s.user is not None else ""
    request = f"CONNECT {s.host}:{s.port} HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode()
    _check_http(raw_exchange(fast_gw.proxy_host, fast_gw.proxy_port, request), code, fragment)
    if s.package_id is not None:
        log = fast_gw.gateway.recorder.recent_errors(s.package_id)
        assert log[0]["code"] == code and log[0]["protocol"] == Protocol.HTTPS


@pytest.mark.parametrize(("name", "setup", "code", "fragment", "stage", "socks"), CASES,
                         ids=[c[0] for c in CASES])
def test_error_over_http_forward(fast_gw, origin, silent_proxy, name, setup, code, fragment,
                                 stage, socks) -> None:
    s = setup(fast_gw, origin, silent_proxy)
    if name == "gateway_timeout":
        # forwarded: the response head is late (the exit works, the target is slow)
        s = Situation("country-us", _ok(fast_gw, origin)[1], "127.0.0.1", origin.port)
        path = "/slow/3"
    else:
        path = "/ip"
    auth = f"Proxy-Authorization: {basic(s.user, s.key)}\r\n" if s.user is not None else ""
    request = (f"GET http://{s.host}:{s.port}{path} HTTP/1.1\r\nHost: x\r\n{auth}"
               "Connection: close\r\n\r\n").encode()
    _check_http(raw_exchange(fast_gw.proxy_host, fast_gw.proxy_port, request), code,
                "no response" if name == "gateway_timeout" else fragment)


@pytest.mark.parametrize(("name", "setup", "code", "fragment", "stage", "socks"), CASES,
                         ids=[c[0] for c in CASES])
def test_error_over_socks5(fast_gw, origin, silent_proxy, name, setup, code, fragment, stage,
                           socks) -> None:
    s = setup(fast_gw, origin, silent_proxy)
    result = socks5_connect((fast_gw.proxy_host, fast_gw.proxy_port), s.host, s.port,
                            s.user, s.key if s.user is not None else None)
    assert (result.stage, result.status) == (stage, socks)
    if s.package_id is not None:
        log = fast_gw.gateway.recorder.recent_errors(s.package_id)
        assert log[0]["code"] == code and log[0]["protocol"] == Protocol.SOCKS5
        assert fragment.lower() in str(log[0]["detail"]).lower()
