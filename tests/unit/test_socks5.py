"""The SOCKS5 server core: every message whole, one byte at a time, with trailing bytes kept."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exitgate.errors import SocksReply
from exitgate.model import Target
from exitgate.wire.socks5 import (
    NEED_DATA,
    Command,
    Credentials,
    Greeting,
    Method,
    Request,
    Socks5Error,
    Socks5Server,
    Socks5UsageError,
    encode_address,
    parse_udp_header,
    udp_header,
)

NOAUTH_GREETING = b"\x05\x01\x00"
USERPASS_GREETING = b"\x05\x02\x00\x02"
CONNECT_V4 = b"\x05\x01\x00\x01\x7f\x00\x00\x01\x01\xbb"  # 127.0.0.1:443
CONNECT_DOMAIN = b"\x05\x01\x00\x03\x0bExample.COM\x00\x50"
CONNECT_V6 = b"\x05\x01\x00\x04" + bytes(15) + b"\x01" + b"\x1f\x90"  # [::1]:8080
AUTH = b"\x01\x04user\x06secret"
SUCCESS_V4 = b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"


def chunkings(data: bytes) -> Iterator[list[bytes]]:
    """The three ways every parser is tested: whole, one byte at a time, two halves."""
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    yield [data[: len(data) // 2], data[len(data) // 2 :]]


def run(chunks: list[bytes]) -> tuple[list[object], bytes, Socks5Server]:
    """Drive a server like the gateway does, answering every event positively."""
    srv = Socks5Server()
    events: list[object] = []
    for chunk in chunks:
        srv.receive_data(chunk)
        while not events or not isinstance(events[-1], Request):
            ev = srv.next_event()
            if ev is NEED_DATA:
                break
            events.append(ev)
            if isinstance(ev, Greeting):
                method = Method.USERPASS if Method.USERPASS in ev.methods else Method.NO_AUTH
                assert srv.select_method(method) == bytes((5, method))
            elif isinstance(ev, Credentials):
                assert srv.auth_reply(True) == b"\x01\x00"
    assert isinstance(events[-1], Request)
    return events, srv.trailing_data(), srv


@pytest.mark.parametrize("trailing", [b"", b"GET / HTTP/1.1\r\n\r\n", b"\x05\x01\x00"])
@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (
            NOAUTH_GREETING + CONNECT_V4,
            [Greeting(frozenset({0})), Request(Command.CONNECT, Target("127.0.0.1", 443))],
        ),
        (
            USERPASS_GREETING + AUTH + CONNECT_DOMAIN,
            [
                Greeting(frozenset({0, 2})),
                Credentials("user", "secret"),
                Request(Command.CONNECT, Target("example.com", 80)),
            ],
        ),
        (
            NOAUTH_GREETING + CONNECT_V6,
            [Greeting(frozenset({0})), Request(Command.CONNECT, Target("::1", 8080))],
        ),
    ],
)
def test_handshake_three_ways(wire: bytes, expected: list[object], trailing: bytes) -> None:
    for chunks in chunkings(wire + trailing):
        events, tail, srv = run(chunks)
        assert events == expected
        assert tail == trailing  # client early data reaches the tunnel untouched
        assert srv.reply(SocksReply.SUCCEEDED) == SUCCESS_V4
        assert srv.done


def test_trailing_data_arriving_after_the_request_is_kept_and_returned_once() -> None:
    _, tail, srv = run([NOAUTH_GREETING + CONNECT_V4 + b"ab"])
    srv.receive_data(b"cd")
    assert srv.trailing_data() == b"cd"
    assert tail == b"ab"
    srv.reply(SocksReply.SUCCEEDED)
    srv.receive_data(b"ef")
    assert srv.trailing_data() == b"ef"
    assert srv.trailing_data() == b""


@pytest.mark.parametrize(
    ("atyp_addr", "host"),
    [
        (b"\x03\x071.2.3.4", "1.2.3.4"),  # an IP literal sent as a name is that IP
        (b"\x03\x05[::1]", "::1"),
        (b"\x03\x03::1", "::1"),
        (b"\x03\x0cexample.com.", "example.com."),
        (b"\x03\x00" + "Bücher.de".encode(), "bücher.de"),
        (b"\x04" + bytes.fromhex("20010db8000000000000000000000001"), "2001:db8::1"),
        (b"\x01\x00\x00\x00\x00", "0.0.0.0"),
    ],
)
def test_address_forms(atyp_addr: bytes, host: str) -> None:
    if atyp_addr[0] == 3:  # set the length byte of the domain
        atyp_addr = b"\x03" + bytes((len(atyp_addr) - 2,)) + atyp_addr[2:]
    events, _, _ = run([NOAUTH_GREETING + b"\x05\x01\x00" + atyp_addr + b"\x00\x00"])
    assert events[-1] == Request(Command.CONNECT, Target(host, 0))


@pytest.mark.parametrize("command", [Command.BIND, Command.UDP_ASSOCIATE])
def test_other_commands_are_events(command: Command) -> None:
    events, _, srv = run([NOAUTH_GREETING + bytes((5, command, 0)) + CONNECT_V4[3:]])
    req = events[-1]
    assert isinstance(req, Request)
    assert req.command is command
    assert srv.reply(SocksReply.COMMAND_NOT_SUPPORTED)[:2] == b"\x05\x07"


def test_empty_credentials_are_passed_on() -> None:
    events, _, _ = run([USERPASS_GREETING + b"\x01\x00\x00" + CONNECT_V4])
    assert events[1] == Credentials("", "")


def test_credentials_repr_hides_the_password() -> None:
    assert "secret" not in repr(Credentials("user", "secret"))


def test_greeting_with_all_methods_is_bounded_at_257_bytes() -> None:
    srv = Socks5Server()
    srv.receive_data(b"\x05\xff" + bytes(range(255)) + b"\x05")
    ev = srv.next_event()
    assert ev == Greeting(frozenset(range(255)))
    srv.select_method(Method.NO_AUTH)
    assert srv.next_event() is NEED_DATA  # the extra byte waits for the request


def _error(data: bytes, *, userpass: bool = False) -> Socks5Error:
    srv = Socks5Server()
    prefix = USERPASS_GREETING if userpass else NOAUTH_GREETING
    srv.receive_data(prefix)
    assert isinstance(srv.next_event(), Greeting)
    srv.select_method(Method.USERPASS if userpass else Method.NO_AUTH)
    srv.receive_data(data)
    with pytest.raises(Socks5Error) as info:
        srv.next_event()
    # A failed core is closed: further input is ignored, further events refused.
    srv.receive_data(b"more")
    with pytest.raises(Socks5UsageError):
        srv.next_event()
    return info.value


@pytest.mark.parametrize(
    ("greeting", "reply"),
    [
        (b"\x04\x01\x00", b""),  # SOCKS4
        (b"GET / HTTP/1.1\r\n", b""),
        (b"\x05\x00", b"\x05\xff"),  # no methods offered
    ],
)
def test_bad_greeting(greeting: bytes, reply: bytes) -> None:
    srv = Socks5Server()
    srv.receive_data(greeting)
    with pytest.raises(Socks5Error) as info:
        srv.next_event()
    assert info.value.reply == reply


def test_short_greeting_needs_data() -> None:
    srv = Socks5Server()
    assert srv.next_event() is NEED_DATA
    srv.receive_data(b"\x05\x02\x00")
    assert srv.next_event() is NEED_DATA


@pytest.mark.parametrize(
    ("auth", "reply"),
    [
        (b"\x05\x04user\x06secret", b""),  # wrong sub-negotiation version
        (b"\x01\x02\xff\xfe\x00", b"\x01\x01"),  # username not UTF-8
        (b"\x01\x01u\x02\xc3\x28", b"\x01\x01"),  # password not UTF-8
    ],
)
def test_bad_auth(auth: bytes, reply: bytes) -> None:
    assert _error(auth, userpass=True).reply == reply


@pytest.mark.parametrize("cut", [1, 2, 3, 7, len(AUTH) - 1])
def test_partial_auth_needs_data(cut: int) -> None:
    srv = Socks5Server()
    srv.receive_data(USERPASS_GREETING)
    srv.next_event()
    srv.select_method(Method.USERPASS)
    srv.receive_data(AUTH[:cut])
    assert srv.next_event() is NEED_DATA


def _failure(rep: int) -> bytes:
    return bytes((5, rep, 0)) + b"\x01" + bytes(6)


@pytest.mark.parametrize(
    ("request_bytes", "reply"),
    [
        (b"\x04\x01\x00\x01", b""),  # wrong version, decided on the first byte
        (b"\x04", b""),
        (b"\x05\x09\x00\x01\x7f\x00\x00\x01\x00\x50", _failure(0x07)),  # unknown command
        (b"\x05\x01\x00\x02\x7f\x00\x00\x01\x00\x50", _failure(0x08)),  # unknown ATYP
        (b"\x05\x01\x00\x03\x00\x00\x50", _failure(0x01)),  # empty domain
        (b"\x05\x01\x00\x03\x03a b\x00\x50", _failure(0x01)),  # space in domain
        (b"\x05\x01\x00\x03\x04a..b\x00\x50", _failure(0x01)),
        (b"\x05\x01\x00\x03\x0801.2.3.4\x00\x50", _failure(0x01)),  # octal-looking IPv4
        (b"\x05\x01\x00\x03\x02\xff\xfe\x00\x50", _failure(0x01)),  # not UTF-8
        (b"\x05\x01\x00\x03\x06a\r\nb:c\x00\x50", _failure(0x01)),  # header injection
    ],
)
def test_bad_request(request_bytes: bytes, reply: bytes) -> None:
    assert _error(request_bytes).reply == reply


@pytest.mark.parametrize("cut", [1, 3, 4, 5, 9])
def test_partial_request_needs_data(cut: int) -> None:
    srv = Socks5Server()
    srv.receive_data(NOAUTH_GREETING)
    srv.next_event()
    srv.select_method(Method.NO_AUTH)
    srv.receive_data(CONNECT_DOMAIN[:cut])
    assert srv.next_event() is NEED_DATA


def test_refusing_every_method_closes() -> None:
    srv = Socks5Server()
    srv.receive_data(USERPASS_GREETING)
    srv.next_event()
    assert srv.select_method(Method.NO_ACCEPTABLE) == b"\x05\xff"
    with pytest.raises(Socks5UsageError):
        srv.next_event()


def test_failed_authentication_closes() -> None:
    srv = Socks5Server()
    srv.receive_data(USERPASS_GREETING + AUTH)
    srv.next_event()
    srv.select_method(Method.USERPASS)
    assert srv.next_event() == Credentials("user", "secret")
    assert srv.auth_reply(False) == b"\x01\x01"
    with pytest.raises(Socks5UsageError):
        srv.next_event()


def test_failure_reply_closes() -> None:
    _, _, srv = run([NOAUTH_GREETING + CONNECT_V4])
    assert srv.reply(SocksReply.HOST_UNREACHABLE) == _failure(0x04)
    assert not srv.done
    with pytest.raises(Socks5UsageError):
        srv.trailing_data()


@pytest.mark.parametrize(
    ("bound", "encoded"),
    [
        (("10.0.0.1", 1080), b"\x01\x0a\x00\x00\x01\x04\x38"),
        (("::1", 1), b"\x04" + bytes(15) + b"\x01\x00\x01"),
        (("relay.example", 2), b"\x03\x0drelay.example\x00\x02"),
    ],
)
def test_reply_bound_address(bound: tuple[str, int], encoded: bytes) -> None:
    _, _, srv = run([NOAUTH_GREETING + CONNECT_V4])
    assert srv.reply(SocksReply.SUCCEEDED, bound) == b"\x05\x00\x00" + encoded


def test_out_of_order_calls_are_usage_errors() -> None:
    srv = Socks5Server()
    with pytest.raises(Socks5UsageError):
        srv.select_method(Method.NO_AUTH)
    with pytest.raises(Socks5UsageError):
        srv.auth_reply(True)
    with pytest.raises(Socks5UsageError):
        srv.reply(SocksReply.SUCCEEDED)
    with pytest.raises(Socks5UsageError):
        srv.trailing_data()
    srv.receive_data(NOAUTH_GREETING)
    assert isinstance(srv.next_event(), Greeting)
    with pytest.raises(Socks5UsageError, match="AWAIT_METHOD"):
        srv.next_event()  # the driver must answer the greeting first
    with pytest.raises(Socks5UsageError, match="not offered"):
        srv.select_method(Method.USERPASS)
    srv.select_method(Method.NO_AUTH)
    with pytest.raises(Socks5UsageError):
        srv.auth_reply(True)  # no sub-negotiation with method 0x00


def test_offered_but_unimplemented_method_is_a_usage_error() -> None:
    srv = Socks5Server()
    srv.receive_data(b"\x05\x01\x01")
    srv.next_event()
    with pytest.raises(Socks5UsageError, match="not implemented"):
        srv.select_method(Method.GSSAPI)


def test_next_event_after_done_is_a_usage_error() -> None:
    _, _, srv = run([NOAUTH_GREETING + CONNECT_V4])
    with pytest.raises(Socks5UsageError):
        srv.next_event()  # waiting for reply()
    srv.reply(SocksReply.SUCCEEDED)
    with pytest.raises(Socks5UsageError):
        srv.next_event()


@pytest.mark.parametrize(
    ("host", "port", "message"),
    [("1.2.3.4", 70000, "port"), ("a" * 256, 1, "1..255"), ("", 1, "1..255")],
)
def test_encode_address_errors(host: str, port: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_address(host, port)


def test_encode_address_domains() -> None:
    assert encode_address("bücher.de", 80) == b"\x03\x10xn--bcher-kva.de\x00\x50"
    assert encode_address("host1", 80) == b"\x03\x05host1\x00\x50"  # not an IP, though digit-final


@pytest.mark.parametrize(
    "target", [Target("1.2.3.4", 53), Target("2001:db8::1", 443), Target("example.com", 1)]
)
def test_udp_header_round_trip(target: Target) -> None:
    datagram = udp_header(target.host, target.port) + b"payload"
    parsed, offset = parse_udp_header(datagram)
    assert parsed == target
    assert datagram[offset:] == b"payload"


@pytest.mark.parametrize(
    "datagram",
    [
        b"\x00\x00\x00",  # too short
        b"\x00\x01\x00\x01\x01\x02\x03\x04\x00\x35",  # reserved not zero
        b"\x00\x00\x01\x01\x01\x02\x03\x04\x00\x35",  # fragment
        b"\x00\x00\x00\x07\x01\x02\x03\x04\x00\x35",  # unknown ATYP
        b"\x00\x00\x00\x01\x01\x02\x03\x04\x00",  # truncated
        b"\x00\x00\x00\x03",  # truncated domain length
        b"\x00\x00\x00\x03\x01 \x00\x35",  # bad domain
    ],
)
def test_udp_header_errors(datagram: bytes) -> None:
    with pytest.raises(Socks5Error):
        parse_udp_header(datagram)


@given(
    st.one_of(
        st.ip_addresses(v=4).map(str),
        st.text(alphabet="0123456789.", max_size=16),
        st.lists(st.integers(0, 999).map(str), min_size=4, max_size=4).map(".".join),
    ),
    st.integers(0, 0xFFFF),
)
def test_reply_address_encoding_agrees_with_ipaddress(host: str, port: int) -> None:
    """The dotted-quad fast path gives what `ipaddress` gives, and leaves the rest to it."""
    try:
        ip: ipaddress.IPv4Address | None = ipaddress.IPv4Address(host)
    except ValueError:
        ip = None
    encoded = encode_address(host, port) if host else None
    if ip is not None:
        assert encoded == b"\x01" + ip.packed + port.to_bytes(2, "big")
    elif encoded is not None:
        assert encoded[0] == 3  # not an IPv4 literal: sent as a domain
        assert encoded[2 : 2 + encoded[1]] == host.encode()


# -- IPv4 addresses through the codec --------------------------------------------------------


@given(st.binary(min_size=4, max_size=4), st.integers(0, 65535))
def test_ipv4_addresses_round_trip(packed: bytes, port: int) -> None:
    encoded = encode_address(socket.inet_ntoa(packed), port)
    assert encoded == b"\x01" + packed + port.to_bytes(2, "big")
    target, end = parse_udp_header(b"\x00\x00\x00" + encoded)
    assert end == 3 + len(encoded)
    assert (target.host, target.port) == (socket.inet_ntoa(packed), port)
