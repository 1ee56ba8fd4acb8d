"""SOCKS5 server handshake (exitgate.wire.socks5.Socks5Server), driven as the handler does.

Input: byte 0 holds the driver's choices (method to select, auth verdict, reply code), byte 1
a seed for how the rest is cut into reads; the rest is what the client sends.

Contract:
- `next_event` yields Greeting / Credentials / Request / NEED_DATA, or raises Socks5Error whose
  `reply` is b"" or a well-formed reply (2 bytes for method/auth, 10 for a request); a correct
  driver never sees Socks5UsageError and nothing else escapes;
- the events and the error are the same whether the bytes come whole, in irregular pieces or
  one at a time;
- a Request's target is a normalised host and a port 0..65535; its address re-encodes to the
  same target; `trailing_data` is exactly the bytes after the request, once.
"""

from __future__ import annotations

from exitgate.errors import SocksReply
from exitgate.model import Target
from exitgate.wire import socks5
from exitgate.wire.host import normalize_host

_REPLIES = (SocksReply.SUCCEEDED, SocksReply.GENERAL_FAILURE, SocksReply.CONNECTION_REFUSED)


def drive(choices: int, pieces: list[bytes]) -> tuple[list[object], bytes | None]:
    """Events (and the final error) as comparable values, plus the trailing data if any."""
    srv = socks5.Socks5Server()
    log: list[object] = []
    trailing: bytes | None = None
    for i, piece in enumerate(pieces):
        srv.receive_data(piece)
        while True:
            try:
                ev = srv.next_event()
            except socks5.Socks5Error as exc:
                _check_error_reply(exc.reply)
                log.append(("error", exc.reply))
                return log, trailing
            except socks5.Socks5UsageError:
                return log, trailing  # closed or done: the driver stops reading here
            if ev is socks5.NEED_DATA:
                break
            if isinstance(ev, socks5.Greeting):
                log.append(("greeting", ev.methods))
                want = socks5.Method.USERPASS if choices & 1 else socks5.Method.NO_AUTH
                method = want if want in ev.methods else socks5.Method.NO_ACCEPTABLE
                answer = srv.select_method(method)
                assert answer == bytes((5, method))
                if method == socks5.Method.NO_ACCEPTABLE:
                    return log, trailing
            elif isinstance(ev, socks5.Credentials):
                assert repr(ev).endswith("password=<redacted>)")  # a key never in logs
                log.append(("credentials", ev.username, ev.password))
                ok = not choices & 2
                assert srv.auth_reply(ok) == (b"\x01\x00" if ok else b"\x01\x01")
                if not ok:
                    return log, trailing
            else:
                assert isinstance(ev, socks5.Request), ev
                _check_target(ev.target)
                log.append(("request", ev.command, ev.target))
                rep = _REPLIES[(choices >> 2) % len(_REPLIES)]
                out = srv.reply(rep, ("127.0.0.1", 1080))
                assert out[:3] == bytes((5, rep, 0)) and len(out) == 10
                if rep == SocksReply.SUCCEEDED:
                    assert srv.done
                    # Everything after the request, from every later read too.
                    rest = srv.trailing_data()
                    trailing = rest + b"".join(pieces[i + 1 :])
                    assert srv.trailing_data() == b""
                return log, trailing
    return log, trailing


def _check_error_reply(reply: bytes) -> None:
    assert isinstance(reply, bytes)
    assert reply in (b"", b"\x05\xff", b"\x01\x01") or (
        len(reply) == 10 and reply[:2] in (b"\x05\x01", b"\x05\x07", b"\x05\x08")
    ), reply


def _check_target(target: Target) -> None:
    assert 0 <= target.port <= 0xFFFF
    assert normalize_host(target.host) == target.host, target
    if not target.host.isascii():
        return  # an IDN goes out as its IDNA form (or not at all): no byte round trip
    encoded = socks5.encode_address(target.host, target.port)
    again, at = socks5.parse_udp_header(b"\x00\x00\x00" + encoded)
    assert again == target and at == 3 + len(encoded), (again, target)


def _pieces(data: bytes, seed: int) -> list[bytes]:
    out, pos, step = [], 0, seed % 5 + 1
    while pos < len(data):
        step = (step * 3 + seed) % 11 + 1
        out.append(data[pos : pos + step])
        pos += step
    return out


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    choices, seed, stream = data[0], data[1], data[2:]
    whole = drive(choices, [stream])
    split = drive(choices, _pieces(stream, seed))
    assert split[0] == whole[0], (split, whole)
    if whole[1] is not None:
        assert split[1] == whole[1]
        # The trailing bytes are exactly the stream's end, untouched.
        assert stream.endswith(whole[1])
    if len(stream) <= 64:
        single = drive(choices, [stream[i : i + 1] for i in range(len(stream))])
        assert single[0] == whole[0], (single, whole)
