"""The proxy-username rule parser (exitgate.rules.parse_rules).

Input: byte 0 picks the package's entitlements (all, some rule names, some networks); the
rest, decoded as UTF-8 (invalid bytes replaced, as neither SOCKS5 nor Basic passes them), is
the username.

Contract:
- the parse returns Rules or raises GatewayError whose code is one of the six ERR_* rule codes,
  all 400; nothing else escapes, whatever the username;
- the error answer built from it is a valid HTTP response head (the detail echoes the
  username: no CR/LF or control byte reaches the head) with a Content-Length that matches;
- Rules are canonical: the canonical username parses to the same Rules, and is its own
  canonical form; a cached second parse gives the same answer.
"""

from __future__ import annotations

from exitgate import errors
from exitgate.errors import Code, GatewayError
from exitgate.model import Network
from exitgate.rules import Catalogue, Entitlements, parse_rules
from exitgate.wire.http1 import parse_response_head, response_body

_RULE_CODES = frozenset({
    Code.ERR_MISSING_PARAMS, Code.ERR_UNKNOWN_PARAM, Code.ERR_DUPLICATE_PARAM,
    Code.ERR_INVALID_VALUE, Code.ERR_INVALID_COMBINATION, Code.ERR_PARAM_NOT_ALLOWED,
})  # fmt: skip
_CATALOGUE = Catalogue(
    regions=frozenset({"california", "bavaria", "new_south_wales"}),
    cities=frozenset({"new_york", "los_angeles", "munich"}),
    isps=frozenset({"verizon_wireless", "comcast", "dt"}),
)
_ENTITLEMENTS = (
    Entitlements(),
    Entitlements(rules=frozenset({"country", "session"})),
    Entitlements(networks=frozenset({Network.RES})),
    Entitlements(rules=frozenset({"country", "city", "network", "rotate"}),
                 networks=frozenset({Network.DC, Network.MOB})),
)  # fmt: skip


def _parse(username: str, ent: Entitlements) -> object:
    try:
        return parse_rules(username, _CATALOGUE, ent)
    except GatewayError as exc:
        assert exc.code in _RULE_CODES, exc.code
        assert exc.status == 400
        answer = errors.http_error_response(exc)
        parsed = parse_response_head(answer)
        assert parsed is not None, answer
        head, used = parsed
        assert head.status == 400
        assert response_body(head, "GET")[1] == len(answer) - used
        return (exc.code, exc.detail)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    ent = _ENTITLEMENTS[data[0] % len(_ENTITLEMENTS)]
    username = data[1:].decode("utf-8", "replace")
    first = _parse(username, ent)
    assert _parse(username, ent) == first  # the LRU cache answers the same
    if not isinstance(first, tuple):
        canonical = first.canonical()  # type: ignore[attr-defined]
        again = _parse(canonical, ent)
        assert again == first, (username, canonical, again)
        assert again.canonical() == canonical  # type: ignore[attr-defined]
