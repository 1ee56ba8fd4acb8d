"""`wire.framing`: one meaning or a refusal, and what goes on carries that one meaning."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exitgate.model import Target
from exitgate.wire.framing import Framing, Via, message_framing
from exitgate.wire.http1 import (
    HttpError,
    forward_request_head,
    forward_response_head,
    parse_request_head,
    parse_response_head,
    request_body,
    request_framing,
    response_framing,
)

# Values an attacker would try: numbers with and without padding and signs, lists, junk.
_LENGTH_PART = st.sampled_from(
    [b"5", b"5", b"05", b"6", b"0", b"", b" 5", b"5 ", b"+5", b"-5", b"0x5", b"5.0", b"1" * 19]
)
_LENGTH = st.lists(_LENGTH_PART, min_size=1, max_size=3).map(b",".join)
_CODING = st.sampled_from(
    [b"chunked", b"Chunked", b"CHUNKED", b"gzip", b"identity", b"", b" chunked", b"chunked "]
)
_ENCODING = st.lists(_CODING, min_size=1, max_size=3).map(b",".join)
_VERSION = st.sampled_from(["HTTP/1.1", "HTTP/1.0"])


def _reframed(framing: Framing, version: str, *, request: bool) -> Framing:
    """Parse the canonical field back, as the next hop would."""
    name, _, value = framing.field.partition(b": ")
    value = value.removesuffix(b"\r\n")
    if name == b"Content-Length":
        return message_framing([value], [], version, request=request)
    return message_framing([], [value], version, request=request)


@given(
    lengths=st.lists(_LENGTH, max_size=3),
    encodings=st.lists(_ENCODING, max_size=3),
    version=_VERSION,
    request=st.booleans(),
)
def test_framing_is_one_meaning_or_refused(
    lengths: list[bytes], encodings: list[bytes], version: str, request: bool
) -> None:
    try:
        framing = message_framing(lengths, encodings, version, request=request)
    except HttpError as exc:
        assert exc.status in ((400, 501) if request else (502,))
        return
    # never both fields, never TE on HTTP/1.0
    assert not (lengths and encodings)
    assert not (encodings and version == "HTTP/1.0")
    if framing.via is Via.NONE:
        assert not lengths and not encodings and framing.field == b""
        return
    assert framing.field.endswith(b"\r\n") and framing.field.count(b"\r\n") == 1
    # the canonical field means the same to whoever reads it next, and is a fixed point
    again = _reframed(framing, version, request=request)
    assert again == framing
    if framing.via is Via.LENGTH:
        parts = {p.strip() for raw in lengths for p in raw.split(b",")}
        assert parts == {str(framing.length).encode()} or (
            len(parts) == 1 and int(parts.pop()) == framing.length
        )
    if framing.via is Via.CHUNKED and request:
        assert framing.field == b"Transfer-Encoding: chunked\r\n"


@pytest.mark.parametrize(
    ("lengths", "expected"),
    [
        ([b"5, 5"], b"Content-Length: 5\r\n"),
        ([b"5", b"5"], b"Content-Length: 5\r\n"),
        ([b"5,5", b" 5 "], b"Content-Length: 5\r\n"),
        ([b"007"], b"Content-Length: 7\r\n"),
    ],
)
def test_identical_lengths_become_one_field(lengths: list[bytes], expected: bytes) -> None:
    for request in (True, False):
        assert message_framing(lengths, [], "HTTP/1.1", request=request).field == expected


@pytest.mark.parametrize(
    ("lengths", "encodings", "version", "status"),
    [
        ([b"5, 6"], [], "HTTP/1.1", 400),
        ([b"5", b"6"], [], "HTTP/1.1", 400),
        ([b"5,"], [], "HTTP/1.1", 400),
        ([b"-1"], [], "HTTP/1.1", 400),
        ([b"0x10"], [], "HTTP/1.1", 400),
        ([b"1" * 19], [], "HTTP/1.1", 400),
        ([b"5"], [b"chunked"], "HTTP/1.1", 400),
        ([], [b"chunked"], "HTTP/1.0", 400),
        ([], [b"chunked, chunked"], "HTTP/1.1", 400),
        ([], [b"chunked", b"chunked"], "HTTP/1.1", 400),
        ([], [b"gzip"], "HTTP/1.1", 400),
        ([], [b"chunked, gzip"], "HTTP/1.1", 400),
        ([], [b""], "HTTP/1.1", 400),
        ([], [b"gzip, chunked"], "HTTP/1.1", 501),
    ],
)
def test_request_refusals(
    lengths: list[bytes], encodings: list[bytes], version: str, status: int
) -> None:
    with pytest.raises(HttpError) as info:
        message_framing(lengths, encodings, version, request=True)
    assert info.value.status == status


def test_response_codings() -> None:
    gz = message_framing([], [b"GZIP"], "HTTP/1.1", request=False)
    assert (gz.via, gz.field) == (Via.CODED, b"Transfer-Encoding: gzip\r\n")
    both = message_framing([], [b"gzip", b" Chunked"], "HTTP/1.1", request=False)
    assert (both.via, both.field) == (Via.CHUNKED, b"Transfer-Encoding: gzip, chunked\r\n")
    for bad in ([b"chunked, gzip"], [b"chunked", b"chunked"]):
        with pytest.raises(HttpError):
            message_framing([], bad, "HTTP/1.1", request=False)


_FIELD_LINE = st.one_of(
    _LENGTH.map(lambda v: b"Content-Length: " + v),
    _ENCODING.map(lambda v: b"Transfer-Encoding: " + v),
    st.sampled_from([b"X-A: 1", b"Connection: content-length", b"Connection: transfer-encoding",
                     b"Accept: */*"]),
)


@given(lines=st.lists(_FIELD_LINE, max_size=5), version=_VERSION)
def test_forwarded_heads_carry_at_most_one_framing_field(
    lines: list[bytes], version: str
) -> None:
    fields = b"".join(line + b"\r\n" for line in lines)
    raw = f"POST http://t/ {version}\r\n".encode() + fields + b"\r\n"
    try:
        parsed = parse_request_head(raw)
    except HttpError:
        return
    assert parsed is not None
    head = parsed[0]
    out = forward_request_head(head, Target("t", 80), "/")
    again = parse_request_head(out)
    assert again is not None
    names = [name.lower() for name, _ in again[0].headers]
    assert names.count(b"content-length") + names.count(b"transfer-encoding") <= 1
    assert request_body(again[0]) == request_body(head)
    assert request_framing(again[0]) == request_framing(head)

    response = f"{version} 200 OK\r\n".encode() + fields + b"\r\n"
    try:
        got = parse_response_head(response)
    except HttpError:
        return
    assert got is not None
    out = forward_response_head(got[0], close=False)
    back = parse_response_head(out)
    assert back is not None
    names = [name.lower() for name, _ in back[0].headers]
    assert names.count(b"content-length") + names.count(b"transfer-encoding") <= 1
    if version == "HTTP/1.1":  # an HTTP/1.0 response goes on as HTTP/1.1, coded the same
        assert response_framing(back[0]) == response_framing(got[0])
