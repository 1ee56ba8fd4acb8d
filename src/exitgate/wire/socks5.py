"""SOCKS5 server side (RFC 1928 + RFC 1929 username/password), sans-IO.

Theory of operation. The server is a small state machine over one receive buffer:

    GREETING ─next_event→ Greeting ─select_method()→ AUTH (method 0x02) or REQUEST (0x00)
    AUTH ─next_event→ Credentials ─auth_reply(True)→ REQUEST
    REQUEST ─next_event→ Request ─reply(SUCCEEDED)→ DONE        (any failure reply → CLOSED)

Between an event and the matching answer (`select_method`, `auth_reply`, `reply`) the machine
waits for the caller; calling `next_event` then, or answering out of order, raises
`Socks5UsageError` (a bug in the driver, not in the peer). A peer that breaks the protocol makes
`next_event` raise `Socks5Error`, whose `reply` is what to send before closing (maybe b"").

Every message carries its own lengths, so the core never waits for more than one message:
greeting <= 257 bytes, auth <= 513, request <= 262. Bytes that arrive after the request (client
early data) are kept verbatim for `trailing_data()`.

Decisions:
- wrong protocol version (0x05, or 0x01 for RFC 1929) closes without a reply;
- credentials are decoded as strict UTF-8; anything else fails the sub-negotiation (0x01),
  as a wrong password would (HTTP Basic in `http1` follows the same rule);
- empty usernames/passwords are passed on (admission decides);
- a domain (ATYP 3) is decoded as UTF-8, lowercased and validated like an HTTP host (see
  `http1.normalize_host`); an IP literal sent as a domain becomes that IP; a malformed one is
  reply 0x01 (for UDP ASSOCIATE, whose address is only a hint of the client's own, it is
  taken as 0.0.0.0 with the port kept); unknown commands are 0x07, unknown address types 0x08;
- the reserved byte is ignored; port 0 is passed on (UDP ASSOCIATE uses it).

Driver:

    srv.receive_data(chunk)
    while (ev := srv.next_event()) is not NEED_DATA:
        Greeting    -> write(srv.select_method(m))
        Credentials -> write(srv.auth_reply(ok))
        Request     -> dial; write(srv.reply(rep, bound)); relay srv.trailing_data() first
"""

from __future__ import annotations

import enum
import ipaddress
from functools import lru_cache
from typing import Final, Literal

from mypy_extensions import mypyc_attr

from exitgate.errors import SocksReply
from exitgate.model import Target
from exitgate.values import Value
from exitgate.wire.host import normalize_host

__all__ = [
    "NEED_DATA",
    "AddressType",
    "Command",
    "Credentials",
    "Greeting",
    "Method",
    "NeedData",
    "Request",
    "Socks5Error",
    "Socks5Server",
    "Socks5UsageError",
    "encode_address",
    "parse_udp_header",
    "udp_header",
]


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = _Sentinel.NEED_DATA
NeedData = Literal[_Sentinel.NEED_DATA]


class Method(enum.IntEnum):
    NO_AUTH = 0x00
    GSSAPI = 0x01
    USERPASS = 0x02
    NO_ACCEPTABLE = 0xFF


class Command(enum.IntEnum):
    CONNECT = 0x01
    BIND = 0x02
    UDP_ASSOCIATE = 0x03


class AddressType(enum.IntEnum):
    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


class Greeting(Value):
    """The client's greeting: the methods it offers.

    The three events are written-out values, not frozen dataclasses: one of each is made per
    connection, and a dataclass's generated `__init__` stays interpreted in the compiled
    build (docs/decisions.md, "Value classes on the hot path")."""

    __slots__ = ("methods",)
    methods: Final[frozenset[int]]

    def __init__(self, methods: frozenset[int]) -> None:
        self.methods = methods

    def value(self) -> tuple[tuple[str, object], ...]:
        return (("methods", self.methods),)


class Credentials(Value):
    __slots__ = ("password", "username")
    username: Final[str]
    password: Final[str]

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self.password = password

    def value(self) -> tuple[tuple[str, object], ...]:
        return (("username", self.username), ("password", self.password))

    def __repr__(self) -> str:  # the password is a package key: never in logs
        return f"Credentials(username={self.username!r}, password=<redacted>)"


class Request(Value):
    __slots__ = ("command", "target")
    command: Final[Command]
    target: Final[Target]

    def __init__(self, command: Command, target: Target) -> None:
        self.command = command
        self.target = target

    def value(self) -> tuple[tuple[str, object], ...]:
        return (("command", self.command), ("target", self.target))


class Socks5Error(Exception):
    """The peer broke the protocol: send `reply` (possibly b"") and close."""

    def __init__(self, message: str, reply: bytes = b"") -> None:
        super().__init__(message)
        self.reply = reply


@mypyc_attr(native_class=False)  # mypyc cannot subclass RuntimeError natively
class Socks5UsageError(RuntimeError):
    """The driver called the core out of order (a programming error)."""


class _Phase(enum.Enum):
    GREETING = enum.auto()
    AWAIT_METHOD = enum.auto()
    AUTH = enum.auto()
    AWAIT_AUTH = enum.auto()
    REQUEST = enum.auto()
    AWAIT_REPLY = enum.auto()
    DONE = enum.auto()
    CLOSED = enum.auto()


# by value, without `Command(cmd)`: an enum's call runs interpreted Python in either build
_COMMANDS: Final[dict[int, Command]] = {int(command): command for command in Command}
_ZERO_V4: Final = b"\x01\x00\x00\x00\x00\x00\x00"  # ATYP IPv4 0.0.0.0, port 0


def _failure(rep: SocksReply) -> bytes:
    return bytes((5, rep, 0)) + _ZERO_V4


def encode_address(host: str, port: int) -> bytes:
    """ATYP + address + port, as in a reply or a UDP header. Domains are sent as ATYP 3."""
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port out of range: {port}")
    packed = _canonical_ipv4(host)
    if packed is not None:  # the usual reply: a socket's own address, in canonical form
        return b"\x01" + packed + port.to_bytes(2, "big")
    # Only try an IP parse where one is possible: a failed parse costs more than the rest.
    if ":" in host or host[-1:].isdigit():
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            atyp = AddressType.IPV4 if ip.version == 4 else AddressType.IPV6
            return bytes((atyp,)) + ip.packed + port.to_bytes(2, "big")
    name = host.encode("ascii") if host.isascii() else host.encode("idna")
    if not 0 < len(name) <= 255:
        raise ValueError("domain must be 1..255 bytes")
    return bytes((AddressType.DOMAIN, len(name))) + name + port.to_bytes(2, "big")


@lru_cache(maxsize=1024)
def _canonical_ipv4(host: str) -> bytes | None:
    """The 4 bytes of a dotted quad in canonical form (no leading zeros), else None (then
    `ipaddress` decides): what `ipaddress` would give, without its per-octet parsing.
    Memoised: the usual host is one of the gateway's own few addresses (a reply's BND.ADDR),
    and checking a quad costs ten times a lookup."""
    parts = host.split(".")
    if len(parts) != 4:
        return None
    for part in parts:
        if not (part.isascii() and part.isdigit() and len(part) <= 3) or (
            part[0] == "0" and len(part) > 1
        ):
            return None
    values = [int(part) for part in parts]
    return bytes(values) if max(values) <= 255 else None


def _address_length(data: bytes | bytearray, at: int) -> int | None:
    """Length of ATYP+ADDR+PORT starting at `at` (the ATYP byte must be there); None when the
    domain length byte has not arrived yet; -1 for an unknown ATYP."""
    atyp = data[at]
    if atyp == AddressType.IPV4:
        return 1 + 4 + 2
    if atyp == AddressType.IPV6:
        return 1 + 16 + 2
    if atyp == AddressType.DOMAIN:
        if len(data) <= at + 1:
            return None
        return 2 + data[at + 1] + 2
    return -1


def _decode_address(data: bytes, at: int) -> Target:
    """Decode a complete ATYP+ADDR+PORT (length already checked). ValueError when malformed."""
    atyp = data[at]
    if atyp == AddressType.IPV4:
        host = f"{data[at + 1]}.{data[at + 2]}.{data[at + 3]}.{data[at + 4]}"
        port_at = at + 5
    elif atyp == AddressType.IPV6:
        host = ipaddress.IPv6Address(data[at + 1 : at + 17]).compressed
        port_at = at + 17
    else:
        n = data[at + 1]
        raw = data[at + 2 : at + 2 + n]
        host = normalize_host(raw.decode("utf-8"))  # UnicodeDecodeError is a ValueError
        port_at = at + 2 + n
    return Target(host, int.from_bytes(data[port_at : port_at + 2], "big"))


class Socks5Server:
    """One client connection's handshake. See the module docstring for the driver loop."""

    __slots__ = ("_buf", "_methods", "_phase")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._phase = _Phase.GREETING
        self._methods: frozenset[int] = frozenset()

    @property
    def done(self) -> bool:
        """True once a success reply was produced: the connection is a tunnel now."""
        return self._phase is _Phase.DONE

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self._phase is not _Phase.CLOSED:
            self._buf += data

    def next_event(self) -> Greeting | Credentials | Request | NeedData:
        phase = self._phase
        try:
            if phase is _Phase.GREETING:
                return self._greeting()
            if phase is _Phase.AUTH:
                return self._auth()
            if phase is _Phase.REQUEST:
                return self._request()
        except Socks5Error:
            self._close()
            raise
        raise Socks5UsageError(f"next_event() called in phase {phase.name}")

    def _close(self) -> None:
        self._phase = _Phase.CLOSED
        self._buf.clear()

    def _greeting(self) -> Greeting | NeedData:
        buf = self._buf
        if len(buf) < 2:
            return NEED_DATA
        if buf[0] != 5:
            raise Socks5Error(f"not SOCKS5 (version byte {buf[0]:#04x})")
        n = buf[1]
        if n == 0:
            raise Socks5Error("greeting offers no methods", bytes((5, Method.NO_ACCEPTABLE)))
        if len(buf) < 2 + n:
            return NEED_DATA
        self._methods = frozenset(buf[2 : 2 + n])
        del buf[: 2 + n]
        self._phase = _Phase.AWAIT_METHOD
        return Greeting(self._methods)

    def _auth(self) -> Credentials | NeedData:
        buf = self._buf
        if len(buf) < 2:
            return NEED_DATA
        if buf[0] != 1:
            raise Socks5Error(f"bad RFC 1929 version {buf[0]:#04x}")
        ulen = buf[1]
        if len(buf) < 3 + ulen:
            return NEED_DATA
        plen = buf[2 + ulen]
        end = 3 + ulen + plen
        if len(buf) < end:
            return NEED_DATA
        try:
            username = buf[2 : 2 + ulen].decode("utf-8")
            password = buf[3 + ulen : end].decode("utf-8")
        except UnicodeDecodeError:
            raise Socks5Error("credentials are not UTF-8", b"\x01\x01") from None
        del buf[:end]
        self._phase = _Phase.AWAIT_AUTH
        return Credentials(username, password)

    def _request(self) -> Request | NeedData:
        buf = self._buf
        if len(buf) < 4:
            if buf and buf[0] != 5:
                raise Socks5Error(f"bad request version {buf[0]:#04x}")
            return NEED_DATA
        if buf[0] != 5:
            raise Socks5Error(f"bad request version {buf[0]:#04x}")
        cmd = buf[1]
        command = _COMMANDS.get(cmd)
        if command is None:
            raise Socks5Error(
                f"unknown command {cmd:#04x}", _failure(SocksReply.COMMAND_NOT_SUPPORTED)
            )
        alen = _address_length(buf, 3)
        if alen is None:
            return NEED_DATA
        if alen < 0:
            raise Socks5Error(
                f"unknown address type {buf[3]:#04x}",
                _failure(SocksReply.ADDRESS_TYPE_NOT_SUPPORTED),
            )
        end = 3 + alen
        if len(buf) < end:
            return NEED_DATA
        try:
            target = _decode_address(bytes(buf[:end]), 3)
        except ValueError:
            if cmd != Command.UDP_ASSOCIATE:
                reply = _failure(SocksReply.GENERAL_FAILURE)
                raise Socks5Error("malformed destination", reply) from None
            # UDP ASSOCIATE's address is only a hint of where the client will send from
            # (PySocks sends the name "0"): unusable means unspecified; the port stays.
            target = Target("0.0.0.0", int.from_bytes(buf[end - 2 : end], "big"))
        del buf[:end]
        self._phase = _Phase.AWAIT_REPLY
        return Request(command, target)

    def _expect(self, phase: _Phase, call: str) -> None:
        if self._phase is not phase:
            raise Socks5UsageError(f"{call} called in phase {self._phase.name}")

    def select_method(self, method: int) -> bytes:
        """Answer the greeting: 0x00 no-auth, 0x02 username/password, 0xFF refuse (then close)."""
        self._expect(_Phase.AWAIT_METHOD, "select_method()")
        if method == Method.NO_ACCEPTABLE:
            self._close()
        elif method not in self._methods:
            raise Socks5UsageError(f"method {method:#04x} was not offered by the client")
        elif method == Method.NO_AUTH:
            self._phase = _Phase.REQUEST
        elif method == Method.USERPASS:
            self._phase = _Phase.AUTH
        else:
            raise Socks5UsageError(f"method {method:#04x} is not implemented")
        return bytes((5, method))

    def auth_reply(self, ok: bool) -> bytes:
        """RFC 1929 status: 0x00 success, 0x01 failure (then close)."""
        self._expect(_Phase.AWAIT_AUTH, "auth_reply()")
        if ok:
            self._phase = _Phase.REQUEST
            return b"\x01\x00"
        self._close()
        return b"\x01\x01"

    def reply(self, rep: SocksReply, bound: tuple[str, int] = ("0.0.0.0", 0)) -> bytes:
        """The request's reply; SUCCEEDED makes the connection a tunnel, anything else closes."""
        self._expect(_Phase.AWAIT_REPLY, "reply()")
        host, port = bound
        addr = _ZERO_V4 if host == "0.0.0.0" and port == 0 else encode_address(host, port)
        if rep == SocksReply.SUCCEEDED:
            self._phase = _Phase.DONE
        else:
            self._close()
        return bytes((5, rep, 0)) + addr

    def trailing_data(self) -> bytes:
        """Bytes received after the request, verbatim; returned once (the buffer is emptied)."""
        if self._phase not in (_Phase.AWAIT_REPLY, _Phase.DONE):
            raise Socks5UsageError(f"trailing_data() called in phase {self._phase.name}")
        data = bytes(self._buf)
        self._buf.clear()
        return data


def parse_udp_header(datagram: bytes) -> tuple[Target, int]:
    """RFC 1928 section 7: (destination, offset of the payload). Socks5Error (reply b"") for a
    malformed or fragmented datagram: the relay drops it."""
    if len(datagram) < 4 or datagram[0] or datagram[1]:
        raise Socks5Error("malformed UDP header")
    if datagram[2]:
        raise Socks5Error("fragmented UDP datagrams are not supported")
    alen = _address_length(datagram, 3)
    if alen is None or alen < 0 or len(datagram) < 3 + alen:
        raise Socks5Error("malformed UDP header")
    try:
        target = _decode_address(datagram, 3)
    except ValueError:
        raise Socks5Error("malformed UDP destination") from None
    return target, 3 + alen


def udp_header(host: str, port: int) -> bytes:
    """The header to prepend to a datagram relayed back to the client (source host, port)."""
    return b"\x00\x00\x00" + encode_address(host, port)
