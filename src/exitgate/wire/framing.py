"""Message framing: which fields say where a body ends, checked and rewritten to one form.

A message's body length comes from Content-Length or Transfer-Encoding (RFC 9112 section 6).
Two parsers that read those fields differently disagree about where a message ends, which is
how request smuggling and response splitting work. So a head is accepted only when its framing
has one meaning, and what goes on carries that meaning in one canonical field:

- Content-Length: every value of every Content-Length field (comma lists included) must be
  the same decimal number (RFC 9110 8.6); `Content-Length: 5, 5` or a repeated field becomes
  one `Content-Length: 5`. Differing or non-numeric values are refused.
- Transfer-Encoding: the codings of every field, lowercased and joined; `chunked` must come
  last and only once (RFC 9112 6.1). A request may carry only `chunked` (anything else is 501:
  a proxy that relays bodies verbatim cannot promise the target understands more).
- Refused outright: Transfer-Encoding together with Content-Length, and Transfer-Encoding in an
  HTTP/1.0 message (RFC 9112 6.1 and 6.3: both signal framing that cannot be trusted).
- A response whose final coding is not chunked is read until the target closes (RFC 9112
  6.3 rule 4) and keeps its codings.

Requests are refused with 400 (or 501), responses with 502. `message_framing` is pure: the
same input always gives the same `Framing` or the same error.
"""

from __future__ import annotations

import enum
from typing import Final

from exitgate.values import Value
from exitgate.wire.http_error import HttpError

FRAMING_FIELDS: Final = frozenset((b"content-length", b"transfer-encoding"))
_MAX_DIGITS: Final = 18  # fits in an int64 with room; RFC 9110 leaves the bound to us


class Via(enum.Enum):
    """Which field frames the message (not yet what the body is: see `request_body`)."""

    NONE = "none"  # neither field
    LENGTH = "length"  # Content-Length
    CHUNKED = "chunked"  # Transfer-Encoding ending in chunked
    CODED = "coded"  # Transfer-Encoding not ending in chunked (responses only: until close)


class Framing(Value):
    """A value, written out rather than a frozen dataclass: one is made per message with a
    body, and a dataclass's generated __init__ stays interpreted in the compiled build."""

    __slots__ = ("field", "length", "via")
    via: Final[Via]
    length: Final[int]  # with LENGTH
    field: Final[bytes]  # the canonical field line to forward, CRLF included; b"" for NONE

    def __init__(self, via: Via, length: int = 0, field: bytes = b"") -> None:
        self.via = via
        self.length = length
        self.field = field

    def value(self) -> tuple[tuple[str, object], ...]:
        return (("via", self.via), ("length", self.length), ("field", self.field))


NO_FRAMING: Final = Framing(Via.NONE)
_CHUNKED_FIELD: Final = b"Transfer-Encoding: chunked\r\n"


def content_length(values: list[bytes], status: int) -> int:
    """The one Content-Length among `values` (each possibly a comma list); else HttpError."""
    if len(values) == 1 and b"," not in values[0]:
        value = values[0].strip()
    else:
        found = {v.strip() for raw in values for v in raw.split(b",")}
        if len(found) != 1:
            raise HttpError(status, "conflicting Content-Length")
        value = found.pop()
    if not value.isdigit() or len(value) > _MAX_DIGITS:
        raise HttpError(status, "invalid Content-Length")
    return int(value)


def codings(values: list[bytes]) -> list[bytes]:
    """The transfer codings named by all Transfer-Encoding fields, lowercased, in order."""
    return [c for raw in values for v in raw.split(b",") if (c := v.strip().lower())]


def message_framing(
    lengths: list[bytes], encodings: list[bytes], version: str, *, request: bool
) -> Framing:
    """The framing of a message from its Content-Length and Transfer-Encoding field values
    (empty lists when absent). HttpError(400/501) for a request, HttpError(502) for a response.
    """
    status = 400 if request else 502
    if encodings:
        if lengths:
            raise HttpError(status, "both Content-Length and Transfer-Encoding")
        if version == "HTTP/1.0":
            raise HttpError(status, "Transfer-Encoding in an HTTP/1.0 message")
        found = codings(encodings)
        if found == [b"chunked"]:
            return Framing(Via.CHUNKED, 0, _CHUNKED_FIELD)
        chunked = found.count(b"chunked")
        if not found or chunked > 1 or (chunked and found[-1] != b"chunked"):
            raise HttpError(status, "chunked is not the final transfer coding")
        if request:
            if found[-1] != b"chunked":
                raise HttpError(400, "chunked is not the final transfer coding")
            raise HttpError(501, "unsupported transfer coding")
        via = Via.CHUNKED if chunked else Via.CODED
        return Framing(via, 0, b"Transfer-Encoding: " + b", ".join(found) + b"\r\n")
    if lengths:
        n = content_length(lengths, status)
        return Framing(Via.LENGTH, n, b"Content-Length: %d\r\n" % n)
    return NO_FRAMING
