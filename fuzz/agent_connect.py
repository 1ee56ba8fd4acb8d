"""A tunnel stream's CONNECT head and its answer (exitgate.hub.protocol).

Input: byte 0 picks the side (even: the agent parsing a CONNECT head with `parse_connect`;
odd: the gateway classifying the agent's answer with `classify`); the rest is a header list,
fields separated by b"\\n" and name/value by the first b"=" (h2 hands over such pairs).

Contract:
- `parse_connect` returns a ConnectRequest with a host the dialer accepts, a port 1..65535
  and a finite timeout within [0.1, max_timeout], or raises ValueError; nothing else escapes;
- the CONNECT head the gateway builds for a target (`connect_headers`) parses back to it;
- `classify` never raises; it says exactly one thing (bound address, target error or node
  failure); a target error carries a catalogued code, a node failure a short printable text.
"""

from __future__ import annotations

import math

from exitgate.errors import CATALOGUE
from exitgate.hub import protocol
from exitgate.model import Target
from exitgate.wire import socks5

_MAX_TIMEOUT = 10.0
_TARGET = Target("example.com", 443)


def _headers(raw: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    for field in raw.split(b"\n")[:32]:
        name, _, value = field.partition(b"=")
        out.append((name, value))
    return out


def test_one_input(data: bytes) -> None:
    if not data:
        return
    headers = _headers(data[1:])
    if data[0] & 1:
        answer = protocol.classify(headers, _TARGET)
        said = [answer.bound is not None, answer.target_error is not None,
                bool(answer.node_failure)]  # fmt: skip
        assert said.count(True) == 1, answer
        if answer.target_error is not None:
            assert answer.target_error.code in CATALOGUE
        if answer.node_failure:
            assert answer.node_failure.isprintable() and len(answer.node_failure) < 200
        if answer.bound is not None:
            host, port = answer.bound
            assert (host, port) == ("", 0) or 0 <= port <= 0xFFFF, answer  # "" 0: unknown
            if host:
                socks5.encode_address(host, port)  # what a SOCKS5 reply will carry
        return
    try:
        req = protocol.parse_connect(headers, _MAX_TIMEOUT)
    except ValueError:
        return
    assert isinstance(req, protocol.ConnectRequest)
    assert 0 < req.target.port < 65536
    assert math.isfinite(req.timeout) and 0.1 <= req.timeout <= _MAX_TIMEOUT, req.timeout
    assert req.target.host and req.target.host.isascii()
    again = protocol.parse_connect(
        protocol.connect_headers(req.target, req.timeout, req.allow_private), _MAX_TIMEOUT
    )
    assert again.target == req.target and again.allow_private == req.allow_private
    assert abs(again.timeout - req.timeout) < 0.001
