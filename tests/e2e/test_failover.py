"""Failure policies, lookalike replacement and node health with exits that really die.

The exits here are upstream HTTP proxies running as child processes (tests/support/
upstream_proxy.py), each bound to its own loopback address so the origin's `/ip` names the
exit. A test kills one with SIGKILL (the port then refuses), or restarts it in a mode that
answers every CONNECT with a status: 403 is the proxy refusing us (a node failure), 502 the
proxy reporting that the target failed (a target failure). The proxy counts the connections
it accepted, so retries are counted on the exit's side of the wire.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests

from exitgate.errors import Code, SocksReply
from exitgate.model import Network, Node, NodeAttrs, NodeKind
from exitgate.store.base import NewNode
from tests.e2e.test_sessions import (
    TIMEOUT,
    VIAS,
    Answer,
    admin,
    last_error,
    open_tunnel,
    session_of,
    via_connect,
    via_forward,
    via_socks,
)
from tests.support.gateway import GatewayThread
from tests.support.origin import EchoServer, Origin, closed_port
from tests.support.socks import socks5_connect
from tests.support.upstream_proxy import UpstreamProcess

REFUSE = 403  # the upstream turns us away: a node failure
Spawn = Callable[..., UpstreamProcess]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start upstream proxy processes; every one is killed at the end."""
    started: list[UpstreamProcess] = []

    def start(bind: str, refuse: int = 0) -> UpstreamProcess:
        proc = UpstreamProcess(bind, refuse=refuse)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def upstream(gw: GatewayThread, proc: UpstreamProcess, *, country: str = "us", region: str = "",
             city: str = "", asn: int = 0) -> Node:
    attrs = NodeAttrs(country, region, city, "", asn, Network.RES)
    new = NewNode(kind=NodeKind.UPSTREAM, attrs=attrs, url=proc.url, ip=proc.bind)
    return gw.call(gw.service.create_node(new))


class Pool:
    """A package and upstream exits on 127.0.0.11, .12, ...; `by_ip` maps exit → process."""

    def __init__(self, gw: GatewayThread, spawn: Spawn, count: int) -> None:
        self.gw = gw
        pkg, self.key = gw.package()
        self.package_id = pkg.id
        self.by_ip: dict[str, UpstreamProcess] = {}
        self.nodes: dict[str, Node] = {}
        for i in range(count):
            proc = spawn(f"127.0.0.{11 + i}")
            self.by_ip[proc.bind] = proc
            self.nodes[proc.bind] = upstream(gw, proc)

    def others(self, ip: str | None) -> list[UpstreamProcess]:
        return [p for bind, p in self.by_ip.items() if bind != ip]

    def connections(self) -> dict[str, int]:
        time.sleep(0.05)  # the `conn` lines travel through a pipe
        return {ip: p.connections for ip, p in self.by_ip.items()}


def socks_failed(pool: Pool, user: str, origin: Origin, code: Code) -> None:
    answer = via_socks(pool.gw, user, pool.key, origin)
    assert answer.status == SocksReply.HOST_UNREACHABLE == 0x04
    assert last_error(pool.gw, pool.package_id)["code"] == code


def http_failed(answer: Answer, status: int, code: Code, fragment: str = "") -> None:
    assert answer.status == status, answer
    assert answer.headers["x-soax-error"] == code
    assert fragment.lower() in answer.headers["x-soax-detail"].lower()


# -- 3. failure policies --------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["forward", "connect", "socks"])
def test_onerror_replace_moves_the_session_transparently(
    gw: GatewayThread, spawn: Spawn, origin: Origin, via: str
) -> None:
    pool = Pool(gw, spawn, 2)
    user = "country-us-session-rep1"
    ask = VIAS[via]
    first = ask(gw, user, pool.key, origin)
    assert first.ip in pool.by_ip
    pool.by_ip[str(first.ip)].kill()
    moved = ask(gw, user, pool.key, origin)
    assert moved.status in (0, 200) and moved.ip not in (None, first.ip)
    again = ask(gw, user, pool.key, origin)
    assert again.ip == moved.ip
    if via != "socks":
        marks = [a.headers["x-exitgate-session"] for a in (first, moved, again)]
        assert marks == ["new", "replaced", "kept"]
    shown = session_of(gw, pool.package_id, "rep1")
    assert shown is not None and shown["node_id"] == pool.nodes[str(moved.ip)].id
    assert shown["requests"] == 3


def test_replacement_on_a_kept_alive_connection_and_in_respond_with(
    gw: GatewayThread, spawn: Spawn, origin: Origin
) -> None:
    pool = Pool(gw, spawn, 3)
    user = "country-us-session-rep2"
    proxies = {"http": gw.proxy_url(user, pool.key)}
    with requests.Session() as client:
        ips = [client.get(f"{origin.url}/ip", proxies=proxies, timeout=TIMEOUT).json()["ip"]
               for _ in range(3)]
        assert len(set(ips)) == 1
        pool.by_ip[ips[0]].kill()  # the kept target connection dies with it
        r = client.get(f"{origin.url}/ip", proxies=proxies, timeout=TIMEOUT)
        assert r.status_code == 200 and r.headers["x-exitgate-session"] == "replaced"
        moved = r.json()["ip"]
        assert moved != ips[0]
    tunnel = via_connect(gw, user, pool.key, origin, "uid,ip")
    assert tunnel.headers["node-uid"] == pool.nodes[moved].id
    assert (tunnel.headers["node-ip"], tunnel.ip) == (moved, moved)
    assert tunnel.headers["x-exitgate-session"] == "kept"


def test_onerror_fail_answers_node_unavailable_and_tries_no_other_node(
    gw: GatewayThread, spawn: Spawn, origin: Origin
) -> None:
    pool = Pool(gw, spawn, 2)
    user = "country-us-session-fail1-onerror-fail"
    first = via_forward(gw, user, pool.key, origin)
    assert first.status == 200
    pool.by_ip[str(first.ip)].kill()
    before = pool.connections()
    http_failed(via_forward(gw, user, pool.key, origin), 502, Code.NODE_UNAVAILABLE, "refused")
    http_failed(via_connect(gw, user, pool.key, origin), 502, Code.NODE_UNAVAILABLE)
    socks_failed(pool, user, origin, Code.NODE_UNAVAILABLE)
    assert pool.connections() == before  # the live node was never tried
    shown = session_of(gw, pool.package_id, "fail1")
    assert shown is not None and shown["node_id"] == pool.nodes[str(first.ip)].id


def test_onerror_retry_retries_then_replaces_then_gives_up(
    gw: GatewayThread, spawn: Spawn, origin: Origin
) -> None:
    pool = Pool(gw, spawn, 2)
    user = "country-us-session-retry1-onerror-retry_2"
    first = via_forward(gw, user, pool.key, origin)
    x = pool.by_ip[str(first.ip)]
    (y,) = pool.others(first.ip)
    # x refuses us: tried 1 + 2 times, then the session moves to y
    x.restart(refuse=REFUSE)
    before = pool.connections()
    moved = via_forward(gw, user, pool.key, origin)
    assert (moved.status, moved.ip) == (200, y.bind)
    assert moved.headers["x-exitgate-session"] == "replaced"
    after = pool.connections()
    assert after[x.bind] - before[x.bind] == 3
    assert after[y.bind] - before[y.bind] == 1
    # now y refuses too, and the only other exit is dead: retries, then a failed replacement
    y.restart(refuse=REFUSE)
    dead = spawn("127.0.0.13")
    upstream(gw, dead)
    dead.kill()
    before = pool.connections()
    answer = via_forward(gw, user, pool.key, origin)
    http_failed(answer, 502, Code.RETRIES_EXHAUSTED, "2 retries")
    assert pool.connections()[y.bind] - before[y.bind] == 3
    http_failed(via_connect(gw, user, pool.key, origin), 502, Code.RETRIES_EXHAUSTED)
    socks_failed(pool, user, origin, Code.RETRIES_EXHAUSTED)


def test_bind_node_never_replaces(gw: GatewayThread, spawn: Spawn, origin: Origin) -> None:
    pool = Pool(gw, spawn, 2)
    user = "country-us-session-bound1-bind-node"
    first = via_connect(gw, user, pool.key, origin)
    assert first.status == 200
    pool.by_ip[str(first.ip)].kill()
    before = pool.connections()
    http_failed(via_forward(gw, user, pool.key, origin), 503, Code.BOUND_NODE_FAILED, "bound")
    http_failed(via_connect(gw, user, pool.key, origin), 503, Code.BOUND_NODE_FAILED)
    socks_failed(pool, user, origin, Code.BOUND_NODE_FAILED)
    assert pool.connections() == before  # the live node was never tried
    # a new session id is the way out
    fresh = via_forward(gw, "country-us-session-bound2-bind-node", pool.key, origin)
    assert fresh.status == 200 and fresh.ip != first.ip


def test_bind_node_with_retries_retries_its_node_then_fails(
    gw: GatewayThread, spawn: Spawn, origin: Origin
) -> None:
    pool = Pool(gw, spawn, 2)
    user = "country-us-session-bound3-bind-node-onerror-retry_2"
    first = via_forward(gw, user, pool.key, origin)
    assert first.status == 200
    node = pool.by_ip[str(first.ip)]
    node.restart(refuse=REFUSE)
    before = pool.connections()
    http_failed(via_forward(gw, user, pool.key, origin), 503, Code.BOUND_NODE_FAILED,
                "after 2 retries")
    after = pool.connections()
    assert after[node.bind] - before[node.bind] == 3
    assert after == {**before, node.bind: after[node.bind]}  # no other node was tried
    node.kill()
    http_failed(via_connect(gw, user, pool.key, origin), 503, Code.BOUND_NODE_FAILED)
    socks_failed(pool, user, origin, Code.BOUND_NODE_FAILED)
    # the node comes back: the bound session is served by it again
    node.restart()
    deadline = time.monotonic() + 6
    while (back := via_forward(gw, user, pool.key, origin)).status != 200:
        assert time.monotonic() < deadline, back
        time.sleep(0.2)
    assert back.ip == first.ip and back.headers["x-exitgate-session"] == "kept"


def test_racing_requests_after_a_death_all_follow_one_replacement(
    gw: GatewayThread, spawn: Spawn, origin: Origin
) -> None:
    pool = Pool(gw, spawn, 4)
    user = "country-us-session-herd"
    first = via_forward(gw, user, pool.key, origin)
    pool.by_ip[str(first.ip)].kill()
    clients = 30
    barrier = threading.Barrier(clients)
    results: list[Answer | BaseException] = [RuntimeError("not run")] * clients

    def client(i: int) -> None:
        try:
            barrier.wait(TIMEOUT)
            results[i] = VIAS[("forward", "connect", "socks")[i % 3]](gw, user, pool.key, origin)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    answers = [r for r in results if isinstance(r, Answer)]
    assert all(a.status in (0, 200) for a in answers), [a.status for a in answers]
    ips = {a.ip for a in answers}
    assert len(ips) == 1 and first.ip not in ips, ips
    shown = session_of(gw, pool.package_id, "herd")
    assert shown is not None and shown["node_id"] == pool.nodes[str(ips.pop())].id


def test_a_rotation_onto_a_dead_node_still_moves_the_session(
    gw: GatewayThread, spawn: Spawn, origin: Origin, echo: EchoServer
) -> None:
    _, key = gw.package()
    gw.direct_node(bind="127.0.0.2", country="us")
    user = "country-us-session-rotd-rotate-requests_1"
    assert via_forward(gw, user, key, origin).ip == "127.0.0.2"
    gw.direct_node(bind="127.0.0.3", country="us", region="r1", city="b")
    dead = spawn("127.0.0.11")
    upstream(gw, dead)
    dead.kill()
    # a tunnel keeps 127.0.0.3 busy, so the rotation deterministically picks the idle dead node
    answer, tunnel, _ = open_tunnel(gw, "country-us-city-b", key, "127.0.0.1", echo.port)
    assert answer.status == 200
    with tunnel:
        moved = via_forward(gw, user, key, origin)
    assert moved.status == 200
    assert moved.ip == "127.0.0.3", "the rotation fell back onto the node it left"


@pytest.mark.parametrize("rules", ["", "-onerror-fail", "-bind-node", "-onerror-retry_1"])
def test_a_target_failure_never_moves_the_session(
    gw: GatewayThread, spawn: Spawn, origin: Origin, rules: str
) -> None:
    pool = Pool(gw, spawn, 2)
    user = f"country-us-session-tgt1{rules}"
    first = via_forward(gw, user, pool.key, origin)
    node = pool.by_ip[str(first.ip)]
    before = pool.connections()
    dead_port = closed_port()
    for _ in range(2):  # more target failures than the breaker's threshold in all
        answer, _, _ = open_tunnel(gw, user, pool.key, "127.0.0.1", dead_port)
        http_failed(answer, 502, Code.TARGET_UNREACHABLE, "refused")
        r = requests.get(f"http://127.0.0.1:{dead_port}/", timeout=TIMEOUT,
                         proxies={"http": gw.proxy_url(user, pool.key)})
        assert (r.status_code, r.headers["x-soax-error"]) == (502, Code.TARGET_UNREACHABLE)
        result = socks5_connect((gw.proxy_host, gw.proxy_port), "127.0.0.1", dead_port, user,
                                pool.key, timeout=TIMEOUT)
        assert result.status == SocksReply.CONNECTION_REFUSED == 0x05
        assert last_error(gw, pool.package_id)["code"] == Code.TARGET_UNREACHABLE
    after = pool.connections()
    assert after[node.bind] - before[node.bind] == 6  # every attempt went through the node
    assert after == {**before, node.bind: after[node.bind]}
    # an upstream that reports the target failed (502) is the target's failure too
    node.restart(refuse=502)
    http_failed(via_forward(gw, user, pool.key, origin), 502, Code.TARGET_UNREACHABLE)
    node.restart()
    kept = via_forward(gw, user, pool.key, origin)
    assert (kept.status, kept.ip, kept.headers["x-exitgate-session"]) == (200, node.bind, "kept")
    shown = session_of(gw, pool.package_id, "tgt1")
    assert shown is not None and shown["requests"] == 9  # target failures reached the node


def test_a_first_request_that_reaches_no_node_leaves_no_session(
    gw: GatewayThread, spawn: Spawn, origin: Origin
) -> None:
    pool = Pool(gw, spawn, 1)
    (proc,) = pool.by_ip.values()
    proc.kill()
    user = "country-us-session-void1-onerror-fail"
    http_failed(via_forward(gw, user, pool.key, origin), 502, Code.NODE_UNAVAILABLE)
    http_failed(via_forward(gw, "country-de-session-void1", pool.key, origin), 502,
                Code.NODE_NOT_FOUND, "country=de")
    assert session_of(gw, pool.package_id, "void1") is None
    # other rules on the same id are no mismatch: nothing was locked
    proc.restart()
    deadline = time.monotonic() + 6  # the exit may be cooling down after its failure
    while (ok := via_forward(gw, "country-us-session-void1", pool.key, origin)).status != 200:
        assert ok.headers["x-soax-error"] == Code.NODE_UNAVAILABLE, ok
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert ok.headers["x-exitgate-session"] == "new"


def test_node_states_set_by_the_admin(gw: GatewayThread, origin: Origin) -> None:
    _, key = gw.package()
    a = gw.direct_node(bind="127.0.0.2", country="us")
    users = ["country-us-session-st1", "country-us-session-st2-bind-node"]
    for user in users:
        assert via_forward(gw, user, key, origin).ip == "127.0.0.2"
    gw.direct_node(bind="127.0.0.3", country="us")
    with admin(gw) as api:
        # draining: the node keeps its sessions, new ones go elsewhere
        assert api.patch(f"/v1/nodes/{a.id}", json={"state": "draining"}).status_code == 200
        for user in users:
            kept = via_forward(gw, user, key, origin)
            assert (kept.ip, kept.headers["x-exitgate-session"]) == ("127.0.0.2", "kept")
        for i in range(6):
            assert via_forward(gw, f"country-us-session-st_new{i}", key, origin).ip == "127.0.0.3"
        # offline: the session is replaced, a bound one fails
        assert api.patch(f"/v1/nodes/{a.id}", json={"state": "offline"}).status_code == 200
        moved = via_forward(gw, users[0], key, origin)
        assert (moved.ip, moved.headers["x-exitgate-session"]) == ("127.0.0.3", "replaced")
        http_failed(via_forward(gw, users[1], key, origin), 503, Code.BOUND_NODE_FAILED,
                    "offline")


# -- 4. prefer-lookalike --------------------------------------------------------------------------


def test_prefer_lookalike_replaces_with_the_most_similar_node(
    gw: GatewayThread, spawn: Spawn, origin: Origin
) -> None:
    _, key = gw.package()
    ref = spawn("127.0.0.11")
    upstream(gw, ref, region="r1", city="a", asn=100)
    like = [f"country-us-session-lk{i}-prefer-lookalike" for i in range(4)]
    plain = [f"country-us-session-pl{i}" for i in range(8)]
    for user in like + plain:  # the reference is the only node: every session starts on it
        assert via_forward(gw, user, key, origin).ip == ref.bind
    best = spawn("127.0.0.12")  # same ASN and city (and region)
    upstream(gw, best, region="r1", city="a", asn=100)
    second = spawn("127.0.0.13")  # same ASN and region
    upstream(gw, second, region="r1", city="b", asn=100)
    gw.direct_node(bind="127.0.0.21", country="us", region="r2", city="c", asn=100)  # ASN
    gw.direct_node(bind="127.0.0.22", country="us", region="r1", city="a", asn=200)  # city
    gw.direct_node(bind="127.0.0.23", country="us", region="r3", city="d", asn=300)  # nothing
    ref.kill()
    for i, user in enumerate(like):
        moved = VIAS[("forward", "connect")[i % 2]](gw, user, key, origin)
        assert (moved.ip, moved.headers["x-exitgate-session"]) == (best.bind, "replaced"), user
    # without prefer-lookalike the replacements spread (else the check above proves nothing)
    assert len({via_forward(gw, user, key, origin).ip for user in plain}) >= 2
    best.kill()  # the sessions are on `best` now: the next most like it is `second`
    for user in like:
        moved = via_forward(gw, user, key, origin)
        assert (moved.ip, moved.headers["x-exitgate-session"]) == (second.bind, "replaced"), user


def test_prefer_lookalike_applies_to_rotations(gw: GatewayThread, origin: Origin) -> None:
    _, key = gw.package()
    gw.direct_node(bind="127.0.0.2", country="us", region="r1", city="a", asn=100)
    user = "country-us-session-lkr-rotate-requests_1-prefer-lookalike"
    assert via_forward(gw, user, key, origin).ip == "127.0.0.2"
    gw.direct_node(bind="127.0.0.3", country="us", region="r1", city="a", asn=100)
    gw.direct_node(bind="127.0.0.4", country="us", region="r1", city="a", asn=200)
    gw.direct_node(bind="127.0.0.5", country="us", region="r9", city="z", asn=300)
    answers = [via_forward(gw, user, key, origin) for _ in range(6)]
    # every rotation goes to the other node of ASN 100 in city a, never to the rest
    assert [a.ip for a in answers] == ["127.0.0.3", "127.0.0.2"] * 3
    assert {a.headers["x-exitgate-session"] for a in answers} == {"rotated"}


# -- 5. node health --------------------------------------------------------------------------------


def test_a_dead_exit_is_avoided_within_seconds(
    gw: GatewayThread, spawn: Spawn, origin: Origin
) -> None:
    pool = Pool(gw, spawn, 2)
    a, b = pool.by_ip["127.0.0.11"], pool.by_ip["127.0.0.12"]
    # an exit that refuses us fails every use, and counts the attempts it got
    a.restart(refuse=REFUSE)
    before = pool.connections()[a.bind]
    for _ in range(20):
        assert via_forward(gw, "country-us", pool.key, origin).ip == b.bind
    assert pool.connections()[a.bind] - before <= 3  # about 10 of 20 if it were not avoided
    # a killed exit: every request still succeeds through the other one, at once
    a.kill()
    started = time.monotonic()
    for i in range(20):
        answer = VIAS[("forward", "connect", "socks")[i % 3]](gw, "country-us", pool.key, origin)
        assert (answer.status in (0, 200), answer.ip) == (True, b.bind)
    assert time.monotonic() - started < 4.0


def test_a_dead_exit_that_comes_back_is_used_again_after_the_cool_down(
    gw: GatewayThread, spawn: Spawn, origin: Origin
) -> None:
    pool = Pool(gw, spawn, 2)
    a, b = pool.by_ip["127.0.0.11"], pool.by_ip["127.0.0.12"]
    a.kill()
    for _ in range(10):
        assert via_forward(gw, "country-us", pool.key, origin).ip == b.bind
    a.restart()  # same port, working again
    deadline = time.monotonic() + 5.0  # cool-downs start at 1 s and double per failed probe
    while True:
        if via_forward(gw, "country-us", pool.key, origin).ip == a.bind:
            break
        assert time.monotonic() < deadline, "the exit that came back was not used again"
        time.sleep(0.05)
