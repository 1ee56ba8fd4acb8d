"""Client side of the handshakes towards upstream proxies (exit nodes of kind `upstream`).

Both clients are sans-IO and share one driver shape. `receive_data(b"")` means the proxy
closed the connection; it always raises, so a short or missing answer can never hang:

    client = HttpConnectClient(proxy, target)   # or Socks5Client(proxy, target)
    send(client.initial())
    while not client.established:
        data = await read()                     # b"" at EOF
        out = client.receive_data(data)         # raises UpstreamFailure
        if out:                                 # Socks5Client: bytes to send; HTTP: never
            send(out)
    relay(client.trailing_data())               # target bytes that came with the answer

(`HttpConnectClient.receive_data` returns a bool, True once established, so `if out:` never
sends anything for it.)

A failure is classified for the failure policy: `node` when the proxy itself misbehaved or
refused us, `target_*` when the proxy reports that the target failed (SOCKS replies 0x03/0x04,
0x05, 0x06; HTTP 502/503, 504, or an RFC 9209 `Proxy-Status: ...; error=connection_refused`).
A failure is decided as soon as the bytes that carry it arrived: a SOCKS5 reply as soon as its
REP byte is in, without waiting for an address that some proxies never send.
"""

from __future__ import annotations

import base64
import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Final, Literal
from urllib.parse import quote, unquote, urlsplit

from exitgate.model import Target
from exitgate.wire.http1 import HttpError, normalize_host, parse_response_head
from exitgate.wire.socks5 import encode_address

__all__ = [
    "FailureKind",
    "HttpConnectClient",
    "Socks5Client",
    "UpstreamFailure",
    "UpstreamProxy",
    "parse_proxy_url",
]

FailureKind = Literal["node", "target_unreachable", "target_refused", "target_timeout"]


class UpstreamFailure(Exception):
    """The handshake failed; `kind` says whose fault, `detail` is safe to log (no secrets)."""

    def __init__(self, kind: FailureKind, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind: FailureKind = kind
        self.detail = detail


@dataclass(frozen=True, slots=True)
class UpstreamProxy:
    scheme: Literal["http", "socks5"]
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def authority(self) -> str:
        return Target(self.host, self.port).authority

    def redacted(self) -> str:
        """The URL without the password (`***` marks that one is set)."""
        if self.username is None:
            return f"{self.scheme}://{self.authority}"
        secret = ":***" if self.password is not None else ""
        return f"{self.scheme}://{quote(self.username, safe='')}{secret}@{self.authority}"


_SCHEMES: Final[dict[str, tuple[Literal["http", "socks5"], int]]] = {
    "http": ("http", 80),
    "socks5": ("socks5", 1080),
    "socks5h": ("socks5", 1080),  # same thing here: names are always resolved by the proxy
}


def parse_proxy_url(url: str) -> UpstreamProxy:
    """Parse `http://user:pass@host:port`, `socks5://...` or `socks5h://...`.

    Credentials are percent-decoded. The port defaults to 80 (http) or 1080 (socks5).
    ValueError messages never contain the password (nor the URL, which holds it).
    """
    scheme_text, sep, _ = url.partition("://")
    spec = _SCHEMES.get(scheme_text.lower()) if sep else None
    if spec is None:
        shown = scheme_text if sep and scheme_text.isascii() and len(scheme_text) < 20 else "?"
        raise ValueError(f"proxy URL scheme must be http, socks5 or socks5h (got {shown!r})")
    scheme, default_port = spec
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("proxy URL has an invalid host or port") from None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("proxy URL must not have a path, query or fragment")
    try:
        host = normalize_host(parts.hostname or "")
    except ValueError:
        raise ValueError("proxy URL has an invalid host") from None
    if port == 0:
        raise ValueError("proxy URL port must be 1..65535")
    try:
        username = None if parts.username is None else unquote(parts.username, errors="strict")
        password = None if parts.password is None else unquote(parts.password, errors="strict")
    except UnicodeDecodeError:
        raise ValueError("proxy URL credentials are not UTF-8 once percent-decoded") from None
    if scheme == "socks5":
        for what, value in (("username", username), ("password", password)):
            if value is not None and len(value.encode("utf-8")) > 255:
                raise ValueError(f"SOCKS5 {what} is longer than 255 bytes")
    return UpstreamProxy(scheme, host, port or default_port, username, password)


def _check_target(target: Target) -> None:
    # The authority goes into a request line: refuse anything that could inject a line.
    if any(c in target.host for c in " \t\r\n\x00/@") or not 0 < target.port < 65536:
        raise ValueError("invalid target")


class _State(enum.Enum):
    START = enum.auto()  # initial() not called yet
    METHOD = enum.auto()  # SOCKS5: waiting for the method selection
    AUTH = enum.auto()  # SOCKS5: waiting for the RFC 1929 status
    REPLY = enum.auto()  # waiting for the reply to CONNECT
    ESTABLISHED = enum.auto()
    FAILED = enum.auto()


class _Client:
    __slots__ = ("_buf", "_proxy", "_state", "_target")

    def __init__(self, proxy: UpstreamProxy, target: Target) -> None:
        _check_target(target)
        self._proxy = proxy
        self._target = target
        self._buf = bytearray()
        self._state = _State.START

    @property
    def established(self) -> bool:
        return self._state is _State.ESTABLISHED

    def trailing_data(self) -> bytes:
        """Bytes the proxy sent after its answer: the start of the target's stream."""
        if self._state is not _State.ESTABLISHED:
            raise RuntimeError("trailing_data() before the tunnel is established")
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def _begin(self, state: _State) -> None:
        if self._state is not _State.START:
            raise RuntimeError("initial() called twice")
        self._state = state

    def _accept(self, data: bytes | bytearray | memoryview) -> None:
        if self._state in (_State.START, _State.ESTABLISHED, _State.FAILED):
            raise RuntimeError(f"receive_data() in state {self._state.name}")
        self._buf += data

    def _fail(self, kind: FailureKind, detail: str) -> UpstreamFailure:
        self._state = _State.FAILED
        self._buf.clear()
        proxy = self._proxy
        return UpstreamFailure(kind, f"{proxy.scheme} proxy {proxy.authority}: {detail}")


class HttpConnectClient(_Client):
    """`CONNECT host:port` through an HTTP proxy, with Basic credentials when set."""

    __slots__ = ()
    max_head: Final = 65536

    def initial(self) -> bytes:
        self._begin(_State.REPLY)
        authority = self._target.authority
        lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
        proxy = self._proxy
        if proxy.username is not None:
            raw = f"{proxy.username}:{proxy.password or ''}".encode()
            lines.append("Proxy-Authorization: Basic " + base64.b64encode(raw).decode("ascii"))
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")

    def receive_data(self, data: bytes | bytearray | memoryview) -> bool:
        """Feed bytes (b"" = EOF). True once the tunnel is up; raises UpstreamFailure."""
        self._accept(data)
        buf = self._buf
        while True:
            try:
                parsed = parse_response_head(buf, self.max_head)
            except HttpError as exc:
                raise self._fail("node", f"bad answer to CONNECT ({exc.reason})") from None
            if parsed is None:
                if not data:
                    raise self._eof()
                return False
            head, consumed = parsed
            del buf[:consumed]
            if 100 <= head.status < 200 and head.status != 101:
                continue  # interim answer: the real one follows
            if 200 <= head.status < 300:
                self._state = _State.ESTABLISHED
                return True
            raise self._status_failure(head.status, head.reason, head.get(b"proxy-status"))

    def _eof(self) -> UpstreamFailure:
        # A proxy that sends a status line and hangs up is still understood.
        line = bytes(self._buf).split(b"\r\n", 1)[0]
        parts = line.split(b" ", 2)
        if len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1].isdigit():
            status = int(parts[1])
            if not 200 <= status < 300:
                reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
                return self._status_failure(status, reason, None)
        return self._fail("node", "closed the connection during the CONNECT handshake")

    def _status_failure(
        self, status: int, reason: str, proxy_status: bytes | None
    ) -> UpstreamFailure:
        kind: FailureKind = "node"
        if status in (502, 503):
            kind = "target_unreachable"
            if proxy_status is not None and b"error=connection_refused" in proxy_status:
                kind = "target_refused"
        elif status == 504:
            kind = "target_timeout"
        shown = "".join(c if " " <= c < "\x7f" else "?" for c in reason[:80])
        what = "refused the credentials" if status == 407 else "answered CONNECT with"
        return self._fail(kind, f"{what} {status} {shown}".rstrip())


_SOCKS_REPLIES: Final[dict[int, tuple[FailureKind, str]]] = {
    0x01: ("node", "general SOCKS server failure"),
    0x02: ("node", "connection not allowed by ruleset"),
    0x03: ("target_unreachable", "network unreachable"),
    0x04: ("target_unreachable", "host unreachable"),
    0x05: ("target_refused", "connection refused"),
    0x06: ("target_timeout", "TTL expired"),
    0x07: ("node", "command not supported"),
    0x08: ("node", "address type not supported"),
}


class Socks5Client(_Client):
    """SOCKS5 CONNECT through an upstream proxy (RFC 1928), RFC 1929 auth when credentials
    are set. Domains go as ATYP 3 (the proxy resolves them), IP literals as ATYP 1/4."""

    __slots__ = ("bound",)

    def __init__(self, proxy: UpstreamProxy, target: Target) -> None:
        super().__init__(proxy, target)
        self.bound: tuple[str, int] | None = None  # BND.ADDR/PORT of the success reply
        if proxy.username is not None:
            user = proxy.username.encode()
            pw = (proxy.password or "").encode()
            if len(user) > 255 or len(pw) > 255:
                raise ValueError("SOCKS5 credentials are limited to 255 bytes each")

    def initial(self) -> bytes:
        """The greeting: no-auth, plus username/password when credentials are set."""
        self._begin(_State.METHOD)
        return b"\x05\x02\x00\x02" if self._proxy.username is not None else b"\x05\x01\x00"

    def receive_data(self, data: bytes | bytearray | memoryview) -> bytes:
        """Feed bytes (b"" = EOF); returns bytes to send (maybe b""). Raises UpstreamFailure."""
        self._accept(data)
        out = b""
        while True:
            step = self._step()
            if step is None:
                break
            out += step
            if self._state is _State.ESTABLISHED:
                break
        if not data and self._state is not _State.ESTABLISHED:
            raise self._fail("node", "closed the connection during the SOCKS5 handshake")
        return out

    def _step(self) -> bytes | None:
        """Consume one message if complete: bytes to send, or None when more is needed."""
        buf = self._buf
        if len(buf) < 2:
            return None
        state = self._state
        if state is _State.METHOD:
            if buf[0] != 5:
                raise self._fail("node", "not a SOCKS5 proxy")
            method = buf[1]
            del buf[:2]
            if method == 0x00:
                return self._request()
            if method == 0x02 and self._proxy.username is not None:
                self._state = _State.AUTH
                user = self._proxy.username.encode()
                pw = (self._proxy.password or "").encode()
                return bytes((1, len(user))) + user + bytes((len(pw),)) + pw
            if method == 0xFF:
                raise self._fail("node", "no acceptable authentication method")
            raise self._fail("node", f"selected unoffered method {method:#04x}")
        if state is _State.AUTH:
            status = buf[1]  # the version byte varies in the wild (0x01, 0x05): not checked
            del buf[:2]
            if status:
                raise self._fail("node", "refused the credentials")
            return self._request()
        return self._reply()

    def _request(self) -> bytes:
        self._state = _State.REPLY
        return b"\x05\x01\x00" + encode_address(self._target.host, self._target.port)

    def _reply(self) -> bytes | None:
        buf = self._buf
        if buf[0] != 5:
            raise self._fail("node", f"bad reply version {buf[0]:#04x}")
        if buf[1]:
            kind, text = _SOCKS_REPLIES.get(buf[1], ("node", f"reply {buf[1]:#04x}"))
            raise self._fail(kind, text)
        if len(buf) < 5:
            return None
        atyp = buf[3]
        if atyp == 1:
            end = 4 + 4 + 2
        elif atyp == 4:
            end = 4 + 16 + 2
        elif atyp == 3:
            end = 4 + 1 + buf[4] + 2
        else:
            raise self._fail("node", f"reply with unknown address type {atyp:#04x}")
        if len(buf) < end:
            return None
        self.bound = _bound(bytes(buf[3:end]))
        del buf[:end]
        self._state = _State.ESTABLISHED
        return b""


def _bound(addr: bytes) -> tuple[str, int]:
    port = int.from_bytes(addr[-2:], "big")
    if addr[0] == 1:
        return ".".join(map(str, addr[1:5])), port
    if addr[0] == 4:
        return ipaddress.IPv6Address(addr[1:17]).compressed, port
    return addr[2:-2].decode("utf-8", "replace"), port
