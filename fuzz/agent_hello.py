"""The agent ⇄ hub hello and reply lines (exitgate.hub.protocol).

Input: byte 0 even: the rest is a hello line as an agent would send it (the hub side); odd:
a reply line (the agent side).

Contract:
- `parse_hello` returns a Hello or raises HelloError with a RefusalKind and a printable
  reason; nothing else escapes (bad UTF-8, deep JSON, odd types, huge numbers);
- a reason never quotes the token;
- a parsed Hello re-encodes (`encode_hello`) to a line that parses to the same Hello, within
  MAX_HELLO when the input was;
- `parse_reply` never raises: it returns a Reply, ok or with a RefusalKind.
"""

from __future__ import annotations

import json

from exitgate.hub import protocol


def test_one_input(data: bytes) -> None:
    if not data:
        return
    line = data[1:]
    if data[0] & 1:
        reply = protocol.parse_reply(line)
        assert isinstance(reply, protocol.Reply)
        assert reply.ok or isinstance(reply.kind, protocol.RefusalKind)
        assert len(reply.reason) <= 300
        return
    if data[0] & 2:  # most inputs: past the magic, into the JSON
        line = protocol.MAGIC + line
    try:
        hello = protocol.parse_hello(line)
    except protocol.HelloError as exc:
        assert isinstance(exc.kind, protocol.RefusalKind)
        assert isinstance(exc.reason, str) and exc.reason
        _token_not_quoted(line, exc.reason)
        return
    assert isinstance(hello, protocol.Hello)
    encoded = protocol.encode_hello(hello)
    assert protocol.parse_hello(encoded) == hello
    assert protocol.parse_hello(encoded.rstrip(b"\n")) == hello


def _token_not_quoted(line: bytes, reason: str) -> None:
    """The reason must not depend on the token: another token of the same length (so just as
    valid) gives the same reason."""
    if not line.startswith(protocol.MAGIC):
        return
    try:
        body = json.loads(line[len(protocol.MAGIC) :])
    except (ValueError, UnicodeDecodeError, RecursionError):
        return
    if not isinstance(body, dict) or not isinstance(body.get("token"), str):
        return
    body["token"] = "\u2603" * len(body["token"])
    try:
        protocol.parse_hello(protocol.MAGIC + json.dumps(body).encode())
    except protocol.HelloError as exc:
        assert exc.reason == reason, (exc.reason, reason)
    else:
        raise AssertionError("a hello refused for its token's content")
