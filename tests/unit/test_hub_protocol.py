"""The agent ⇄ hub wire contract (hub/protocol.py): hello, reply, CONNECT head, answers."""

from __future__ import annotations

import json

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from exitgate.errors import Code, SocksReply
from exitgate.hub.protocol import (
    MAGIC,
    Failure,
    Hello,
    HelloError,
    RefusalKind,
    check_attrs,
    classify,
    connect_headers,
    encode_hello,
    encode_ok,
    encode_refusal,
    failure_headers,
    ok_headers,
    parse_connect,
    parse_hello,
    parse_reply,
)
from exitgate.model import Network, NodeAttrs, Target

ATTRS = NodeAttrs("us", "new_york", "new_york", "verizon", 701, Network.MOB)


def hello_line(**body: object) -> bytes:
    base: dict[str, object] = {"token": "t0ken", "id": "a-1", "attrs": {"country": "us"}}
    base.update(body)
    return MAGIC + json.dumps(base).encode()


def test_hello_round_trip() -> None:
    hello = Hello("secret", "home.1_x", ATTRS, "203.0.113.9")
    line = encode_hello(hello)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert parse_hello(line.rstrip(b"\n")) == hello


def test_hello_defaults_network_res_and_normalises_ip() -> None:
    hello = parse_hello(hello_line(ip="2001:DB8::1"))
    assert hello.attrs == NodeAttrs(country="us", network=Network.RES)
    assert hello.ip == "2001:db8::1"


@pytest.mark.parametrize(
    ("line", "kind", "words"),
    [
        (b"GET / HTTP/1.1", RefusalKind.PROTOCOL, "not an exitgate"),
        (MAGIC + b"{nope", RefusalKind.PROTOCOL, "JSON"),
        (MAGIC + b"[1]", RefusalKind.PROTOCOL, "object"),
        (hello_line(token=""), RefusalKind.AUTH, "token"),
        (hello_line(token=5), RefusalKind.AUTH, "token"),
        (hello_line(id=""), RefusalKind.INVALID, "id"),
        (hello_line(id="-x"), RefusalKind.INVALID, "id"),
        (hello_line(id="a" * 65), RefusalKind.INVALID, "id"),
        (hello_line(id="a b"), RefusalKind.INVALID, "id"),
        (hello_line(attrs={"country": "US"}), RefusalKind.INVALID, "country 'US'"),
        (hello_line(attrs={"country": "usa"}), RefusalKind.INVALID, "country"),
        (hello_line(attrs={"country": "uk"}), RefusalKind.INVALID, "country"),
        (hello_line(attrs={"city": "New York"}), RefusalKind.INVALID, "city 'New York'"),
        (hello_line(attrs={"city": "new-york"}), RefusalKind.INVALID, "city"),
        (hello_line(attrs={"city": "new__york"}), RefusalKind.INVALID, "city"),
        (hello_line(attrs={"isp": "x" * 101}), RefusalKind.INVALID, "isp"),
        (hello_line(attrs={"region": 5}), RefusalKind.INVALID, "region"),
        (hello_line(attrs={"asn": -1}), RefusalKind.INVALID, "asn"),
        (hello_line(attrs={"asn": 2**32}), RefusalKind.INVALID, "asn"),
        (hello_line(attrs={"asn": True}), RefusalKind.INVALID, "asn"),
        (hello_line(attrs={"asn": "701"}), RefusalKind.INVALID, "asn"),
        (hello_line(attrs={"network": "wifi"}), RefusalKind.INVALID, "network"),
        (hello_line(attrs={"colour": "red"}), RefusalKind.INVALID, "unknown attribute"),
        (hello_line(attrs=[]), RefusalKind.INVALID, "attrs"),
        (hello_line(ip="not-an-ip"), RefusalKind.INVALID, "ip"),
    ],
)
def test_hello_refusals_name_the_problem(line: bytes, kind: RefusalKind, words: str) -> None:
    with pytest.raises(HelloError) as info:
        parse_hello(line)
    assert info.value.kind is kind
    assert words in info.value.reason


@given(suffix=st.text(max_size=40), city=st.text(max_size=30), asn=st.integers())
def test_a_refusal_never_quotes_the_token(suffix: str, city: str, asn: int) -> None:
    assume("S3CR3T" not in city)
    token = "S3CR3T" + suffix
    line = hello_line(token=token, attrs={"city": city, "asn": asn})
    try:
        parse_hello(line)
    except HelloError as exc:
        assert "S3CR3T" not in exc.reason


def test_check_attrs_accepts_rule_values() -> None:
    attrs = check_attrs(
        country="de", region="bavaria", city="munich", isp="deutsche_telekom", asn=3320,
        network="res",
    )
    assert attrs == NodeAttrs("de", "bavaria", "munich", "deutsche_telekom", 3320, Network.RES)
    assert check_attrs(country="", region="", city="", isp="", asn=0, network="dc").country == ""


def test_replies_round_trip() -> None:
    ok = parse_reply(encode_ok("a-1", "10.0.0.2").rstrip(b"\n"))
    assert ok.ok and ok.agent_id == "a-1" and ok.ip == "10.0.0.2"
    no = parse_reply(encode_refusal(RefusalKind.AUTH, "wrong token").rstrip(b"\n"))
    assert not no.ok and no.kind is RefusalKind.AUTH and no.reason == "wrong token"
    garbled = parse_reply(b"HTTP/1.1 400 Bad Request")
    assert not garbled.ok and garbled.kind is RefusalKind.PROTOCOL
    odd = parse_reply(b'NO {"error": "martian", "reason": "x"}')
    assert odd.kind is RefusalKind.PROTOCOL


@pytest.mark.parametrize(
    ("target", "authority"),
    [
        (Target("example.com", 443), b"example.com:443"),
        (Target("2001:db8::1", 8080), b"[2001:db8::1]:8080"),
        (Target("127.0.0.1", 80), b"127.0.0.1:80"),
        (Target("bücher.de", 443), b"xn--bcher-kva.de:443"),
    ],
)
def test_connect_head_round_trip(target: Target, authority: bytes) -> None:
    headers = connect_headers(target, 7.5, allow_private=False)
    assert dict(headers)[b":authority"] == authority
    request = parse_connect(headers, max_timeout=30.0)
    assert request.target.port == target.port
    assert request.timeout == 7.5
    assert request.allow_private is False
    assert parse_connect(connect_headers(target, 99, True), max_timeout=30.0).timeout == 30.0


def test_connect_head_refuses_an_unencodable_name() -> None:
    with pytest.raises(ValueError):
        connect_headers(Target("a" * 70 + "ü.de", 443), 5, False)


@pytest.mark.parametrize(
    "authority",
    [b"", b"example.com", b"example.com:0", b"example.com:65536", b"exa mple.com:80",
     b"[zz::1]:80", b":80", b"example.com:http"],
)
def test_parse_connect_refuses_bad_authorities(authority: bytes) -> None:
    with pytest.raises(ValueError):
        parse_connect([(b":method", b"CONNECT"), (b":authority", authority)], 10)


def test_parse_connect_refuses_other_methods() -> None:
    with pytest.raises(ValueError):
        parse_connect([(b":method", b"GET"), (b":authority", b"a:1")], 10)


T = Target("example.com", 443)


def test_classify_success_reads_the_bound_address() -> None:
    assert classify(ok_headers(("192.0.2.7", 50123)), T).bound == ("192.0.2.7", 50123)
    assert classify(ok_headers(("2001:db8::7", 1)), T).bound == ("2001:db8::7", 1)
    assert classify([(b":status", b"200")], T).bound == ("", 0)


@pytest.mark.parametrize(
    ("kind", "code", "proxy_status", "socks"),
    [
        (Failure.DNS, Code.TARGET_UNREACHABLE, "dns_error", SocksReply.HOST_UNREACHABLE),
        (Failure.REFUSED, Code.TARGET_UNREACHABLE, "connection_refused",
         SocksReply.CONNECTION_REFUSED),
        (Failure.UNREACHABLE, Code.TARGET_UNREACHABLE, "destination_unavailable",
         SocksReply.HOST_UNREACHABLE),
        (Failure.TIMEOUT, Code.GATEWAY_TIMEOUT, "connection_timeout", SocksReply.TTL_EXPIRED),
        (Failure.DENIED, Code.DISALLOWED, "http_request_denied", SocksReply.NOT_ALLOWED),
    ],
)
def test_target_failures_are_gateway_errors(
    kind: Failure, code: Code, proxy_status: str, socks: SocksReply
) -> None:
    answer = classify(failure_headers(kind, "No route to host"), T)
    assert answer.bound is None and not answer.node_failure
    err = answer.target_error
    assert err is not None
    assert err.code is code
    assert err.proxy_status == proxy_status
    assert err.socks_reply is socks
    if kind is Failure.UNREACHABLE:
        assert err.detail == "example.com:443 unreachable: no route to host"


@pytest.mark.parametrize(
    "headers",
    [
        failure_headers(Failure.BIND, "cannot assign requested address"),
        failure_headers(Failure.DRAINING),
        failure_headers(Failure.BAD_REQUEST, "bad port"),
        [(b":status", b"500")],
        [(b":status", b"502"), (b"exitgate-error", b"\xffweird\r\nX-Injected: 1")],
    ],
)
def test_everything_else_is_a_node_failure(headers: list[tuple[bytes, bytes]]) -> None:
    answer = classify(headers, T)
    assert answer.bound is None and answer.target_error is None
    assert answer.node_failure.startswith("Agent refused the tunnel")
    assert "\n" not in answer.node_failure and "\r" not in answer.node_failure


def test_agent_details_are_sanitised() -> None:
    headers = failure_headers(Failure.UNREACHABLE, "Evil\r\nX-Header: 1 " + "x" * 500)
    detail = dict(headers)[b"exitgate-detail"].decode()
    assert "\r" not in detail and "\n" not in detail and len(detail) <= 80


# -- the agent's version (issue 11: the Agents page shows it) ----------------------------------


def test_hello_carries_the_agent_version_and_an_old_hello_still_parses() -> None:
    hello = Hello("secret", "a-1", ATTRS, "", "0.1.0+g1a2b.dirty")
    line = encode_hello(hello)
    assert json.loads(line[len(MAGIC) :])["version"] == "0.1.0+g1a2b.dirty"
    assert parse_hello(line) == hello
    old = parse_hello(hello_line())  # an agent from before the field: no version, registered
    assert old.version == ""
    # an unknown version is left out of the line: exactly what an older agent sends, which an
    # older hub (ignoring unknown keys, as this one does) reads the same
    assert b"version" not in encode_hello(Hello("secret", "a-1", ATTRS, ""))
    assert parse_hello(hello_line(version=None, extra_future_key=1)).version == ""


@pytest.mark.parametrize(
    "bad", ["v" * 41, "1.0 beta", "-1.0", "1.0\n", "1.0\x00", "versión", 10, ["1"], {"v": 1}, True]
)
def test_a_bad_version_is_refused_by_name(bad: object) -> None:
    with pytest.raises(HelloError) as info:
        parse_hello(hello_line(version=bad))
    assert info.value.kind is RefusalKind.INVALID
    assert info.value.reason.startswith("version ")
    assert len(info.value.reason) < 200  # a huge value is not echoed whole


@given(st.text(max_size=60))
def test_any_accepted_version_is_short_printable_and_round_trips(version: str) -> None:
    try:
        hello = parse_hello(hello_line(version=version))
    except HelloError:
        return
    assert hello.version == version
    assert len(version) <= 40 and (not version or (version.isascii() and version.isprintable()))
    assert " " not in version
    assert parse_hello(encode_hello(hello)) == hello
