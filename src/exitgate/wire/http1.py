"""HTTP/1.1 proxy-side parsing and framing (RFC 9112), sans-IO.

Theory of operation. A head is parsed in one go once its blank line has arrived: find
CRLFCRLF (bounded by `max_size`), match the start line with one regex, then split and validate
the field block in one `findall` pass (see `_FIELD`): all in C, about 4-5 µs for a typical
request head, most of it building the header tuples. While a head is incomplete, the part
already received is checked cheaply so that garbage (a TLS hello on the plain port, bare-LF
clients) fails at once instead of after a timeout. Field lookups are `tuple.index` over the
lowercased names computed once per head.

Bodies are never copied or re-encoded: `BodyFramer` only says how many bytes of each chunk of
input still belong to the body; the caller relays exactly those bytes.

Decisions:
- Line endings are CRLF only. A bare LF (or a lone CR) anywhere in a head is 400; in a
  response head 502. Up to 16 empty lines before a request line are skipped (RFC 9112 2.2).
- Rejected with 400: obs-fold, whitespace before a field name's colon, NUL/CR/LF in values,
  non-visible-ASCII request targets, several Host fields, and framing that is not one meaning
  (see `wire.framing`: conflicting or malformed Content-Length, Content-Length with
  Transfer-Encoding, Transfer-Encoding on HTTP/1.0, chunked not last or twice). Any coding but
  a single `chunked` in a request is 501. Versions other than HTTP/1.0 and HTTP/1.1: 505.
  Heads over `max_size`: 431.
- Responses: malformed heads, framing included, are `HttpError(502)`; a final coding other
  than chunked is read until close.
- Framing leaves in one canonical field (`Content-Length: 5, 5` goes on as `Content-Length:
  5`), in both directions.
- Proxy-Authorization: Basic with strict UTF-8 (same rule as SOCKS5); absent → None, present
  but unusable → MALFORMED.
- Hosts are lowercased; a name whose last label is numeric must be a strict dotted-quad IPv4
  (no octal/hex forms that resolvers would reinterpret); IPv6 is compressed, without zone.
- Forwarding strips hop-by-hop fields (Connection and what it names, Keep-Alive, TE, Trailer,
  Upgrade) and every `Proxy-*` field, in both directions.
"""

from __future__ import annotations

import binascii
import enum
import re
from functools import lru_cache
from typing import Final, Literal

from exitgate.model import Target
from exitgate.wire.body import BodyFramer, BodyKind
from exitgate.wire.framing import FRAMING_FIELDS, NO_FRAMING, Framing, Via, message_framing
from exitgate.wire.host import normalize_host
from exitgate.wire.http1_heads import Fields, Headers, RequestHead, ResponseHead, field_values
from exitgate.wire.http_error import HttpError

__all__ = [
    "MALFORMED",
    "BodyFramer",
    "BodyKind",
    "HttpError",
    "Malformed",
    "RequestHead",
    "ResponseHead",
    "absolute_target",
    "basic_credentials",
    "connect_target",
    "forward_request_head",
    "forward_response_head",
    "normalize_host",
    "parse_request_head",
    "parse_response_head",
    "proxy_credentials",
    "request_body",
    "request_keep_alive",
    "response_body",
    "response_keep_alive",
]


_TOKEN: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_REQUEST_LINE: Final = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
# The reason phrase may hold HTAB, SP, VCHAR and obs-text, no other control.
_STATUS_LINE: Final = re.compile(
    rb"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?"
)
# One field line, anchored at a line start: `findall` over the field block then yields one
# match per valid line and skips invalid ones, so "as many matches as LFs" validates the whole
# block (no obs-fold, no bare CR/LF, no NUL, token names) in the same C pass that splits it.
_FIELD: Final = re.compile(rb"^(" + _TOKEN + rb"):[ \t]*+([^\x00\r\n]*+)\r\n", re.MULTILINE)
_VERSIONS: Final = {(b"1", b"1"): "HTTP/1.1", (b"1", b"0"): "HTTP/1.0"}
_MAX_EMPTY_LINES: Final = 16
_OWS: Final = (0x20, 0x09)  # SP, HTAB

# ---------------------------------------------------------------------------- head parsing


def _find_head(
    buf: bytes | bytearray, max_size: int, status: int, start_line: re.Pattern[bytes]
) -> tuple[bytes, int] | None:
    """(head from the start line to the CRLF of its last line, bytes consumed) or None.

    `status` is what a malformed head is answered with (400 request, 502 response)."""
    if not buf:  # the usual first call on a kept-alive connection: nothing read yet
        return None
    start = 0
    while buf.startswith(b"\r\n", start):
        start += 2
        if start > 2 * _MAX_EMPTY_LINES:
            raise HttpError(status, "too many empty lines before the start line")
    end = buf.find(b"\r\n\r\n", start, max_size)
    if end >= 0:
        return bytes(buf[start : end + 2]), end + 4
    if len(buf) >= max_size:
        raise HttpError(431 if status == 400 else status, "head too large")
    # Incomplete: fail early on what is already there.
    if buf.count(b"\n", start) != buf.count(b"\r\n", start):
        raise HttpError(status, "bare LF in head")
    eol = buf.find(b"\r\n", start)
    if eol >= 0 and start_line.fullmatch(buf, start, eol) is None:
        raise HttpError(status, "malformed start line")
    return None


def _split_fields(head: bytes, at: int, status: int) -> Headers:
    pairs: list[tuple[bytes, bytes]] = _FIELD.findall(head, at)
    if len(pairs) != head.count(b"\n", at):
        raise HttpError(status, _diagnose(head, at))
    # Rare: trailing whitespace in a value (the pattern keeps it). Looking at each value's
    # last byte costs less than two substring searches over the head.
    for _, value in pairs:
        if value and value[-1] in _OWS:
            return tuple([(name, value.rstrip(b" \t")) for name, value in pairs])
    return tuple(pairs)


def _diagnose(head: bytes, at: int) -> str:
    """Say which field line is wrong (error path only, so it may be slow)."""
    for line in head[at:].split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            return "obsolete line folding"
        if b"\n" in line or b"\r" in line:
            return "bare CR or LF in head"
        name, colon, value = line.partition(b":")
        if not colon and line:
            return "field line without a colon"
        if line and re.fullmatch(_TOKEN, name) is None:
            return "invalid field name"
        if b"\x00" in value:
            return "NUL in field value"
    return "malformed field line"  # pragma: no cover - _FIELD and this loop agree


def parse_request_head(
    buf: bytes | bytearray, max_size: int = 65536
) -> tuple[RequestHead, int] | None:
    """Parse a request head at the start of `buf`.

    None: incomplete (and still under `max_size`). Otherwise (head, bytes consumed including
    leading empty lines and the final CRLFCRLF); the rest of `buf` is untouched.
    Raises HttpError (400, 431, 501, 505).
    """
    found = _find_head(buf, max_size, 400, _REQUEST_LINE)
    if found is None:
        return None
    head, consumed = found
    eol = head.find(b"\r\n")
    m = _REQUEST_LINE.fullmatch(head, 0, eol)
    if m is None:
        raise HttpError(400, "malformed request line")
    method, target, major, minor = m.groups()
    version = _VERSIONS.get((major, minor))
    if version is None:
        raise HttpError(505, "HTTP version not supported")
    req = RequestHead(
        method.decode("ascii"), target.decode("ascii"), version, _split_fields(head, eol + 2, 400)
    )
    _check_request_framing(req)
    return req, consumed


def parse_response_head(
    buf: bytes | bytearray, max_size: int = 65536
) -> tuple[ResponseHead, int] | None:
    """Parse a response head; like `parse_request_head`, but every error is HttpError(502)."""
    found = _find_head(buf, max_size, 502, _STATUS_LINE)
    if found is None:
        return None
    head, consumed = found
    eol = head.find(b"\r\n")
    m = _STATUS_LINE.fullmatch(head, 0, eol)
    if m is None:
        raise HttpError(502, "malformed status line")
    major, minor, status, reason = m.groups()
    version = _VERSIONS.get((major, minor))
    if version is None:
        raise HttpError(502, "unsupported HTTP version in response")
    code = int(status)
    if code < 100:
        raise HttpError(502, "invalid status code")
    resp = ResponseHead(
        version, code, (reason or b"").decode("latin-1"), _split_fields(head, eol + 2, 502)
    )
    response_framing(resp)
    return resp, consumed


# ---------------------------------------------------------------------------- framing


def _framing(head: Fields, version: str, *, request: bool) -> Framing:
    """The head's checked framing (see `wire.framing`); cheap when neither field is there."""
    known = head.framing
    if known is not None:
        return known
    names = head.names
    if b"content-length" not in names and b"transfer-encoding" not in names:
        framing = NO_FRAMING
    else:
        framing = message_framing(
            field_values(head, b"content-length"),
            field_values(head, b"transfer-encoding"),
            version,
            request=request,
        )
    head.framing = framing
    return framing


def request_framing(head: RequestHead) -> Framing:
    return _framing(head, head.version, request=True)


def response_framing(head: ResponseHead) -> Framing:
    return _framing(head, head.version, request=False)


def _check_request_framing(req: RequestHead) -> None:
    if req.names.count(b"host") > 1:
        raise HttpError(400, "several Host fields")
    request_framing(req)


def request_body(head: RequestHead) -> tuple[BodyKind, int]:
    """How the request body is framed: (NONE, 0), (LENGTH, n > 0) or (CHUNKED, 0)."""
    framing = request_framing(head)  # kept on the head since the parser checked it
    if framing.via is Via.CHUNKED:
        return BodyKind.CHUNKED, 0  # message_framing accepts only a lone `chunked` here
    if framing.via is Via.LENGTH and framing.length:
        return BodyKind.LENGTH, framing.length
    return BodyKind.NONE, 0


def response_body(head: ResponseHead, request_method: str) -> tuple[BodyKind, int]:
    """How the response body is framed (RFC 9112 6.3)."""
    framing = response_framing(head)  # checked even when there is no body: it is forwarded
    status = head.status
    if request_method == "HEAD" or status < 200 or status in (204, 304):
        return BodyKind.NONE, 0
    if request_method == "CONNECT" and status < 300:
        return BodyKind.NONE, 0  # a tunnel follows
    via = framing.via
    if via is Via.CHUNKED:
        return BodyKind.CHUNKED, 0
    if via is Via.LENGTH:
        return (BodyKind.LENGTH, framing.length) if framing.length else (BodyKind.NONE, 0)
    return BodyKind.UNTIL_CLOSE, 0


# ---------------------------------------------------------------------------- connection


def _tokens(head: Fields, key: bytes) -> set[bytes]:
    """Lowercased comma-separated tokens of a field (Connection, Proxy-Connection)."""
    values = field_values(head, key)
    if len(values) == 1 and b"," not in values[0]:
        return {values[0].strip().lower()}
    return {t.strip().lower() for raw in values for t in raw.split(b",")}


def request_keep_alive(head: RequestHead) -> bool:
    """Whether the client wants the connection kept (Connection and Proxy-Connection)."""
    names = head.names
    if b"connection" not in names and b"proxy-connection" not in names:
        return head.version == "HTTP/1.1"
    tokens = _tokens(head, b"connection") | _tokens(head, b"proxy-connection")
    if b"close" in tokens:
        return False
    return head.version == "HTTP/1.1" or b"keep-alive" in tokens


def response_keep_alive(head: ResponseHead) -> bool:
    """Whether the server keeps the connection (its headers only: an UNTIL_CLOSE body, see
    `response_body`, ends the connection regardless)."""
    if b"connection" not in head.names:
        return head.version == "HTTP/1.1"
    tokens = _tokens(head, b"connection")
    if b"close" in tokens:
        return False
    return head.version == "HTTP/1.1" or b"keep-alive" in tokens


_HOP_BY_HOP: Final = frozenset((b"connection", b"keep-alive", b"te", b"trailer", b"upgrade"))
# a forwarded request gets the URI's authority as Host; X-Exitgate-Ban is for the gateway
_DROP_REQUEST: Final = _HOP_BY_HOP | {b"host", b"x-exitgate-ban"}
_DROP_RESPONSE: Final = _HOP_BY_HOP


def _kept_fields(head: Fields, extra_drop: frozenset[bytes], framing: Framing) -> list[bytes]:
    """The end-to-end fields to forward. Framing fields leave as `framing.field`, once, where
    the first of them stood, whatever form they came in (and even when Connection names them:
    the body is framed by them either way).

    `extra_drop` already holds the hop-by-hop names (`_DROP_RESPONSE`, `_DROP_REQUEST`).
    Indexed loops, not `zip(..., strict=True)`: compiled, a call with a keyword argument goes
    through the generic call path, twice per forwarded request."""
    names = head.names
    headers = head.headers
    drop = extra_drop
    if b"connection" in names:
        drop = drop | _tokens(head, b"connection")
    out: list[bytes] = []
    if framing.via is Via.NONE:
        for i in range(len(names)):
            lname = names[i]
            if lname not in drop and not lname.startswith(b"proxy-"):
                name, value = headers[i]
                out += (name, b": ", value, b"\r\n")
        return out
    canonical = framing.field
    for i in range(len(names)):
        lname = names[i]
        if lname in FRAMING_FIELDS:
            if canonical:
                out.append(canonical)
                canonical = b""
        elif lname not in drop and not lname.startswith(b"proxy-"):
            name, value = headers[i]
            out += (name, b": ", value, b"\r\n")
    return out


def forward_request_head(
    head: RequestHead, target: Target, path: str, *, close: bool = False
) -> bytes:
    """The origin-form request for the target: same method and version, Host from the URI
    (without :80), hop-by-hop and Proxy-* fields dropped, the framing in one canonical field
    (the body is relayed verbatim). `close` asks the target to close after this exchange;
    otherwise an HTTP/1.0 request asks for keep-alive explicitly."""
    authority = target.authority if target.port != 80 else target.authority[:-3]
    parts = [f"{head.method} {path} {head.version}\r\nHost: {authority}\r\n".encode("ascii")]
    parts += _kept_fields(head, _DROP_REQUEST, request_framing(head))
    if close:
        parts.append(b"Connection: close\r\n")
    elif head.version == "HTTP/1.0":
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def forward_response_head(
    head: ResponseHead, *, close: bool, client_version: str = "HTTP/1.1"
) -> bytes:
    """The response for the client, as HTTP/1.1 with the same status and reason; hop-by-hop and
    Proxy-* fields dropped, the framing in one canonical field. Adds `Connection: close` when
    `close`, or `Connection: keep-alive` for an HTTP/1.0 client."""
    parts = [f"HTTP/1.1 {head.status} {head.reason}\r\n".encode("latin-1")]
    parts += _kept_fields(head, _DROP_RESPONSE, response_framing(head))
    if close:
        parts.append(b"Connection: close\r\n")
    elif client_version == "HTTP/1.0":
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


# ---------------------------------------------------------------------------- targets


class _Marker(enum.Enum):
    MALFORMED = "MALFORMED"


MALFORMED: Final = _Marker.MALFORMED
Malformed = Literal[_Marker.MALFORMED]


def proxy_credentials(head: RequestHead) -> tuple[str, str] | Malformed | None:
    """(username, password) from `Proxy-Authorization: Basic`; None when absent (answer
    ERR_AUTH_REQUIRED); MALFORMED when present but unusable (answer AUTH_FAILED): several
    fields, another scheme, bad base64, not UTF-8, no colon. The password is everything after
    the first colon."""
    return basic_credentials(head.get_all(b"proxy-authorization"))


def basic_credentials(values: list[bytes]) -> tuple[str, str] | Malformed | None:
    """`proxy_credentials` of a head's Proxy-Authorization values."""
    if not values:
        return None
    if len(values) > 1:
        return MALFORMED
    scheme, _, token = values[0].partition(b" ")
    token = token.strip(b" ")
    if scheme.lower() != b"basic" or not token:
        return MALFORMED
    try:
        raw = binascii.a2b_base64(token + b"=" * (-len(token) % 4), strict_mode=True)
        text = raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return MALFORMED
    username, colon, password = text.partition(":")
    if not colon:
        return MALFORMED
    return username, password


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or not 0 < int(text) < 65536:
        raise HttpError(400, "invalid port")
    return int(text)


@lru_cache(maxsize=4096)
def _authority(text: str, default_port: int | None) -> Target:
    """The target an authority names, memoised: a pure function of the text, and a client
    names the same few hosts again and again. `lru_cache` keeps no refusal (it raises each
    time)."""
    return _parse_authority(text, default_port)


def _parse_authority(text: str, default_port: int | None) -> Target:
    if "@" in text:
        raise HttpError(400, "userinfo in the request target")
    if text.startswith("["):
        close = text.find("]")
        host, rest = text[: close + 1], text[close + 1 :]
        if close < 0 or (rest and not rest.startswith(":")):
            raise HttpError(400, "malformed IPv6 authority")
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text_ = text.partition(":")
        port_text = port_text_ if colon else None
    if port_text:
        port = _port(port_text)
    elif default_port is None:
        raise HttpError(400, "port required")
    else:
        port = default_port
    try:
        return Target(normalize_host(host), port)
    except ValueError:
        raise HttpError(400, "invalid host") from None


def connect_target(head: RequestHead) -> Target:
    """The CONNECT authority-form target: host:port or [v6]:port, port 1..65535."""
    return _authority(head.target, None)


_ABSOLUTE: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?]*)(.*)")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def absolute_target(head: RequestHead) -> tuple[str, Target, str]:
    """Split an absolute-form target: ("http" | "https", Target, origin-form path+query).
    The fragment is dropped, an empty path becomes "/". Anything else is HttpError(400)."""
    m = _ABSOLUTE.fullmatch(head.target.partition("#")[0])
    if m is None:
        raise HttpError(400, "absolute-form request target required")
    scheme, authority, path = m.groups()
    scheme = scheme.lower()
    default = _DEFAULT_PORTS.get(scheme)
    if default is None:
        raise HttpError(400, "unsupported URI scheme")
    if not authority:
        raise HttpError(400, "empty host in the request target")
    if not path.startswith("/"):
        path = "/" + path
    return scheme, _authority(authority, default), path
