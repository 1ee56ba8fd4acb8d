"""HTTP/1.1 heads, framing and forwarding: each parser whole, one byte at a time, with trailing
bytes left untouched, and every error path."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest

from exitgate.model import Target
from exitgate.wire.http1 import (
    MALFORMED,
    BodyFramer,
    BodyKind,
    HttpError,
    RequestHead,
    ResponseHead,
    absolute_target,
    connect_target,
    forward_request_head,
    forward_response_head,
    normalize_host,
    parse_request_head,
    parse_response_head,
    proxy_credentials,
    request_body,
    request_keep_alive,
    response_body,
    response_keep_alive,
)

Parser = Callable[[bytes | bytearray], "tuple[RequestHead, int] | tuple[ResponseHead, int] | None"]

GET = (
    b"GET http://Example.com/a?b=1 HTTP/1.1\r\n"
    b"Host: example.com\r\n"
    b"User-Agent: t\r\n"
    b"X-Spaces: \t padded value \t\r\n"
    b"Empty:\r\n"
    b"Accept: a\r\n"
    b"accept: b\r\n"
    b"\r\n"
)
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: s\r\n\r\n"


def three_ways(parse: Parser, data: bytes, trailing: bytes = b"NEXT MESSAGE\r\n") -> object:
    """Parse whole, byte by byte (every prefix is incomplete), and with trailing bytes."""
    whole = parse(data)
    assert whole is not None
    assert whole[1] == len(data)
    for i in range(len(data)):
        assert parse(data[:i]) is None, i
    with_tail = parse(data + trailing)
    assert with_tail == whole  # the trailing bytes are neither consumed nor looked at
    as_bytearray = parse(bytearray(data + trailing))
    assert as_bytearray == whole
    head = whole[0]
    assert all(type(n) is bytes and type(v) is bytes for n, v in head.headers)
    return head


def req(data: bytes) -> RequestHead:
    parsed = parse_request_head(data)
    assert parsed is not None
    return parsed[0]


def resp(data: bytes) -> ResponseHead:
    parsed = parse_response_head(data)
    assert parsed is not None
    return parsed[0]


def request_error(data: bytes, max_size: int = 65536) -> HttpError:
    with pytest.raises(HttpError) as info:
        parse_request_head(data, max_size)
    return info.value


def response_error(data: bytes, max_size: int = 65536) -> HttpError:
    with pytest.raises(HttpError) as info:
        parse_response_head(data, max_size)
    return info.value


# ---------------------------------------------------------------------------- request heads


def test_request_head_three_ways() -> None:
    head = three_ways(parse_request_head, GET)
    assert head == RequestHead(
        "GET",
        "http://Example.com/a?b=1",
        "HTTP/1.1",
        (
            (b"Host", b"example.com"),
            (b"User-Agent", b"t"),
            (b"X-Spaces", b"padded value"),
            (b"Empty", b""),
            (b"Accept", b"a"),
            (b"accept", b"b"),
        ),
    )


def test_field_access_is_case_insensitive() -> None:
    head = req(GET)
    assert head.get("USER-agent") == b"t"
    assert head.get(b"accept") == b"a"
    assert head.get_all("Accept") == [b"a", b"b"]
    assert head.get_all(b"host") == [b"example.com"]
    assert head.get("missing") is None
    assert head.get_all("missing") == []


@pytest.mark.parametrize(
    "data",
    [
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        b"GET http://h/ HTTP/1.0\r\n\r\n",  # no fields at all
        b"\r\n\r\nGET http://h/ HTTP/1.1\r\n\r\n",  # leading empty lines (RFC 9112 2.2)
        b"POST http://h/ HTTP/1.1\r\nContent-Length: 3\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nX: \x01\x80\xff\r\n\r\n",  # CTLs other than NUL and obs-text
    ],
)
def test_request_heads_accepted(data: bytes) -> None:
    three_ways(parse_request_head, data)


def test_leading_empty_lines_count_as_consumed() -> None:
    head = b"\r\n\r\nGET http://h/ HTTP/1.1\r\n\r\n"
    parsed = parse_request_head(head + b"BODY")
    assert parsed is not None
    assert parsed[1] == len(head)


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (b"GET  / HTTP/1.1\r\n\r\n", 400, "request line"),
        (b"GET / http/1.1\r\n\r\n", 400, "request line"),
        (b"GET /\r\n\r\n", 400, "request line"),
        (b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n", 400, "request line"),
        (b"G(T / HTTP/1.1\r\n\r\n", 400, "request line"),
        (b"GET / HTTP/2.0\r\n\r\n", 505, "version"),
        (b"GET / HTTP/1.2\r\n\r\n", 505, "version"),
        (b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400, "folding"),
        (b"GET / HTTP/1.1\r\nHost: a\r\n\tfolded\r\n\r\n", 400, "folding"),
        (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400, "field name"),
        (b"GET / HTTP/1.1\r\nBad Name: a\r\n\r\n", 400, "field name"),
        (b"GET / HTTP/1.1\r\n: a\r\n\r\n", 400, "field name"),
        (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400, "colon"),
        (b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400, "NUL"),
        (b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", 400, "bare CR or LF"),
        (b"GET / HTTP/1.1\r\nX: a\nY: b\r\n\r\n", 400, "bare CR or LF"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "Host"),
        (b"\r\n" * 17 + b"GET / HTTP/1.1\r\n\r\n", 400, "empty lines"),
    ],
)
def test_request_head_errors(data: bytes, status: int, reason: str) -> None:
    err = request_error(data)
    assert err.status == status
    assert reason in err.reason


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\nHost: a\n\n",  # a bare-LF client fails at once, not at a timeout
        b"GET / HTTP/1.1\r\nHost: a\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n",  # garbage with a full first line
        b"GARBAGE\r\n",
    ],
)
def test_incomplete_garbage_fails_early(data: bytes) -> None:
    assert request_error(data).status == 400


def test_head_size_limit() -> None:
    data = b"GET / HTTP/1.1\r\nX: " + b"a" * 100 + b"\r\n\r\n"
    assert parse_request_head(data, max_size=len(data)) is not None
    assert request_error(data, max_size=len(data) - 1).status == 431
    assert request_error(data[:-1], max_size=len(data) - 1).status == 431  # incomplete too
    assert parse_request_head(data[:-1], max_size=len(data)) is None


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        (b"Content-Length: 5\r\nContent-Length: 6\r\n", 400),
        (b"Content-Length: 5, 6\r\n", 400),
        (b"Content-Length: -1\r\n", 400),
        (b"Content-Length: +1\r\n", 400),
        (b"Content-Length: 0x10\r\n", 400),
        (b"Content-Length: \r\n", 400),
        (b"Content-Length: 1234567890123456789\r\n", 400),
        (b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n", 400),  # smuggling
        (b"Transfer-Encoding: gzip\r\n", 400),  # chunked must be final
        (b"Transfer-Encoding: chunked, gzip\r\n", 400),
        (b"Transfer-Encoding: chunked, chunked\r\n", 400),
        (b"Transfer-Encoding: \r\n", 400),
        (b"Transfer-Encoding: gzip, chunked\r\n", 501),
        (b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", 501),
    ],
)
def test_request_framing_errors(fields: bytes, status: int) -> None:
    assert request_error(b"POST / HTTP/1.1\r\n" + fields + b"\r\n").status == status


def test_transfer_encoding_on_http10_is_rejected() -> None:
    err = request_error(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert err.status == 400


def test_http_error_phrase() -> None:
    assert HttpError(431, "x").phrase == "Request Header Fields Too Large"
    assert HttpError(999, "x").phrase == "Error"
    assert str(HttpError(400, "bad")) == "400 bad"


# ---------------------------------------------------------------------------- response heads


def test_response_head_three_ways() -> None:
    head = three_ways(parse_response_head, RESPONSE, trailing=b"hello")
    assert head == ResponseHead(
        "HTTP/1.1", 200, "OK", ((b"Content-Length", b"5"), (b"Server", b"s"))
    )


@pytest.mark.parametrize(
    ("line", "version", "status", "reason"),
    [
        (b"HTTP/1.0 404 Not Found", "HTTP/1.0", 404, "Not Found"),
        (b"HTTP/1.1 204", "HTTP/1.1", 204, ""),
        (b"HTTP/1.1 200 ", "HTTP/1.1", 200, ""),
        (b"HTTP/1.1 200 \xe9t\xe9\tok", "HTTP/1.1", 200, "\xe9t\xe9\tok"),
        (b"HTTP/1.1 999 Odd", "HTTP/1.1", 999, "Odd"),
    ],
)
def test_status_lines(line: bytes, version: str, status: int, reason: str) -> None:
    head = three_ways(parse_response_head, line + b"\r\n\r\n")
    assert isinstance(head, ResponseHead)
    assert (head.version, head.status, head.reason) == (version, status, reason)


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 099 Low\r\n\r\n",
        b"HTTP/2.0 200 OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 200 O\x01K\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\nServer: x\n\n",  # bare LF, strict for responses too
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000,  # too large
    ],
)
def test_response_head_errors(data: bytes) -> None:
    assert response_error(data).status == 502


# ---------------------------------------------------------------------------- credentials


def basic(raw: bytes, scheme: bytes = b"Basic") -> RequestHead:
    token = base64.b64encode(raw)
    return req(b"GET / HTTP/1.1\r\nProxy-Authorization: " + scheme + b" " + token + b"\r\n\r\n")


def test_proxy_credentials() -> None:
    assert basic(b"country-us:key").__class__ is RequestHead
    assert proxy_credentials(basic(b"country-us:key")) == ("country-us", "key")
    assert proxy_credentials(basic(b"user:pa:ss")) == ("user", "pa:ss")  # after the first ':'
    assert proxy_credentials(basic(b":")) == ("", "")
    assert proxy_credentials(basic("ü:ß".encode(), b"bAsIc")) == ("ü", "ß")
    assert proxy_credentials(req(b"GET / HTTP/1.1\r\n\r\n")) is None


@pytest.mark.parametrize(
    "field",
    [
        b"Bearer abc",
        b"Basic",
        b"Basic ",
        b"Basic !!!!",
        b"Basic " + base64.b64encode(b"no-colon"),
        b"Basic " + base64.b64encode(b"\xff\xfe:x"),  # not UTF-8
        b"Basic a",  # impossible base64 length
    ],
)
def test_malformed_proxy_credentials(field: bytes) -> None:
    head = req(b"GET / HTTP/1.1\r\nProxy-Authorization: " + field + b"\r\n\r\n")
    assert proxy_credentials(head) is MALFORMED


def test_unpadded_basic_token_is_accepted() -> None:
    token = base64.b64encode(b"user:pw").rstrip(b"=")
    head = req(b"GET / HTTP/1.1\r\nProxy-Authorization: Basic  " + token + b"\r\n\r\n")
    assert proxy_credentials(head) == ("user", "pw")


def test_two_proxy_authorization_fields_are_malformed() -> None:
    field = b"Proxy-Authorization: Basic " + base64.b64encode(b"a:b") + b"\r\n"
    assert proxy_credentials(req(b"GET / HTTP/1.1\r\n" + field * 2 + b"\r\n")) is MALFORMED


# ---------------------------------------------------------------------------- targets


def with_target(target: str) -> RequestHead:
    return RequestHead("GET", target, "HTTP/1.1", ())


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        ("example.com:443", Target("example.com", 443)),
        ("EXAMPLE.com:1", Target("example.com", 1)),
        ("1.2.3.4:65535", Target("1.2.3.4", 65535)),
        ("[2001:DB8:0:0::1]:443", Target("2001:db8::1", 443)),
        ("under_score.example.:80", Target("under_score.example.", 80)),
    ],
)
def test_connect_target(authority: str, expected: Target) -> None:
    assert connect_target(with_target(authority)) == expected


@pytest.mark.parametrize(
    "authority",
    [
        "example.com",
        "example.com:",
        "example.com:0",
        "example.com:65536",
        "example.com:99999999",
        "example.com:https",
        "example.com:+80",
        ":443",
        "[::1]",
        "[::1",
        "[::1]x:443",
        "::1:443",
        "[fe80::1%25eth0]:443",
        "[1.2.3.4]:443",
        "user:pw@example.com:443",
        "01.2.3.4:80",
        "1.2.3:80",
        "0x7f.1:80",
        "a..b:80",
        "a b:80",
    ],
)
def test_connect_target_errors(authority: str) -> None:
    with pytest.raises(HttpError) as info:
        connect_target(with_target(authority))
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("http://example.com/a?b=1", ("http", Target("example.com", 80), "/a?b=1")),
        ("http://example.com", ("http", Target("example.com", 80), "/")),
        ("http://example.com?q", ("http", Target("example.com", 80), "/?q")),
        ("HTTP://Example.COM:8080/x#frag", ("http", Target("example.com", 8080), "/x")),
        ("http://example.com:/x", ("http", Target("example.com", 80), "/x")),
        ("https://example.com/x", ("https", Target("example.com", 443), "/x")),
        ("http://[::1]:81/", ("http", Target("::1", 81), "/")),
        ("http://10.0.0.1/", ("http", Target("10.0.0.1", 80), "/")),
    ],
)
def test_absolute_target(uri: str, expected: tuple[str, Target, str]) -> None:
    assert absolute_target(with_target(uri)) == expected


@pytest.mark.parametrize(
    "uri",
    [
        "/origin/form",
        "*",
        "example.com:80",
        "ftp://example.com/",
        "http:///path",
        "http://user:pw@example.com/",
        "http://example.com:0/",
        "http://exa mple.com/",
    ],
)
def test_absolute_target_errors(uri: str) -> None:
    with pytest.raises(HttpError) as info:
        absolute_target(with_target(uri))
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("host", "normal"),
    [
        ("Example.COM", "example.com"),
        ("xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("Bücher.de", "bücher.de"),
        ("255.255.255.255", "255.255.255.255"),
        ("[::FFFF:1.2.3.4]", "::ffff:102:304"),
        ("::1", "::1"),
        ("localhost", "localhost"),
        ("1e100.net", "1e100.net"),
        ("0xyz", "0xyz"),  # not hex: a name
    ],
)
def test_normalize_host(host: str, normal: str) -> None:
    assert normalize_host(host) == normal
    assert normalize_host(normal) == normal


@pytest.mark.parametrize(
    "host",
    [
        "",
        ".",
        "a..b",
        "256.1.1.1",
        "1.2.3.4.",
        "www.123",
        "0x10",
        "a.0x",
        "0XAB",
        "a/b",
        "a@b",
        "\u3000",
        "a" * 255,
        "[::1",
        "fe80::1%eth0",
        "1:2",
    ],
)
def test_normalize_host_errors(host: str) -> None:
    with pytest.raises(ValueError):
        normalize_host(host)


# ---------------------------------------------------------------------------- forwarding


def test_forward_request_head() -> None:
    head = req(
        b"POST http://example.com/p?q HTTP/1.1\r\n"
        b"Host: wrong.example\r\n"
        b"Connection: keep-alive, X-Hop\r\n"
        b"X-Hop: dropped\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"Proxy-Authorization: Basic eDp5\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"Proxy-Anything: x\r\n"
        b"TE: trailers\r\n"
        b"Trailer: X-Sum\r\n"
        b"Upgrade: websocket\r\n"
        b"Transfer-Encoding: chunked\r\n"
        b"x-Kept: 1\r\n"
        b"\r\n"
    )
    _, target, path = absolute_target(head)
    out = forward_request_head(head, target, path)
    assert out == (
        b"POST /p?q HTTP/1.1\r\nHost: example.com\r\n"
        b"Transfer-Encoding: chunked\r\nx-Kept: 1\r\n\r\n"
    )
    assert parse_request_head(out) is not None


@pytest.mark.parametrize(
    ("target", "version", "close", "expected"),
    [
        (Target("h", 8080), "HTTP/1.1", False, b"GET / HTTP/1.1\r\nHost: h:8080\r\nA: 1\r\n\r\n"),
        (
            Target("::1", 80),
            "HTTP/1.1",
            True,
            b"GET / HTTP/1.1\r\nHost: [::1]\r\nA: 1\r\nConnection: close\r\n\r\n",
        ),
        (
            Target("h", 80),
            "HTTP/1.0",
            False,
            b"GET / HTTP/1.0\r\nHost: h\r\nA: 1\r\nConnection: keep-alive\r\n\r\n",
        ),
        (
            Target("h", 80),
            "HTTP/1.0",
            True,
            b"GET / HTTP/1.0\r\nHost: h\r\nA: 1\r\nConnection: close\r\n\r\n",
        ),
    ],
)
def test_forward_request_head_host_and_connection(
    target: Target, version: str, close: bool, expected: bytes
) -> None:
    head = RequestHead("GET", "http://x/", version, ((b"A", b"1"), (b"Content-Length", b"0"))[:1])
    assert forward_request_head(head, target, "/", close=close) == expected


def test_forward_response_head() -> None:
    head = resp(
        b"HTTP/1.0 200 Fine\r\n"
        b"Connection: X-Hop\r\n"
        b"X-Hop: 1\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"Proxy-Authenticate: Basic\r\n"
        b"Content-Length: 3\r\n"
        b"Set-Cookie: a=1\r\n"
        b"Set-Cookie: b=2\r\n"
        b"\r\n"
    )
    out = forward_response_head(head, close=False)
    assert out == (
        b"HTTP/1.1 200 Fine\r\nContent-Length: 3\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n"
    )
    assert parse_response_head(out) is not None
    assert forward_response_head(head, close=True).endswith(b"Connection: close\r\n\r\n")
    kept = forward_response_head(head, close=False, client_version="HTTP/1.0")
    assert kept.endswith(b"Connection: keep-alive\r\n\r\n")


def test_response_with_content_length_and_transfer_encoding_is_refused() -> None:
    # RFC 9112 6.3: "ought to be handled as an error"; exitgate answers 502 (issue 12).
    with pytest.raises(HttpError) as info:
        resp(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert info.value.status == 502


def test_forward_response_head_normalises_framing() -> None:
    head = resp(b"HTTP/1.1 200 OK\r\nContent-Length: 9, 9\r\nA: 1\r\nContent-Length: 9\r\n\r\n")
    out = forward_response_head(head, close=False)
    assert out == b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nA: 1\r\n\r\n"


@pytest.mark.parametrize(
    ("version", "fields", "keep"),
    [
        ("HTTP/1.1", b"", True),
        ("HTTP/1.0", b"", False),
        ("HTTP/1.1", b"Connection: close\r\n", False),
        ("HTTP/1.1", b"Connection: Keep-Alive, CLOSE\r\n", False),
        ("HTTP/1.1", b"Proxy-Connection: close\r\n", False),
        ("HTTP/1.0", b"Connection: keep-alive\r\n", True),
        ("HTTP/1.0", b"Proxy-Connection: Keep-Alive\r\n", True),
        ("HTTP/1.0", b"Connection: x\r\nConnection: keep-alive\r\n", True),
        ("HTTP/1.0", b"Connection: upgrade\r\n", False),
        ("HTTP/1.1", b"Connection: keep-alive\r\nProxy-Connection: close\r\n", False),
    ],
)
def test_request_keep_alive(version: str, fields: bytes, keep: bool) -> None:
    head = req(f"GET / {version}\r\n".encode() + fields + b"\r\n")
    assert request_keep_alive(head) is keep


@pytest.mark.parametrize(
    ("version", "fields", "keep"),
    [
        ("HTTP/1.1", b"", True),
        ("HTTP/1.0", b"", False),
        ("HTTP/1.1", b"Connection: close\r\n", False),
        ("HTTP/1.0", b"Connection: Keep-Alive\r\n", True),
        ("HTTP/1.0", b"Connection: foo\r\n", False),
        ("HTTP/1.1", b"Connection: foo\r\n", True),
        ("HTTP/1.1", b"Proxy-Connection: close\r\n", True),  # not a response field
    ],
)
def test_response_keep_alive(version: str, fields: bytes, keep: bool) -> None:
    head = resp(f"{version} 200 OK\r\n".encode() + fields + b"\r\n")
    assert response_keep_alive(head) is keep


# ---------------------------------------------------------------------------- body kinds


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (b"", (BodyKind.NONE, 0)),
        (b"Content-Length: 0\r\n", (BodyKind.NONE, 0)),
        (b"Content-Length: 12\r\n", (BodyKind.LENGTH, 12)),
        (b"Content-Length: 12\r\nContent-Length: 12\r\n", (BodyKind.LENGTH, 12)),
        (b"Content-Length: 12, 12\r\n", (BodyKind.LENGTH, 12)),
        (b"Transfer-Encoding: Chunked\r\n", (BodyKind.CHUNKED, 0)),
        (b"Transfer-Encoding: chunked,\r\n", (BodyKind.CHUNKED, 0)),
    ],
)
def test_request_body(fields: bytes, expected: tuple[BodyKind, int]) -> None:
    assert request_body(req(b"POST / HTTP/1.1\r\n" + fields + b"\r\n")) == expected


@pytest.mark.parametrize(
    ("status", "fields", "method", "expected"),
    [
        (200, b"Content-Length: 7\r\n", "GET", (BodyKind.LENGTH, 7)),
        (200, b"Content-Length: 0\r\n", "GET", (BodyKind.NONE, 0)),
        (200, b"Content-Length: 7\r\n", "HEAD", (BodyKind.NONE, 0)),
        (204, b"", "GET", (BodyKind.NONE, 0)),
        (304, b"Content-Length: 7\r\n", "GET", (BodyKind.NONE, 0)),
        (100, b"", "GET", (BodyKind.NONE, 0)),
        (200, b"", "CONNECT", (BodyKind.NONE, 0)),
        (407, b"Content-Length: 7\r\n", "CONNECT", (BodyKind.LENGTH, 7)),
        (200, b"", "GET", (BodyKind.UNTIL_CLOSE, 0)),
        (200, b"Transfer-Encoding: gzip, chunked\r\n", "GET", (BodyKind.CHUNKED, 0)),
        (200, b"Transfer-Encoding: gzip\r\n", "GET", (BodyKind.UNTIL_CLOSE, 0)),
    ],
)
def test_response_body(
    status: int, fields: bytes, method: str, expected: tuple[BodyKind, int]
) -> None:
    head = resp(f"HTTP/1.1 {status} X\r\n".encode() + fields + b"\r\n")
    assert response_body(head, method) == expected


def test_hand_built_head_with_bad_content_length_raises() -> None:
    head = RequestHead("POST", "/", "HTTP/1.1", ((b"Content-Length", b"x"),))
    with pytest.raises(HttpError):
        request_body(head)
    response = ResponseHead("HTTP/1.1", 200, "OK", ((b"Content-Length", b"1, 2"),))
    with pytest.raises(HttpError) as info:
        response_body(response, "GET")
    assert info.value.status == 502


# ---------------------------------------------------------------------------- body framing


def frame_three_ways(kind: BodyKind, body: bytes, length: int = 0) -> None:
    """The framer claims exactly `body`, however it is split, and never the bytes after it."""
    trailing = b"HTTP/1.1 200 OK\r\n"
    whole = BodyFramer(kind, length)
    assert whole.feed(body + trailing) == len(body)
    assert whole.done
    assert whole.feed(b"more") == 0
    bytewise = BodyFramer(kind, length)
    for i in range(len(body)):
        assert not bytewise.done
        assert bytewise.feed(memoryview(body)[i : i + 1]) == 1
    assert bytewise.done
    for cut in range(len(body) + 1):
        split = BodyFramer(kind, length)
        first = split.feed(bytearray(body[:cut]))
        assert first == cut
        assert split.feed(memoryview(body[cut:] + trailing)) == len(body) - cut
        assert split.done


def test_length_body() -> None:
    frame_three_ways(BodyKind.LENGTH, b"0123456789", 10)


def test_none_and_empty_length_bodies_are_done_at_once() -> None:
    for framer in (BodyFramer(BodyKind.NONE), BodyFramer(BodyKind.LENGTH, 0)):
        assert framer.done
        assert framer.feed(b"next") == 0


def test_until_close_body_is_never_done() -> None:
    framer = BodyFramer(BodyKind.UNTIL_CLOSE)
    assert framer.feed(b"a" * 100) == 100
    assert framer.feed(memoryview(b"\r\n0\r\n\r\n")) == 7
    assert not framer.done


def test_negative_length_is_refused() -> None:
    with pytest.raises(ValueError):
        BodyFramer(BodyKind.LENGTH, -1)


@pytest.mark.parametrize(
    "body",
    [
        b"0\r\n\r\n",
        b"5\r\nhello\r\n0\r\n\r\n",
        b'5;ext=1;q="a b"\r\nhello\r\nA \t; x\r\n0123456789\r\n0\r\n\r\n',
        b"1f\r\n" + b"x" * 31 + b"\r\n00\r\nX-Sum: 1\r\nX-Other:\r\n\r\n",
        b"000000000000000F\r\n" + b"y" * 15 + b"\r\n0;last\r\n\r\n",
        b"4\r\n\r\n\r\n\r\n0\r\n\r\n",  # chunk data that looks like CRLFs
    ],
)
def test_chunked_body(body: bytes) -> None:
    frame_three_ways(BodyKind.CHUNKED, body)


@pytest.mark.parametrize(
    "body",
    [
        b"x\r\n",
        b"\r\n",
        b"-1\r\n",
        b"5\nhello\r\n",  # bare LF
        b"5 x\r\n",
        b"10000000000000000\r\n",  # 17 hex digits
        b"5\r\nhelloXX",
        b"5\r\nhello\rX",
        b"0\r\nBad Trailer: x\r\n\r\n",
        b"0\r\nX: a\x00\r\n\r\n",
        b"0\r\n\n",
    ],
)
def test_chunked_errors(body: bytes) -> None:
    for feed in ([body], [body[i : i + 1] for i in range(len(body))]):
        framer = BodyFramer(BodyKind.CHUNKED)
        with pytest.raises(HttpError) as info:
            for chunk in feed:
                framer.feed(chunk)
        assert info.value.status == 400


def test_chunk_lines_are_bounded() -> None:
    framer = BodyFramer(BodyKind.CHUNKED, max_line=16)
    assert framer.feed(b"5;" + b"e" * 10) == 12  # a partial line is kept, still under the limit
    with pytest.raises(HttpError, match="too long"):
        framer.feed(b"e" * 10)
    trailer = BodyFramer(BodyKind.CHUNKED, max_line=16)
    trailer.feed(b"0\r\n")
    with pytest.raises(HttpError, match="too long"):
        trailer.feed(memoryview(b"X-Trailer: " + b"v" * 20 + b"\r\n"))
    exact = BodyFramer(BodyKind.CHUNKED, max_line=5)
    assert exact.feed(b"0;e\r\n\r\n") == 7  # a line of exactly max_line bytes is fine
    assert exact.done


# -- the head and target values (written-out classes, see docs/decisions.md) -----------------


def test_heads_and_targets_are_values() -> None:
    a = Target("example.com", 443)
    assert a == Target("example.com", 443)
    assert a != Target("example.com", 80)
    assert {a, Target("example.com", 443)} == {a}
    assert repr(a) == "Target(host='example.com', port=443)"
    head = RequestHead("GET", "/", "HTTP/1.1", ((b"Host", b"x"),))
    same = RequestHead("GET", "/", "HTTP/1.1", ((b"Host", b"x"),))
    assert head == same and hash(head) == hash(same)
    assert head != RequestHead("GET", "/", "HTTP/1.0", ((b"Host", b"x"),))
    assert head.get("HOST") == b"x" and head.get(b"missing") is None
    assert "method='GET'" in repr(head)


def test_framing_is_worked_out_once_per_head() -> None:
    parsed = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert parsed is not None
    head = parsed[0]
    known = head.framing
    assert known is not None and known.length == 2  # checked (and kept) by the parser
    assert response_body(head, "GET") == (BodyKind.LENGTH, 2)
    assert head.framing is known  # read again, not worked out again
    # the kept framing is not part of the value: an equal head made by hand compares equal
    assert head == ResponseHead("HTTP/1.1", 200, "OK", ((b"Content-Length", b"2"),))


def test_an_empty_buffer_is_an_incomplete_head() -> None:
    assert parse_request_head(b"") is None
    assert parse_request_head(bytearray()) is None
    assert parse_response_head(b"") is None


def test_authorities_are_memoised_bounded_and_refusals_are_not_kept() -> None:
    from exitgate.wire import http1

    def connect(target: str) -> RequestHead:
        parsed = parse_request_head(f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
        assert parsed is not None
        return parsed[0]

    first = connect_target(connect("Example.COM:443"))
    assert first == Target("example.com", 443)
    assert connect_target(connect("Example.COM:443")) is first  # the memo's answer
    for _ in range(2):  # refused each time, never remembered
        with pytest.raises(HttpError, match="invalid port"):
            connect_target(connect("example.com:0"))
    bound = http1._authority.cache_info().maxsize
    assert bound is not None
    for n in range(bound + 10):
        connect_target(connect(f"h{n}.example:80"))
    assert http1._authority.cache_info().currsize <= bound
    assert connect_target(connect("Example.COM:443")) == Target("example.com", 443)
