"""SOAX's legacy usernames, accepted beside exitgate's own (issue 13). Pure: no I/O, no clock.

Grammar
-------
    legacy := "package-" id ("-" name "-" value)*
    name   := country | region | city | isp | sessionid | sessionlength | bindttl | idlettl
            | opt
    value  := a token without "-"; "+" stands for a space (exitgate writes "_")

    package-123-country-us-city-new+york-sessionid-abc-sessionlength-600
    package-123-country-de-sessionid-s1-sessionlength-3600-bindttl-60-idlettl-120-opt-lookalike

Detection is by prefix: a username starting with `package-` is legacy (`package` is not an
exitgate rule name, so no native username starts that way).

Mapping (to the same `Rules` value, plus `SessionTimings`)
-------
    package-<id>       the package; a package id that is not the key's package is AUTH_FAILED
                       (checked by admission at gate 1: `legacy_package_id`)
    country, region, city, isp    the exitgate rules of the same names ("+" → "_", lowercased)
    sessionid-<id>     session-<id>
    sessionlength-<s>  the session's lifetime: the session ends <s> seconds after it began,
                       whatever the traffic (the next request starts a new one)
    idlettl-<s>        the session's idle expiry, instead of `[sessions] idle_timeout`
    bindttl-<s>        for <s> seconds after a node takes the session, a failing node is
                       retried and kept (BOUND_NODE_FAILED), not replaced; after that the
                       exitgate default (onerror-replace) applies
    opt-lookalike      prefer-lookalike

No country (nor region, city, isp) means any country. `sessionid` requires
`sessionlength` and the timings require `sessionid` (ERR_INVALID_COMBINATION).

Validation reuses rules.py: steps 1-3 run on the legacy names (ERR_UNKNOWN_PARAM "asn" for a
native-only name), step 4 checks the legacy-only values (package id, the three timings, each
1..604800 with one spelling), then the translated native username goes through `parse_rules`
(values, combinations, entitlements, its cache), and a failure is reported with the legacy
token it came from: "new+york", "sessionid", "opt".
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Final

from exitgate.errors import Code, GatewayError
from exitgate.rules import Catalogue, Entitlements, Rules, name_values, parse_rules
from exitgate.store.sessions import NO_TIMINGS, SessionTimings

LEGACY_PREFIX: Final = "package-"
LEGACY_NAMES: Final = (
    "package", "country", "region", "city", "isp",
    "sessionid", "sessionlength", "bindttl", "idlettl", "opt",
)  # fmt: skip
_NATIVE: Final = {
    "country": "country",
    "region": "region",
    "city": "city",
    "isp": "isp",
    "sessionid": "session",
    "opt": "prefer",
}
_LEGACY_OF: Final = {native: legacy for legacy, native in _NATIVE.items()}
_GEO: Final = ("country", "region", "city", "isp")
_TIMINGS: Final = ("sessionlength", "bindttl", "idlettl")
_PACKAGE_RE: Final = re.compile(r"[A-Za-z0-9_]{1,40}")
_SECONDS_RE: Final = re.compile(r"[1-9][0-9]{0,5}")
_SECONDS_MAX: Final = 604_800
_CACHE_SIZE: Final = 4096


def is_legacy(username: str) -> bool:
    return username.startswith(LEGACY_PREFIX)


def legacy_package_id(username: str) -> str:
    """The package id a legacy username names ("" if none)."""
    return username.split("-", 2)[1]


@dataclass(frozen=True, slots=True)
class LegacyUsername:
    package_id: str
    rules: Rules
    timings: SessionTimings = NO_TIMINGS

    def format(self) -> str:
        """The legacy spelling; ValueError for rules the legacy form cannot say."""
        r = self.rules
        if (
            r.asn is not None
            or r.networks is not None
            or r.rotate is not None
            or r.bind_node
            or r.onerror.mode.value != "replace"
        ):
            raise ValueError("asn, network, rotate, onerror and bind have no legacy form")
        parts = ["package", self.package_id]
        for name, value in (("country", r.country), ("region", r.region), ("city", r.city),
                            ("isp", r.isp)):  # fmt: skip
            if value is not None:
                parts += [name, value.replace("_", "+")]
        t = self.timings
        if r.session is not None:
            if t.lifetime is None:
                raise ValueError("a legacy session needs a sessionlength")
            parts += ["sessionid", r.session, "sessionlength", str(t.lifetime)]
        for name, seconds in (("bindttl", t.hold), ("idlettl", t.idle)):
            if seconds is not None:
                parts += [name, str(seconds)]
        if r.prefer_lookalike:
            parts += ["opt", "lookalike"]
        return "-".join(parts)


def parse_legacy(
    username: str, catalogue: Catalogue, entitlements: Entitlements | None = None
) -> LegacyUsername:
    """Parse a legacy username; GatewayError (a 400 code naming the token) on failure."""
    ent = entitlements if entitlements is not None else Entitlements()
    outcome = _cached(username, catalogue, ent)
    if isinstance(outcome, GatewayError):
        raise GatewayError(outcome.code, outcome.detail)
    return outcome


def _outcome(
    username: str, catalogue: Catalogue, ent: Entitlements
) -> LegacyUsername | GatewayError:
    try:
        return _parse(username, catalogue, ent)
    except GatewayError as exc:
        return exc


_cached = functools.lru_cache(maxsize=_CACHE_SIZE)(_outcome)


def _parse(username: str, catalogue: Catalogue, ent: Entitlements) -> LegacyUsername:
    # 2-4: known names, each once, no empty token, a value for each (the native grammar's
    # form check); then the legacy-only values
    given = name_values(username, LEGACY_NAMES)
    package_id = given["package"]
    if not _PACKAGE_RE.fullmatch(package_id):
        raise GatewayError(Code.ERR_INVALID_VALUE, package_id)
    seconds = {name: _seconds(given[name]) for name in _TIMINGS if name in given}
    # 5 (legacy part): sessions and their timings
    if "sessionid" in given and "sessionlength" not in given:
        raise GatewayError(Code.ERR_INVALID_COMBINATION, "sessionid requires sessionlength")
    for name in _TIMINGS:
        if name in given and "sessionid" not in given:
            raise GatewayError(Code.ERR_INVALID_COMBINATION, f"{name} requires sessionid")
    # 4-6 of the native grammar, on the translated username
    originals: dict[str, str] = {}
    pairs: list[str] = []
    if not any(name in given for name in _GEO):
        pairs.append("country-any")
    for name, value in given.items():
        native = _NATIVE.get(name)
        if native is None:
            continue
        translated = value.replace("+", "_").lower() if name in _GEO else value
        originals.setdefault(translated, value)
        pairs.append(f"{native}-{translated}")
    try:
        rules = parse_rules("-".join(pairs), catalogue, ent)
    except GatewayError as exc:
        raise GatewayError(exc.code, _legacy_detail(exc.detail, originals)) from None
    timings = SessionTimings(
        lifetime=seconds.get("sessionlength"),
        idle=seconds.get("idlettl"),
        hold=seconds.get("bindttl"),
    )
    return LegacyUsername(package_id, rules, timings)


def _seconds(value: str) -> int:
    if not _SECONDS_RE.fullmatch(value) or int(value) > _SECONDS_MAX:
        raise GatewayError(Code.ERR_INVALID_VALUE, value)
    return int(value)


def _legacy_detail(detail: str, originals: dict[str, str]) -> str:
    """A native failure detail in legacy words: the token as sent, the legacy rule names."""
    if detail in originals:
        return originals[detail]
    if detail in _LEGACY_OF:
        return _LEGACY_OF[detail]
    return detail.replace("prefer-lookalike", "opt-lookalike").replace(
        "requires session", "requires sessionid"
    )
