"""Client handshakes towards upstream proxies, and their URLs."""

from __future__ import annotations

import base64

import pytest

from exitgate.errors import SocksReply
from exitgate.model import Target
from exitgate.wire.socks5 import (
    NEED_DATA,
    Command,
    Credentials,
    Greeting,
    Method,
    Request,
    Socks5Server,
)
from exitgate.wire.upstream import (
    HttpConnectClient,
    Socks5Client,
    UpstreamFailure,
    UpstreamProxy,
    parse_proxy_url,
)

HTTP = UpstreamProxy("http", "proxy.example", 3128, "user", "p@ss:word")
HTTP_ANON = UpstreamProxy("http", "proxy.example", 3128)
SOCKS = UpstreamProxy("socks5", "127.0.0.1", 1080, "user", "secret")
SOCKS_ANON = UpstreamProxy("socks5", "127.0.0.1", 1080)
TARGET = Target("example.com", 443)


# ---------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://u:p@h.example:8080", UpstreamProxy("http", "h.example", 8080, "u", "p")),
        ("HTTP://H.example", UpstreamProxy("http", "h.example", 80)),
        ("http://h.example/", UpstreamProxy("http", "h.example", 80)),
        ("socks5://h.example", UpstreamProxy("socks5", "h.example", 1080)),
        ("socks5h://u:p@[::1]:9050", UpstreamProxy("socks5", "::1", 9050, "u", "p")),
        ("socks5://10.0.0.1:1", UpstreamProxy("socks5", "10.0.0.1", 1, None, None)),
        ("http://u%40x:p%3Aw%2F%C3%BC@h:1", UpstreamProxy("http", "h", 1, "u@x", "p:w/ü")),
        ("http://user@h:1", UpstreamProxy("http", "h", 1, "user", None)),
        ("http://:pw@h:1", UpstreamProxy("http", "h", 1, "", "pw")),
        ("http://u:p@ss@h:1", UpstreamProxy("http", "h", 1, "u", "p@ss")),
    ],
)
def test_parse_proxy_url(url: str, expected: UpstreamProxy) -> None:
    assert parse_proxy_url(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://u:s3cret@h:1", "scheme"),
        ("https://u:s3cret@h:1", "scheme"),
        ("u:s3cret@h:1", "scheme"),
        ("h.example:8080", "scheme"),
        ("http://u:s3cret@h:1/path", "path"),
        ("http://u:s3cret@h:1?q", "path"),
        ("http://u:s3cret@h:1#f", "path"),
        ("http://u:s3cret@h:port", "port"),
        ("http://u:s3cret@h:70000", "port"),
        ("http://u:s3cret@h:0", "port"),
        ("http://u:s3cret", "port"),  # the password would be read as a port
        ("http://u:s3cret@:1", "host"),
        ("http://u:s3cret@a..b:1", "host"),
        ("http://u:s3cret@[::1:1", "host"),
        ("http://u:s3cret%ff@h:1", "UTF-8"),
        ("http://u:s3cret\uff03@h:1", "host"),  # NFKC check in urlsplit
        ("socks5://" + "u" * 256 + ":s3cret@h:1", "username"),
        ("socks5://u:s3cret" + "p" * 256 + "@h:1", "password"),
    ],
)
def test_parse_proxy_url_errors_never_show_the_password(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_proxy_url(url)
    assert "s3cret" not in str(info.value)
    assert "s3cret" not in repr(info.value)


def test_redacted_and_repr_hide_the_password() -> None:
    proxy = parse_proxy_url("socks5://us%20er:s3cret@[::1]:1080")
    assert proxy.redacted() == "socks5://us%20er:***@[::1]:1080"
    assert "s3cret" not in repr(proxy)
    assert parse_proxy_url("http://h:1").redacted() == "http://h:1"
    assert parse_proxy_url("http://u@h:1").redacted() == "http://u@h:1"


# ---------------------------------------------------------------------------- HTTP CONNECT


def drive_http(client: HttpConnectClient, answer: bytes, *, bytewise: bool) -> bytes:
    client.initial()
    chunks = [answer[i : i + 1] for i in range(len(answer))] if bytewise else [answer]
    rest = b""
    for i, chunk in enumerate(chunks):
        if client.receive_data(chunk):
            rest = b"".join(chunks[i + 1 :])
            break
    assert client.established
    return client.trailing_data() + rest


def test_http_initial_with_credentials() -> None:
    token = base64.b64encode(b"user:p@ss:word").decode()
    assert (
        HttpConnectClient(HTTP, TARGET).initial()
        == (
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n"
            f"Proxy-Authorization: Basic {token}\r\n\r\n"
        ).encode()
    )


def test_http_initial_without_credentials_and_ipv6_target() -> None:
    client = HttpConnectClient(HTTP_ANON, Target("2001:db8::1", 8443))
    assert client.initial() == (
        b"CONNECT [2001:db8::1]:8443 HTTP/1.1\r\nHost: [2001:db8::1]:8443\r\n\r\n"
    )


@pytest.mark.parametrize("bytewise", [False, True])
@pytest.mark.parametrize("trailing", [b"", b"\x16\x03\x03 server hello"])
@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 Connection established\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nProxy-Agent: x\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
    ],
)
def test_http_connect_established(answer: bytes, trailing: bytes, bytewise: bool) -> None:
    client = HttpConnectClient(HTTP, TARGET)
    assert drive_http(client, answer + trailing, bytewise=bytewise) == trailing


@pytest.mark.parametrize("bytewise", [False, True])
@pytest.mark.parametrize(
    ("answer", "kind", "detail"),
    [
        (b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n", "node", "credentials"),
        (b"HTTP/1.1 403 Forbidden\r\n\r\n", "node", "403 Forbidden"),
        (b"HTTP/1.1 502 Bad Gateway\r\n\r\n", "target_unreachable", "502"),
        (b"HTTP/1.1 503 Unavailable\r\n\r\n", "target_unreachable", "503"),
        (b"HTTP/1.1 504 Gateway Timeout\r\n\r\n", "target_timeout", "504"),
        (
            b"HTTP/1.1 502 Bad Gateway\r\nProxy-Status: p; error=connection_refused\r\n\r\n",
            "target_refused",
            "502",
        ),
        (b"HTTP/1.1 101 Switching\r\n\r\n", "node", "101"),
        (b"HTTP/1.1 500 caf\xe9\r\n\r\n", "node", "500 caf?"),  # obs-text, kept out of logs
        (b"HTTP/1.1 500 \x1b[31mred\r\n\r\n", "node", "bad answer"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "node", "bad answer"),
        (b"HTTP/1.1 200 OK\nbare: lf\n\n", "node", "bad answer"),
    ],
)
def test_http_connect_failures(answer: bytes, kind: str, detail: str, bytewise: bool) -> None:
    client = HttpConnectClient(HTTP, TARGET)
    client.initial()
    chunks = [answer[i : i + 1] for i in range(len(answer))] if bytewise else [answer]
    with pytest.raises(UpstreamFailure) as info:
        for chunk in chunks:
            client.receive_data(chunk)
    assert info.value.kind == kind
    assert detail in info.value.detail
    assert "proxy.example:3128" in info.value.detail
    assert "p@ss" not in str(info.value)
    with pytest.raises(RuntimeError):
        client.receive_data(b"x")  # failed for good


@pytest.mark.parametrize(
    ("received", "kind"),
    [
        (b"", "node"),
        (b"HTTP/1.1 200 OK\r\n", "node"),  # success needs the whole head
        (b"HTTP/1.1 504 Gateway Timeout\r\n", "target_timeout"),  # hung up after the line
        (b"HTTP/1.1 502\r\nX: y", "target_unreachable"),
        (b"HTTP/1.1 5", "node"),
    ],
)
def test_http_connect_eof(received: bytes, kind: str) -> None:
    client = HttpConnectClient(HTTP_ANON, TARGET)
    client.initial()
    if received:
        assert client.receive_data(received) is False
    with pytest.raises(UpstreamFailure) as info:
        client.receive_data(b"")
    assert info.value.kind == kind


def test_http_connect_oversized_answer() -> None:
    client = HttpConnectClient(HTTP_ANON, TARGET)
    client.initial()
    client.receive_data(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(UpstreamFailure, match="too large"):
        client.receive_data(b"X: " + b"a" * 70000)


def test_http_client_usage_errors() -> None:
    client = HttpConnectClient(HTTP_ANON, TARGET)
    with pytest.raises(RuntimeError):
        client.receive_data(b"HTTP/1.1 200 OK\r\n\r\n")  # before initial()
    with pytest.raises(RuntimeError):
        client.trailing_data()
    client.initial()
    with pytest.raises(RuntimeError):
        client.initial()
    assert client.receive_data(b"HTTP/1.1 200 OK\r\n\r\n") is True
    with pytest.raises(RuntimeError):
        client.receive_data(b"tunnel bytes go to the relay, not here")


@pytest.mark.parametrize(
    "target", [Target("a\r\nX: y", 80), Target("a b", 80), Target("h", 0), Target("h", 65536)]
)
def test_clients_refuse_injectable_targets(target: Target) -> None:
    with pytest.raises(ValueError):
        HttpConnectClient(HTTP, target)
    with pytest.raises(ValueError):
        Socks5Client(SOCKS, target)


# ---------------------------------------------------------------------------- SOCKS5


class RecordingServer(Socks5Server):
    """The server side of the round trip: answers every event, keeps the requests."""

    __slots__ = ("accept", "requests")

    def __init__(self, *, accept: bool = True) -> None:
        super().__init__()
        self.accept = accept
        self.requests: list[Request] = []

    def serve(self, data: bytes) -> bytes:
        out = b""
        self.receive_data(data)
        while True:
            ev = self.next_event()
            if ev is NEED_DATA:
                return out
            if isinstance(ev, Greeting):
                method = Method.USERPASS if Method.USERPASS in ev.methods else Method.NO_AUTH
                out += self.select_method(method)
            elif isinstance(ev, Credentials):
                ok = self.accept and ev == Credentials("user", "secret")
                out += self.auth_reply(ok)
                if not ok:
                    return out
            else:
                self.requests.append(ev)
                return out + self.reply(SocksReply.SUCCEEDED, ("10.1.2.3", 4321)) + b"early"


@pytest.mark.parametrize("proxy", [SOCKS, SOCKS_ANON])
@pytest.mark.parametrize(
    "target", [TARGET, Target("192.0.2.1", 80), Target("2001:db8::5", 22), Target("bücher.de", 1)]
)
@pytest.mark.parametrize("bytewise", [False, True])
def test_socks5_round_trip(proxy: UpstreamProxy, target: Target, bytewise: bool) -> None:
    client = Socks5Client(proxy, target)
    server = RecordingServer()
    to_server = client.initial()
    trailing = b""
    while not client.established:  # the driver loop of the module docstring
        answer = server.serve(to_server)
        assert answer, "the server must answer every step"
        chunks = [answer[i : i + 1] for i in range(len(answer))] if bytewise else [answer]
        to_server = b""
        for i, chunk in enumerate(chunks):
            to_server += client.receive_data(chunk)
            if client.established:
                trailing = client.trailing_data() + b"".join(chunks[i + 1 :])
                break
    expected_host = "xn--bcher-kva.de" if target.host == "bücher.de" else target.host
    assert server.requests == [Request(Command.CONNECT, Target(expected_host, target.port))]
    assert client.bound == ("10.1.2.3", 4321)
    assert trailing == b"early"


def test_socks5_greetings() -> None:
    assert Socks5Client(SOCKS, TARGET).initial() == b"\x05\x02\x00\x02"
    assert Socks5Client(SOCKS_ANON, TARGET).initial() == b"\x05\x01\x00"


def test_socks5_auth_request_bytes() -> None:
    client = Socks5Client(SOCKS, Target("1.2.3.4", 80))
    client.initial()
    assert client.receive_data(b"\x05\x02") == b"\x01\x04user\x06secret"
    assert client.receive_data(b"\x01\x00") == b"\x05\x01\x00\x01\x01\x02\x03\x04\x00\x50"
    assert client.receive_data(b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00extra") == b""
    assert client.established
    assert client.trailing_data() == b"extra"


def test_socks5_no_auth_selected_even_with_credentials() -> None:
    client = Socks5Client(SOCKS, TARGET)
    client.initial()
    assert client.receive_data(b"\x05\x00") == b"\x05\x01\x00\x03\x0bexample.com\x01\xbb"


def test_socks5_whole_answer_in_one_read() -> None:
    client = Socks5Client(SOCKS_ANON, TARGET)
    client.initial()
    # A proxy may answer method selection and reply together (pipelined by its own buffering).
    out = client.receive_data(b"\x05\x00")
    assert out.startswith(b"\x05\x01")
    client.receive_data(b"\x05\x00\x00\x04" + bytes(16) + b"\x00\x01")
    assert client.bound == ("::", 1)
    client2 = Socks5Client(SOCKS_ANON, TARGET)
    client2.initial()
    client2.receive_data(b"\x05\x00")
    client2.receive_data(b"\x05\x00\x00\x03\x05relay\x00\x02")
    assert client2.bound == ("relay", 2)


@pytest.mark.parametrize(
    ("rep", "kind"),
    [
        (0x01, "node"),
        (0x02, "node"),
        (0x03, "target_unreachable"),
        (0x04, "target_unreachable"),
        (0x05, "target_refused"),
        (0x06, "target_timeout"),
        (0x07, "node"),
        (0x08, "node"),
        (0x42, "node"),
    ],
)
def test_socks5_failure_replies_are_decided_on_two_bytes(rep: int, kind: str) -> None:
    client = Socks5Client(SOCKS_ANON, TARGET)
    client.initial()
    client.receive_data(b"\x05\x00")
    # Only VER and REP: some proxies send nothing more and hang up. No waiting for an address.
    with pytest.raises(UpstreamFailure) as info:
        client.receive_data(bytes((5, rep)))
    assert info.value.kind == kind


@pytest.mark.parametrize(
    ("steps", "detail"),
    [
        ([b"\x04\x00"], "not a SOCKS5 proxy"),
        ([b"\x05\xff"], "no acceptable"),
        ([b"\x05\x01"], "unoffered method 0x01"),
        ([b"\x05\x00", b"\x04\x00"], "bad reply version"),
        ([b"\x05\x00", b"\x05\x00\x00\x09\x00"], "unknown address type"),
        ([b"\x05\x00", b""], "closed"),
        ([b""], "closed"),
        ([b"\x05\x00", b"\x05\x00\x00\x01\x00", b""], "closed"),  # EOF inside the address
    ],
)
def test_socks5_node_failures(steps: list[bytes], detail: str) -> None:
    client = Socks5Client(SOCKS_ANON, TARGET)
    client.initial()
    with pytest.raises(UpstreamFailure) as info:
        for step in steps:
            client.receive_data(step)
    assert info.value.kind == "node"
    assert detail in info.value.detail


def test_socks5_userpass_without_credentials_is_a_node_failure() -> None:
    client = Socks5Client(SOCKS_ANON, TARGET)
    client.initial()
    with pytest.raises(UpstreamFailure, match="unoffered method 0x02"):
        client.receive_data(b"\x05\x02")


@pytest.mark.parametrize("status", [b"\x01\x01", b"\x05\x01"])
def test_socks5_refused_credentials(status: bytes) -> None:
    client = Socks5Client(SOCKS, TARGET)
    client.initial()
    client.receive_data(b"\x05\x02")
    with pytest.raises(UpstreamFailure) as info:
        client.receive_data(status)
    assert info.value.kind == "node"
    assert "secret" not in str(info.value)


def test_socks5_refused_credentials_round_trip() -> None:
    client = Socks5Client(UpstreamProxy("socks5", "h", 1, "user", "wrong"), TARGET)
    server = RecordingServer()
    auth = client.receive_data(server.serve(client.initial()))
    with pytest.raises(UpstreamFailure, match="refused the credentials"):
        client.receive_data(server.serve(auth))


def test_socks5_client_usage_errors() -> None:
    with pytest.raises(ValueError):
        Socks5Client(UpstreamProxy("socks5", "h", 1, "u" * 256, "p"), TARGET)
    client = Socks5Client(SOCKS_ANON, TARGET)
    with pytest.raises(RuntimeError):
        client.receive_data(b"\x05\x00")
    client.initial()
    with pytest.raises(RuntimeError):
        client.trailing_data()
