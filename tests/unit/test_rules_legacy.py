"""SOAX legacy usernames (issue 13): mapping, the shared 400 codes naming the legacy token,
and a hypothesis round trip (typed values → legacy string → parse → equal)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exitgate.errors import Code, GatewayError
from exitgate.geo import COUNTRY_CODES
from exitgate.rules import RULE_NAMES, Catalogue, Entitlements, Rules
from exitgate.rules_legacy import (
    LegacyUsername,
    is_legacy,
    legacy_package_id,
    parse_legacy,
)
from exitgate.store.sessions import SessionTimings

CAT = Catalogue(
    regions=frozenset({"california", "bavaria", "new_york"}),
    cities=frozenset({"los_angeles", "new_york", "munich", "san_francisco"}),
    isps=frozenset({"verizon", "t_mobile", "verizon_wireless"}),
)


def test_detection_is_by_prefix_and_package_is_no_rule_name() -> None:
    assert "package" not in RULE_NAMES
    assert is_legacy("package-123-country-us")
    assert not is_legacy("country-us-session-package")
    assert legacy_package_id("package-pkg_abc-country-us") == "pkg_abc"
    assert legacy_package_id("package-") == ""


def test_a_full_legacy_username_maps_to_rules_and_timings() -> None:
    parsed = parse_legacy(
        "package-pkg_1-country-us-region-california-city-san+francisco-isp-verizon+wireless"
        "-sessionid-abc_1-sessionlength-600-bindttl-30-idlettl-120-opt-lookalike",
        CAT,
    )
    assert parsed == LegacyUsername(
        "pkg_1",
        Rules(country="us", region="california", city="san_francisco", isp="verizon_wireless",
              session="abc_1", prefer_lookalike=True),
        SessionTimings(lifetime=600, idle=120, hold=30),
    )
    # the native canonical form of the same rules
    assert parsed.rules.canonical() == (
        "country-us-region-california-city-san_francisco-isp-verizon_wireless-session-abc_1"
        "-prefer-lookalike"
    )


def test_minimal_forms() -> None:
    assert parse_legacy("package-7", CAT) == LegacyUsername("7", Rules())
    assert parse_legacy("package-7-country-DE", CAT).rules == Rules(country="de")
    assert parse_legacy("package-7-city-New+York-country-us", CAT).rules == Rules(
        country="us", city="new_york"
    )


@pytest.mark.parametrize(
    ("username", "code", "detail"),
    [
        ("package-1-asn-7922", Code.ERR_UNKNOWN_PARAM, "asn"),
        ("package-1-city-los-angeles", Code.ERR_UNKNOWN_PARAM, "angeles"),
        ("package-1-country-us-country-de", Code.ERR_DUPLICATE_PARAM, "country"),
        ("package-1-country--us", Code.ERR_INVALID_VALUE, "empty token after country"),
        ("package-1-country-us-sessionid", Code.ERR_INVALID_VALUE, "missing value for sessionid"),
        ("package-a!b-country-us", Code.ERR_INVALID_VALUE, "a!b"),
        ("package-1-sessionid-x-sessionlength-0", Code.ERR_INVALID_VALUE, "0"),
        ("package-1-sessionid-x-sessionlength-60-idlettl-604801", Code.ERR_INVALID_VALUE,
         "604801"),
        ("package-1-sessionid-x-sessionlength-60-bindttl-01", Code.ERR_INVALID_VALUE, "01"),
        ("package-1-country-xx", Code.ERR_INVALID_VALUE, "xx"),
        ("package-1-country-us-city-new+jersey", Code.ERR_INVALID_VALUE, "new+jersey"),
        ("package-1-sessionid-a+b-sessionlength-60", Code.ERR_INVALID_VALUE, "a+b"),
        ("package-1-country-us-opt-fast", Code.ERR_INVALID_VALUE, "fast"),
        ("package-1-sessionid-x", Code.ERR_INVALID_COMBINATION,
         "sessionid requires sessionlength"),
        ("package-1-idlettl-60", Code.ERR_INVALID_COMBINATION, "idlettl requires sessionid"),
        ("package-1-country-us-opt-lookalike", Code.ERR_INVALID_COMBINATION,
         "opt-lookalike requires sessionid"),
        ("package-1-city-new+york", Code.ERR_INVALID_COMBINATION,
         "city requires a specific country"),
    ],
)
def test_invalid_legacy_strings_answer_the_catalogued_400s(
    username: str, code: Code, detail: str
) -> None:
    with pytest.raises(GatewayError) as caught:
        parse_legacy(username, CAT)
    assert (caught.value.code, caught.value.detail) == (code, detail)
    assert caught.value.status == 400


def test_entitlements_name_the_legacy_rule() -> None:
    no_sessions = Entitlements(rules=frozenset({"country"}))
    with pytest.raises(GatewayError) as caught:
        parse_legacy("package-1-country-us-sessionid-x-sessionlength-60", CAT, no_sessions)
    assert (caught.value.code, caught.value.detail) == (Code.ERR_PARAM_NOT_ALLOWED, "sessionid")


def test_forms_the_legacy_syntax_cannot_say_are_refused() -> None:
    with pytest.raises(ValueError, match="no legacy form"):
        LegacyUsername("1", Rules(asn=5)).format()
    with pytest.raises(ValueError, match="sessionlength"):
        LegacyUsername("1", Rules(session="x")).format()


_names = st.text("abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=12)
_seconds = st.integers(1, 604_800)


@st.composite
def legacy_usernames(draw: st.DrawFn) -> tuple[LegacyUsername, Catalogue]:
    country = draw(st.none() | st.sampled_from(sorted(COUNTRY_CODES)))
    region = draw(st.none() | _names) if country else None
    city = draw(st.none() | _names) if country else None
    isp = draw(st.none() | _names)
    session = draw(st.none() | st.from_regex(r"[A-Za-z0-9_]{1,32}", fullmatch=True))
    timings = SessionTimings()
    lookalike = False
    if session is not None:
        timings = SessionTimings(
            lifetime=draw(_seconds),
            idle=draw(st.none() | _seconds),
            hold=draw(st.none() | _seconds),
        )
        lookalike = draw(st.booleans())
    package_id = draw(st.from_regex(r"[A-Za-z0-9_]{1,40}", fullmatch=True))
    rules = Rules(country=country, region=region, city=city, isp=isp, session=session,
                  prefer_lookalike=lookalike)
    catalogue = Catalogue(
        frozenset({region} - {None}), frozenset({city} - {None}), frozenset({isp} - {None})
    )
    return LegacyUsername(package_id, rules, timings), catalogue


@settings(max_examples=300)
@given(legacy_usernames())
def test_legacy_usernames_round_trip(case: tuple[LegacyUsername, Catalogue]) -> None:
    value, catalogue = case
    text = value.format()
    assert is_legacy(text) and legacy_package_id(text) == value.package_id
    assert parse_legacy(text, catalogue) == value


@settings(max_examples=300)
@given(st.text("package-_+ab1cdeorysitnlgh", max_size=60))
def test_any_string_parses_or_answers_a_400(text: str) -> None:
    try:
        parse_legacy("package-" + text, CAT)
    except GatewayError as exc:
        assert exc.status == 400 and exc.detail
