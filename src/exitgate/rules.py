"""The proxy username: targeting and session rules (SPEC 3). Pure: no I/O, no clock.

Grammar
-------
    username := pair ("-" pair)*
    pair     := name "-" value            every rule is exactly two tokens
    name     := country | region | city | isp | asn | network
              | session | rotate | onerror | bind | prefer     (lowercase, case-sensitive)
    value    := a token without "-"; multi-word values use "_"

    country  := ISO 3166-1 alpha-2, lowercase | "any"
    region, city, isp := a name from the geo catalogue (lowercase, "_" for spaces)
    asn      := [1-9][0-9]*, 1..4294967295
    network  := "any" | net ("_" net)*   with net in res, mob, dc, each at most once
    session  := [A-Za-z0-9_]{1,32}
    rotate   := "timed_" N (1..604800 s) | "requests_" N (1..1000000)
    onerror  := "replace" | "fail" | "retry_" N (1..10)
    bind     := "node"
    prefer   := "lookalike"

Examples
--------
    country-us                                  any US node
    country-us-city-new_york-network-res_mob    residential or mobile, New York
    isp-verizon_wireless-session-abc-rotate-timed_300
    country-de-session-s1-bind-node-onerror-retry_3

Validation (SPEC 3): the username is split on "-" and paired as (t0, t1), (t2, t3), ...
Each step checks the whole username before the next one runs; inside a step the leftmost
problem answers. Details: the bare offending token (the value for a value error, the name for
a name error); a sentence for the structural and combination errors.

  1. ERR_MISSING_PARAMS    empty username, or no name position holds a targeting rule
  2. ERR_UNKNOWN_PARAM     a name not in the table: `city-los-angeles` -> "angeles"
  3. ERR_DUPLICATE_PARAM   a name given twice: `rotate-timed_5-rotate-requests_9` -> "rotate"
  4. ERR_INVALID_VALUE     first an empty token, then a trailing name without a value, then
                           the values left to right
  5. ERR_INVALID_COMBINATION  checked in the order of SPEC 3, e.g. "bind-node cannot be
                           combined with rotate"
  6. ERR_PARAM_NOT_ALLOWED pairs left to right: the rule name, then (for network) each network

Decisions where the spec is silent
----------------------------------
- Empty tokens (`country--us`, a leading or trailing "-") are typos of the separator. For
  pairing they are skipped, so `country--us` is not misread as a rule named "us"; step 4 then
  refuses the username with ERR_INVALID_VALUE, detail "empty token after country" (or "empty
  token at start"). A username made only of "-" has no rule: ERR_MISSING_PARAMS.
- An odd token count leaves a trailing name without a value (`country-us-session`). It is a
  name for steps 1-3 (so `city-los-angeles` is ERR_UNKNOWN_PARAM "angeles", as SPEC 3 says)
  and ERR_INVALID_VALUE "missing value for session" at step 4.
- Numbers have one spelling: ASCII digits, no sign, no leading zero, no "_" (int() would take
  "1_0" and non-ASCII digits; we do not).
- `network` values may come in any order but not twice (`res_res` is invalid); a set naming
  all three networks stays an explicit set (it differs from `any` under entitlements).
- region, city and isp accept catalogue names only; there is no `city-any`.
- `country-any` and `network-any` are "no restriction": they are always entitled, because
  `country-any` is the placeholder every package must be able to send (SPEC 4: allowlisted
  clients without credentials get it). `network-any` on a package restricted to some
  networks is fine: selection restricts to the package's networks.
- A network the package lacks gives ERR_PARAM_NOT_ALLOWED naming that network ("mob").
- `onerror-replace` is the default and is never written in the canonical form. With
  `bind-node` the default is implicit: bind-node wins, onerror only carries retries.
- Canonical form: rules in the order of the table; `country-any`, `network-any` and the
  default onerror are dropped, and `country-any` is written only when no targeting rule is
  left. So `network-any` and `country-any` are the same rules, as are `isp-x-country-any`
  and `isp-x`.

Parsing runs per request, so outcomes are kept in an LRU cache keyed on (username,
catalogue, entitlements). Catalogue and Entitlements are frozen: a changed catalogue is a new
object, so a stale answer cannot be served; reuse one object per version so hashing stays
cheap (frozensets cache their hash).
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Final

from exitgate.errors import Code, GatewayError
from exitgate.geo import COUNTRY_CODES
from exitgate.model import ALL_NETWORKS, Network, NodeAttrs, Package

TARGETING_NAMES: Final = frozenset({"country", "region", "city", "isp", "asn", "network"})
RULE_NAMES: Final = TARGETING_NAMES | {"session", "rotate", "onerror", "bind", "prefer"}

_NETWORK_ORDER: Final = (Network.RES, Network.MOB, Network.DC)
_NETWORKS_BY_NAME: Final = {n.value: n for n in Network}
_SESSION_RE: Final = re.compile(r"[A-Za-z0-9_]{1,32}")
_NUMBER_RE: Final = re.compile(r"[1-9][0-9]*")
_ASN_MAX: Final = 4_294_967_295
_TIMED_MAX: Final = 604_800
_REQUESTS_MAX: Final = 1_000_000
_RETRY_MAX: Final = 10
_CACHE_SIZE: Final = 8192
_CACHE_MAX_USERNAME: Final = 512  # longer usernames are parsed but not cached
# A well-formed region/city/isp name (admin.schemas.normalise_name's output): what a
# catalogue with `any_name` accepts, since a client has no node pool to check names against.
NAME_RE: Final = re.compile(r"[a-z0-9]+(?:_[a-z0-9]+)*")
_NAME_MAX: Final = 100


class RotateKind(enum.StrEnum):
    TIMED = "timed"
    REQUESTS = "requests"


@dataclass(frozen=True, slots=True)
class Rotate:
    kind: RotateKind
    n: int  # seconds for TIMED, requests for REQUESTS


class OnErrorMode(enum.StrEnum):
    REPLACE = "replace"
    FAIL = "fail"
    RETRY = "retry"


@dataclass(frozen=True, slots=True)
class OnError:
    mode: OnErrorMode = OnErrorMode.REPLACE
    retries: int = 0


_DEFAULT_ONERROR: Final = OnError()


@dataclass(frozen=True, slots=True)
class Rules:
    country: str | None = None  # None: any
    region: str | None = None
    city: str | None = None
    isp: str | None = None
    asn: int | None = None
    networks: frozenset[Network] | None = None  # None: any
    session: str | None = None
    rotate: Rotate | None = None
    onerror: OnError = _DEFAULT_ONERROR
    bind_node: bool = False
    prefer_lookalike: bool = False

    def canonical(self) -> str:
        """The one username for these rules: table order, no-op rules dropped."""
        parts: list[str] = []
        for name, value in (
            ("country", self.country),
            ("region", self.region),
            ("city", self.city),
            ("isp", self.isp),
            ("asn", self.asn),
        ):
            if value is not None:
                parts.append(f"{name}-{value}")
        if self.networks is not None:
            parts.append("network-" + "_".join(n for n in _NETWORK_ORDER if n in self.networks))
        if not parts:
            parts.append("country-any")
        if self.session is not None:
            parts.append(f"session-{self.session}")
        if self.rotate is not None:
            parts.append(f"rotate-{self.rotate.kind}_{self.rotate.n}")
        if self.onerror.mode is OnErrorMode.FAIL:
            parts.append("onerror-fail")
        elif self.onerror.mode is OnErrorMode.RETRY:
            parts.append(f"onerror-retry_{self.onerror.retries}")
        if self.bind_node:
            parts.append("bind-node")
        if self.prefer_lookalike:
            parts.append("prefer-lookalike")
        return "-".join(parts)


@dataclass(frozen=True, slots=True)
class Catalogue:
    """Known region, city and ISP names: every node ever registered plus configured ones.

    `any_name`: accept every well-formed name (`NAME_RE`) instead, for parsers without a
    pool, such as `exitgate.client` (see `SYNTAX_ONLY`): the rest of the grammar is shared.
    """

    regions: frozenset[str]
    cities: frozenset[str]
    isps: frozenset[str]
    any_name: bool = False

    @classmethod
    def empty(cls) -> Catalogue:
        return cls(frozenset(), frozenset(), frozenset())

    def with_attrs(self, attrs: Iterable[NodeAttrs]) -> Catalogue:
        """This catalogue plus the names of `attrs`; `self` when nothing is new (cache-friendly)."""
        items = list(attrs)
        regions = self.regions | {a.region for a in items if a.region}
        cities = self.cities | {a.city for a in items if a.city}
        isps = self.isps | {a.isp for a in items if a.isp}
        if (regions, cities, isps) == (self.regions, self.cities, self.isps):
            return self
        return Catalogue(regions, cities, isps, self.any_name)


SYNTAX_ONLY: Final = Catalogue(frozenset(), frozenset(), frozenset(), any_name=True)


@dataclass(frozen=True, slots=True)
class Entitlements:
    rules: frozenset[str] | None = None  # allowed rule names; None: all
    networks: frozenset[Network] = ALL_NETWORKS

    @classmethod
    def of(cls, package: Package) -> Entitlements:
        return cls(package.rules, package.networks)


_ALL_ENTITLED: Final = Entitlements()


@dataclass(frozen=True, slots=True)
class _Failure:
    code: Code
    detail: str


class _Reject(Exception):
    """Internal: carries a failure out of the step functions."""

    def __init__(self, code: Code, detail: str) -> None:
        super().__init__(detail)
        self.failure = _Failure(code, detail)


def parse_rules(
    username: str, catalogue: Catalogue, entitlements: Entitlements = _ALL_ENTITLED
) -> Rules:
    """Parse and validate a username; raises GatewayError (always a 400 code) on failure."""
    if len(username) <= _CACHE_MAX_USERNAME:
        outcome = _cached_outcome(username, catalogue, entitlements)
    else:
        outcome = _outcome(username, catalogue, entitlements)
    if isinstance(outcome, _Failure):
        raise GatewayError(outcome.code, outcome.detail)
    return outcome


def _outcome(username: str, catalogue: Catalogue, ent: Entitlements) -> Rules | _Failure:
    try:
        return _parse(username, catalogue, ent)
    except _Reject as reject:
        return reject.failure


_cached_outcome = functools.lru_cache(maxsize=_CACHE_SIZE)(_outcome)


def _parse(username: str, catalogue: Catalogue, ent: Entitlements) -> Rules:
    raw = username.split("-")
    tokens = [t for t in raw if t]
    names = tokens[0::2]

    # 1. something to target
    if not username:
        raise _Reject(Code.ERR_MISSING_PARAMS, "empty username")
    if not any(name in TARGETING_NAMES for name in names):
        raise _Reject(
            Code.ERR_MISSING_PARAMS,
            "no targeting rule (country, region, city, isp, asn, network); "
            "use country-any for any exit",
        )
    given = _pairs(raw, tokens, RULE_NAMES)  # steps 2-4 (their form)
    rules = _build(given, catalogue)
    # 5. combinations
    _check_combinations(rules, onerror_given="onerror" in given)
    # 6. entitlements
    _check_entitlements(given, rules, ent)
    return rules


def name_values(username: str, known: Collection[str]) -> dict[str, str]:
    """Steps 2 to 4 (the form) of any `name-value-...` username whose names are `known`:
    each name known (ERR_UNKNOWN_PARAM), given once (ERR_DUPLICATE_PARAM), no empty token and
    a value for every name (ERR_INVALID_VALUE). The legacy form (rules_legacy.py) shares it."""
    raw = username.split("-")
    try:
        return _pairs(raw, [t for t in raw if t], known)
    except _Reject as reject:
        raise GatewayError(reject.failure.code, reject.failure.detail) from None


def _pairs(raw: list[str], tokens: list[str], known: Collection[str]) -> dict[str, str]:
    names, values = tokens[0::2], tokens[1::2]
    # 2. known names
    for name in names:
        if name not in known:
            raise _Reject(Code.ERR_UNKNOWN_PARAM, name)
    # 3. each name once
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise _Reject(Code.ERR_DUPLICATE_PARAM, name)
        seen.add(name)
    # 4. values: no empty token, a value for every name
    if len(tokens) != len(raw):
        raise _Reject(Code.ERR_INVALID_VALUE, _empty_token_detail(raw))
    if len(names) > len(values):
        raise _Reject(Code.ERR_INVALID_VALUE, f"missing value for {names[-1]}")
    return dict(zip(names, values, strict=True))


def _empty_token_detail(raw: list[str]) -> str:
    for i, token in enumerate(raw):
        if not token:
            before = [t for t in raw[:i] if t]
            return f"empty token after {before[-1]}" if before else "empty token at start"
    raise AssertionError("unreachable: caller saw an empty token")  # pragma: no cover


def _build(given: dict[str, str], catalogue: Catalogue) -> Rules:
    """Step 4: every value in order of appearance (dicts keep insertion order)."""
    country = region = city = isp = session = None
    asn: int | None = None
    networks: frozenset[Network] | None = None
    rotate: Rotate | None = None
    onerror = _DEFAULT_ONERROR
    bind_node = prefer_lookalike = False
    for name, value in given.items():
        match name:
            case "country":
                if value != "any" and value not in COUNTRY_CODES:
                    raise _Reject(Code.ERR_INVALID_VALUE, value)
                country = None if value == "any" else value
            case "region":
                region = _known(value, catalogue.regions, catalogue.any_name)
            case "city":
                city = _known(value, catalogue.cities, catalogue.any_name)
            case "isp":
                isp = _known(value, catalogue.isps, catalogue.any_name)
            case "asn":
                asn = _number(value, value, _ASN_MAX)
            case "network":
                networks = _networks(value)
            case "session":
                if not _SESSION_RE.fullmatch(value):
                    raise _Reject(Code.ERR_INVALID_VALUE, value)
                session = value
            case "rotate":
                rotate = _rotate(value)
            case "onerror":
                onerror = _onerror(value)
            case "bind":
                if value != "node":
                    raise _Reject(Code.ERR_INVALID_VALUE, value)
                bind_node = True
            case "prefer":
                if value != "lookalike":
                    raise _Reject(Code.ERR_INVALID_VALUE, value)
                prefer_lookalike = True
            case _:  # pragma: no cover - step 2 admitted only RULE_NAMES
                raise _Reject(Code.ERR_UNKNOWN_PARAM, name)
    return Rules(
        country, region, city, isp, asn, networks, session, rotate, onerror, bind_node,
        prefer_lookalike,
    )


def _known(value: str, names: frozenset[str], any_name: bool) -> str:
    if any_name:
        if len(value) > _NAME_MAX or not NAME_RE.fullmatch(value):
            raise _Reject(Code.ERR_INVALID_VALUE, value)
    elif value not in names:
        raise _Reject(Code.ERR_INVALID_VALUE, value)
    return value


def _number(text: str, value: str, maximum: int) -> int:
    """A decimal in 1..maximum, one spelling only; `value` is the token named on failure."""
    # The length bound keeps int() away from huge digit strings (and its 4300-digit limit).
    if len(text) > len(str(maximum)) or not _NUMBER_RE.fullmatch(text):
        raise _Reject(Code.ERR_INVALID_VALUE, value)
    number = int(text)
    if number > maximum:
        raise _Reject(Code.ERR_INVALID_VALUE, value)
    return number


def _networks(value: str) -> frozenset[Network] | None:
    if value == "any":
        return None
    parts = value.split("_")
    nets = frozenset(_NETWORKS_BY_NAME.get(p) for p in parts)
    if None in nets or len(nets) != len(parts):
        raise _Reject(Code.ERR_INVALID_VALUE, value)
    return frozenset(n for n in nets if n is not None)


def _rotate(value: str) -> Rotate:
    kind, _, number = value.partition("_")
    if kind == RotateKind.TIMED:
        return Rotate(RotateKind.TIMED, _number(number, value, _TIMED_MAX))
    if kind == RotateKind.REQUESTS:
        return Rotate(RotateKind.REQUESTS, _number(number, value, _REQUESTS_MAX))
    raise _Reject(Code.ERR_INVALID_VALUE, value)


def _onerror(value: str) -> OnError:
    if value == "replace":
        return OnError(OnErrorMode.REPLACE)
    if value == "fail":
        return OnError(OnErrorMode.FAIL)
    kind, _, number = value.partition("_")
    if kind == "retry":
        return OnError(OnErrorMode.RETRY, _number(number, value, _RETRY_MAX))
    raise _Reject(Code.ERR_INVALID_VALUE, value)


def _check_combinations(rules: Rules, *, onerror_given: bool) -> None:
    """Step 5, in the order SPEC 3 lists the combinations."""
    bad = Code.ERR_INVALID_COMBINATION
    if rules.bind_node:
        if rules.rotate is not None:
            raise _Reject(bad, "bind-node cannot be combined with rotate")
        if onerror_given and rules.onerror.mode is OnErrorMode.REPLACE:
            raise _Reject(bad, "bind-node cannot be combined with onerror-replace")
        if rules.prefer_lookalike:
            raise _Reject(bad, "bind-node cannot be combined with prefer-lookalike")
    if rules.session is None:
        if rules.bind_node:
            raise _Reject(bad, "bind-node requires session")
        if rules.rotate is not None:
            raise _Reject(bad, "rotate requires session")
        if rules.prefer_lookalike:
            raise _Reject(bad, "prefer-lookalike requires session")
    if rules.country is None:
        if rules.region is not None:
            raise _Reject(bad, "region requires a specific country")
        if rules.city is not None:
            raise _Reject(bad, "city requires a specific country")


def _check_entitlements(given: dict[str, str], rules: Rules, ent: Entitlements) -> None:
    """Step 6, pairs left to right: the rule name, then each network of a network rule."""
    for name, value in given.items():
        no_op = value == "any" and name in ("country", "network")
        if ent.rules is not None and name not in ent.rules and not no_op:
            raise _Reject(Code.ERR_PARAM_NOT_ALLOWED, name)
        if name == "network" and rules.networks is not None:
            for part in value.split("_"):
                if _NETWORKS_BY_NAME[part] not in ent.networks:
                    raise _Reject(Code.ERR_PARAM_NOT_ALLOWED, part)
