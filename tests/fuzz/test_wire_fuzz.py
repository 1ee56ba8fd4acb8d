"""Random bytes into every wire core: only the documented exceptions, bounded buffers, no hang,
and the same answer however the input is split."""

from __future__ import annotations

import base64
import itertools
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exitgate.errors import SocksReply
from exitgate.model import Target
from exitgate.wire import http1, socks5, upstream
from exitgate.wire.http1 import BodyFramer, BodyKind, HttpError
from exitgate.wire.socks5 import NEED_DATA, Socks5Error, Socks5Server
from exitgate.wire.upstream import UpstreamFailure

# Example counts and deadlines come from the HYPOTHESIS_PROFILE loaded in tests/conftest.py.
FUZZ = settings(suppress_health_check=[HealthCheck.too_slow])

# Bytes that look like the protocols more often than uniform noise does.
HTTPISH = st.lists(
    st.sampled_from(
        [
            b"GET ",
            b"CONNECT ",
            b"HTTP/1.1",
            b"HTTP/1.0",
            b" 200 OK",
            b"\r\n",
            b"\n",
            b"\r",
            b":",
            b" ",
            b"\t",
            b"Host",
            b"Content-Length: 5",
            b"Transfer-Encoding: chunked",
            b"\x00",
            b"http://a/",
            b"x",
            b"\xff",
        ]
    )
    | st.binary(max_size=4),
    max_size=40,
).map(b"".join)


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


# ---------------------------------------------------------------------------- HTTP heads


@FUZZ
@given(data=HTTPISH | st.binary(max_size=200), max_size=st.integers(8, 300))
def test_head_parsers_only_raise_http_error(data: bytes, max_size: int) -> None:
    for parse in (http1.parse_request_head, http1.parse_response_head):
        try:
            result = parse(data, max_size)
        except HttpError as exc:
            assert exc.status in (400, 431, 501, 502, 505)
            continue
        if result is None:
            assert len(data) < max_size
            continue
        head, consumed = result
        assert 0 < consumed <= min(len(data), max_size)
        assert data[consumed - 4 : consumed] == b"\r\n\r\n"
        assert parse(data[:consumed], max_size) == result  # the rest was never looked at
        if isinstance(head, http1.RequestHead):
            http1.request_body(head)
            http1.request_keep_alive(head)
            http1.proxy_credentials(head)
        else:
            http1.response_body(head, "GET")
            http1.forward_response_head(head, close=False)


@FUZZ
@given(
    fields=st.lists(
        st.tuples(
            st.text("abcXYZ-_", min_size=1, max_size=8),
            st.binary(max_size=12).filter(lambda v: not set(v) & {0, 10, 13}),
        ),
        max_size=6,
    ),
    cuts=st.lists(st.integers(0, 10_000), max_size=4),
)
def test_valid_request_heads_parse_the_same_however_split(
    fields: list[tuple[str, bytes]], cuts: list[int]
) -> None:
    fields = [
        (n, v)
        for n, v in fields
        if n.lower() not in ("content-length", "transfer-encoding", "host")
    ]
    raw = (
        b"GET http://h/ HTTP/1.1\r\n"
        + b"".join(n.encode() + b": " + v + b"\r\n" for n, v in fields)
        + b"\r\n"
    )
    whole = http1.parse_request_head(raw + b"tail")
    assert whole is not None
    head, consumed = whole
    assert consumed == len(raw)
    assert [v for _, v in head.headers] == [v.strip(b" \t") for _, v in fields]
    buf = bytearray()
    for piece in splits(raw, cuts)[:-1]:
        buf += piece
        assert http1.parse_request_head(buf) is None
    out = http1.forward_request_head(head, Target("h", 80), "/")
    assert http1.parse_request_head(out) is not None


@FUZZ
@given(st.text(max_size=40))
def test_normalize_host_is_idempotent(text: str) -> None:
    try:
        host = http1.normalize_host(text)
    except ValueError:
        return
    assert http1.normalize_host(host) == host
    assert not set(host) & set(" \t\r\n\x00/@?#[]")


@FUZZ
@given(st.text(max_size=40))
def test_targets_only_raise_http_error(text: str) -> None:
    head = http1.RequestHead("CONNECT", text, "HTTP/1.1", ())
    for fn in (http1.connect_target, http1.absolute_target):
        try:
            fn(head)
        except HttpError as exc:
            assert exc.status == 400


@FUZZ
@given(st.binary(max_size=60))
def test_proxy_credentials_never_raise(token: bytes) -> None:
    for value in (token, b"Basic " + token, b"Basic " + base64.b64encode(token)):
        head = http1.RequestHead("GET", "/", "HTTP/1.1", ((b"Proxy-Authorization", value),))
        result = http1.proxy_credentials(head)
        assert result is None or result is http1.MALFORMED or len(result) == 2


# ---------------------------------------------------------------------------- body framing


def frame(kind: BodyKind, pieces: list[bytes], max_line: int) -> tuple[int, bool] | str:
    framer = BodyFramer(kind, 7, max_line)
    total = 0
    try:
        for piece in pieces:
            n = framer.feed(memoryview(piece))
            assert 0 <= n <= len(piece)
            assert len(framer._line) < max_line  # bounded, whatever arrives
            total += n
            if n < len(piece):
                assert framer.done
                break
    except HttpError as exc:
        assert exc.status == 400
        return "error"
    return total, framer.done


@FUZZ
@given(
    data=st.lists(
        st.sampled_from([b"0", b"5", b"a", b"\r\n", b";x=y", b"hello", b"\n", b"X: y", b" "])
        | st.binary(max_size=3),
        max_size=30,
    ).map(b"".join),
    cuts=st.lists(st.integers(0, 10_000), max_size=6),
    kind=st.sampled_from(list(BodyKind)),
    max_line=st.integers(2, 64),
)
def test_body_framer_agrees_with_itself_however_split(
    data: bytes, cuts: list[int], kind: BodyKind, max_line: int
) -> None:
    assert frame(kind, [data], max_line) == frame(kind, splits(data, cuts), max_line)


@FUZZ
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=40), max_size=6),
    trailers=st.lists(st.sampled_from([b"X-A: 1", b"X-B:", b"Sum: abc"]), max_size=3),
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
)
def test_generated_chunked_bodies_end_exactly(
    chunks: list[bytes], trailers: list[bytes], cuts: list[int]
) -> None:
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
    body += b"0\r\n" + b"".join(t + b"\r\n" for t in trailers) + b"\r\n"
    framer = BodyFramer(BodyKind.CHUNKED)
    total = 0
    for piece in splits(body + b"NEXT", cuts):
        total += framer.feed(piece)
    assert framer.done
    assert total == len(body)


# ---------------------------------------------------------------------------- SOCKS5 server

# A request is never longer than 262 bytes, auth 513, greeting 257: while the core waits for
# more, it holds less than one message.
LIMIT = {"GREETING": 257, "AUTH": 513, "REQUEST": 262}


@FUZZ
@given(
    data=st.binary(max_size=600)
    | st.lists(
        st.sampled_from([b"\x05", b"\x01", b"\x02", b"\x03", b"\x04", b"\x00", b"\xff"])
        | st.binary(max_size=6),
        max_size=60,
    ).map(b"".join),
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
)
def test_socks5_server_on_random_bytes(data: bytes, cuts: list[int]) -> None:
    srv = Socks5Server()
    events: list[object] = []
    try:
        for piece in splits(data, cuts):
            srv.receive_data(piece)
            while not events or not isinstance(events[-1], socks5.Request):
                ev = srv.next_event()
                if ev is NEED_DATA:
                    phase = srv._phase.name
                    assert len(srv._buf) < LIMIT[phase]
                    break
                events.append(ev)
                if isinstance(ev, socks5.Greeting):
                    if 2 in ev.methods:
                        srv.select_method(2)
                    elif 0 in ev.methods:
                        srv.select_method(0)
                    else:
                        srv.select_method(0xFF)
                        return
                elif isinstance(ev, socks5.Credentials):
                    srv.auth_reply(True)
    except Socks5Error as exc:
        assert exc.reply in (b"", b"\x05\xff", b"\x01\x01") or exc.reply[:1] == b"\x05"
        return
    if events and isinstance(events[-1], socks5.Request):
        assert srv.reply(SocksReply.SUCCEEDED)[:2] == b"\x05\x00"
        assert data.endswith(srv.trailing_data())


@FUZZ
@given(st.binary(max_size=40))
def test_udp_header_on_random_bytes(data: bytes) -> None:
    try:
        target, offset = socks5.parse_udp_header(data)
    except Socks5Error:
        return
    assert offset <= len(data)
    assert socks5.parse_udp_header(socks5.udp_header(target.host, target.port))[0] == target


# ---------------------------------------------------------------------------- upstream clients


def _valid_host(host: str) -> bool:
    try:
        http1.normalize_host(host)
    except ValueError:
        return False
    return True


HOSTS = st.from_regex(r"[a-z0-9-]{1,12}(\.[a-z0-9-]{1,12}){0,3}", fullmatch=True).filter(
    _valid_host
) | st.ip_addresses().map(str)


@FUZZ
@given(
    host=HOSTS,
    port=st.integers(1, 65535),
    user=st.none() | st.text(max_size=20),
    password=st.text(max_size=20),
    cuts=st.lists(st.integers(0, 10_000), max_size=5),
)
def test_socks5_client_against_server(
    host: str, port: int, user: str | None, password: str, cuts: list[int]
) -> None:
    target = Target(http1.normalize_host(host), port)
    proxy = upstream.UpstreamProxy("socks5", "p", 1, user, password if user is not None else None)
    client = upstream.Socks5Client(proxy, target)
    srv = Socks5Server()
    to_server = client.initial()
    for _ in range(4):
        srv.receive_data(to_server)
        answer = b""
        ev = srv.next_event()
        if isinstance(ev, socks5.Greeting):
            answer = srv.select_method(2 if 2 in ev.methods else 0)
        elif isinstance(ev, socks5.Credentials):
            assert (ev.username, ev.password) == (user, password)
            answer = srv.auth_reply(True)
        elif isinstance(ev, socks5.Request):
            assert ev.target == target
            answer = srv.reply(SocksReply.SUCCEEDED, ("::1", 9)) + b"tail"
        to_server = b""
        for piece in splits(answer, cuts):
            if client.established:
                break
            to_server += client.receive_data(piece)
        if client.established:
            break
    assert client.established
    assert client.bound == ("::1", 9)


@FUZZ
@given(data=st.binary(max_size=80), cuts=st.lists(st.integers(0, 10_000), max_size=5))
def test_socks5_client_on_random_bytes(data: bytes, cuts: list[int]) -> None:
    client = upstream.Socks5Client(
        upstream.UpstreamProxy("socks5", "p", 1, "u", "pw"), Target("h", 1)
    )
    client.initial()
    try:
        for piece in [*splits(data, cuts), b""]:
            client.receive_data(piece)
            if client.established:
                break
    except UpstreamFailure as exc:
        assert exc.kind in ("node", "target_unreachable", "target_refused", "target_timeout")
        assert "pw" not in exc.detail
        return
    assert client.established


@FUZZ
@given(data=HTTPISH | st.binary(max_size=100), cuts=st.lists(st.integers(0, 10_000), max_size=5))
def test_http_connect_client_on_random_bytes(data: bytes, cuts: list[int]) -> None:
    outcomes = []
    for pieces in ([data], splits(data, cuts)):
        client = upstream.HttpConnectClient(upstream.UpstreamProxy("http", "p", 1), Target("h", 1))
        client.initial()
        got = b""
        try:
            for i, piece in enumerate([*pieces, b""]):
                if client.receive_data(piece):
                    got = client.trailing_data() + b"".join(pieces[i + 1 :])
                    break
            outcomes.append(("ok", got))
        except UpstreamFailure as exc:
            outcomes.append((exc.kind, b""))
    assert outcomes[0] == outcomes[1]


@FUZZ
@given(
    scheme=st.sampled_from(["http", "socks5", "socks5h", "ftp", "HTTP"]),
    user=st.text(max_size=10),
    host=st.text(max_size=12) | HOSTS,
    port=st.text("0123456789x", max_size=6),
    tail=st.sampled_from(["", "/", "/x", "?q", "#f"]),
    quoted=st.booleans(),
)
def test_proxy_url_errors_never_leak_the_password(
    scheme: str, user: str, host: str, port: str, tail: str, quoted: bool
) -> None:
    password = "PW-s3cr3t-" + user[::-1]
    secret = quote(password, safe="") if quoted else password
    url = f"{scheme}://{quote(user, safe='')}:{secret}@{host}:{port}{tail}"
    try:
        proxy = upstream.parse_proxy_url(url)
    except ValueError as exc:
        assert "s3cr3t" not in str(exc)
        return
    assert "s3cr3t" not in proxy.redacted()
    assert "s3cr3t" not in repr(proxy)
    if quoted:
        assert proxy.password == password
