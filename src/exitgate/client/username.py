"""Proxy usernames from typed arguments, and back, through the gateway's own grammar.

`Username` holds targeting and session rules as Python values; `str(username)` is the
canonical username (`rules.Rules.canonical`) and `Username.parse(text)` reads one back. Both
directions run `exitgate.rules.parse_rules`, the parser the gateway itself uses, with the
`SYNTAX_ONLY` catalogue (any well-formed region/city/isp name: a client cannot know the
gateway's node pool). So the client can never build a username the gateway reads otherwise,
and `Username.parse(str(u)) == u` for every `u` that constructs.

    Username(country="us", city="New York", session="abc", rotate=timed(300))
    → country-us-city-new_york-session-abc-rotate-timed_300

Friendly inputs are normalised at construction, so equality is on the normalised values:
names go through the admin API's normalisation (`New York` → `new_york`), `network` takes
"res", "res_mob", a `Network`, or an iterable of them, `rotate` takes a `Rotate` or
"timed_300", `onerror` an `OnError` or "fail" / "retry_3". Invalid rules raise
`UsernameError`, a `ValueError` carrying the catalogued code and detail the gateway would
answer (ERR_INVALID_VALUE "abc-def", ERR_INVALID_COMBINATION "rotate requires session", ...).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from exitgate.errors import Code, GatewayError
from exitgate.model import Network
from exitgate.rules import SYNTAX_ONLY, OnError, OnErrorMode, Rotate, RotateKind, Rules, parse_rules

NetworkSpec = str | Network | Iterable[str | Network] | None


class UsernameError(ValueError):
    """Rules the gateway would refuse: `code` is the catalogued 400 code it would answer."""

    def __init__(self, code: Code, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def timed(seconds: int) -> Rotate:
    """`rotate-timed_N`: a new exit every N seconds."""
    return Rotate(RotateKind.TIMED, seconds)


def every(requests: int) -> Rotate:
    """`rotate-requests_N`: a new exit every N requests."""
    return Rotate(RotateKind.REQUESTS, requests)


def retry(times: int) -> OnError:
    """`onerror-retry_N`."""
    return OnError(OnErrorMode.RETRY, times)


@dataclass(frozen=True, slots=True, init=False)
class Username:
    country: str | None
    region: str | None
    city: str | None
    isp: str | None
    asn: int | None
    network: frozenset[Network] | None
    session: str | None
    rotate: Rotate | None
    onerror: OnError
    bind_node: bool
    prefer_lookalike: bool

    def __init__(
        self,
        *,
        country: str | None = None,
        region: str | None = None,
        city: str | None = None,
        isp: str | None = None,
        asn: int | None = None,
        network: NetworkSpec = None,
        session: str | None = None,
        rotate: Rotate | str | None = None,
        onerror: OnError | str = "replace",
        bind_node: bool = False,
        prefer_lookalike: bool = False,
    ) -> None:
        values: dict[str, Any] = {
            "country": _country(country),
            "region": _name(region),
            "city": _name(city),
            "isp": _name(isp),
            "asn": asn,
            "network": _networks(network),
            "session": session,
            "rotate": _rotate(rotate),
            "onerror": _onerror(onerror),
            "bind_node": bind_node,
            "prefer_lookalike": prefer_lookalike,
        }
        for name, value in values.items():
            if isinstance(value, str) and ("-" in value or not value):
                # The separator inside a value would read as other rules: name the value.
                raise UsernameError(Code.ERR_INVALID_VALUE, value or f"empty {name}")
            object.__setattr__(self, name, value)
        # The one check: the gateway's parser must read our canonical text back as these rules.
        rules = self.to_rules()
        text = rules.canonical()
        try:
            parsed = parse_rules(text, SYNTAX_ONLY)
        except GatewayError as exc:
            raise UsernameError(exc.code, exc.detail) from None
        if parsed != rules:  # a value holding "-" reads as other rules, say
            raise UsernameError(Code.ERR_INVALID_VALUE, f"rules do not survive as text: {text}")

    @classmethod
    def parse(cls, text: str) -> Username:
        """The rules of a username, as the gateway reads them; UsernameError if it refuses."""
        try:
            rules = parse_rules(text, SYNTAX_ONLY)
        except GatewayError as exc:
            raise UsernameError(exc.code, exc.detail) from None
        return cls.of(rules)

    @classmethod
    def of(cls, rules: Rules) -> Username:
        return cls(
            country=rules.country,
            region=rules.region,
            city=rules.city,
            isp=rules.isp,
            asn=rules.asn,
            network=rules.networks,
            session=rules.session,
            rotate=rules.rotate,
            onerror=rules.onerror,
            bind_node=rules.bind_node,
            prefer_lookalike=rules.prefer_lookalike,
        )

    def to_rules(self) -> Rules:
        return Rules(
            country=self.country,
            region=self.region,
            city=self.city,
            isp=self.isp,
            asn=self.asn,
            networks=self.network,
            session=self.session,
            rotate=self.rotate,
            onerror=self.onerror,
            bind_node=self.bind_node,
            prefer_lookalike=self.prefer_lookalike,
        )

    def with_session(self, session: str | None) -> Username:
        """The same rules with another session (None: none; rotation needs one, though)."""
        return Username(
            country=self.country,
            region=self.region,
            city=self.city,
            isp=self.isp,
            asn=self.asn,
            network=self.network,
            session=session,
            rotate=self.rotate,
            onerror=self.onerror,
            bind_node=self.bind_node,
            prefer_lookalike=self.prefer_lookalike,
        )

    def __str__(self) -> str:
        return self.to_rules().canonical()


def username(**rules: Any) -> str:
    """`username(country="us", session="abc")` → "country-us-session-abc"."""
    return str(Username(**rules))


def parse_username(text: str) -> Username:
    return Username.parse(text)


def normalise_name(text: str) -> str:
    """`New York` → `new_york`, as the admin API stores names (admin.schemas)."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")


def _country(value: str | None) -> str | None:
    if value is None:
        return None
    code = value.strip().lower()
    return None if code == "any" else code


def _name(value: str | None) -> str | None:
    if value is None:
        return None
    # Keep text that normalises to nothing as it was: the parser then names it.
    return normalise_name(value) or value


def _networks(value: NetworkSpec) -> frozenset[Network] | None:
    if value is None:
        return None
    if isinstance(value, str):  # Network is a str too: "res", "res_mob", "any"
        if value == "any":
            return None
        parts: list[str | Network] = list(value.split("_"))
    else:
        parts = list(value)
    try:
        return frozenset(Network(p) for p in parts)
    except ValueError:
        raise UsernameError(Code.ERR_INVALID_VALUE, "_".join(map(str, parts))) from None


def _rotate(value: Rotate | str | None) -> Rotate | None:
    if value is None or isinstance(value, Rotate):
        return value
    kind, _, number = value.partition("_")
    if kind in ("timed", "requests") and number.isascii() and number.isdigit():
        return Rotate(RotateKind(kind), int(number))
    raise UsernameError(Code.ERR_INVALID_VALUE, value)


def _onerror(value: OnError | str) -> OnError:
    if isinstance(value, OnError):
        return value
    if value in ("replace", "fail"):
        return OnError(OnErrorMode(value))
    kind, _, number = value.partition("_")
    if kind == "retry" and number.isascii() and number.isdigit():
        return OnError(OnErrorMode.RETRY, int(number))
    raise UsernameError(Code.ERR_INVALID_VALUE, value)


__all__ = [
    "Username",
    "UsernameError",
    "every",
    "normalise_name",
    "parse_username",
    "retry",
    "timed",
    "username",
]
