"""The username rule language (SPEC 3): every code, the step order, exact details, and the
canonical form, table-driven and with hypothesis."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exitgate.errors import Code, GatewayError
from exitgate.geo import COUNTRY_CODES
from exitgate.model import ALL_NETWORKS, Network, NodeAttrs, Package
from exitgate.rules import (
    RULE_NAMES,
    TARGETING_NAMES,
    Catalogue,
    Entitlements,
    OnError,
    OnErrorMode,
    Rotate,
    RotateKind,
    Rules,
    parse_rules,
)

CAT = Catalogue(
    regions=frozenset({"california", "bavaria", "new_york"}),
    cities=frozenset({"los_angeles", "new_york", "munich"}),
    isps=frozenset({"verizon", "t_mobile", "deutsche_telekom"}),
)
MISSING = Code.ERR_MISSING_PARAMS
UNKNOWN = Code.ERR_UNKNOWN_PARAM
DUPLICATE = Code.ERR_DUPLICATE_PARAM
INVALID = Code.ERR_INVALID_VALUE
COMBINATION = Code.ERR_INVALID_COMBINATION
NOT_ALLOWED = Code.ERR_PARAM_NOT_ALLOWED
NO_TARGET = (
    "no targeting rule (country, region, city, isp, asn, network); use country-any for any exit"
)


ALL_ENTITLED = Entitlements()


def error_of(username: str, entitlements: Entitlements = ALL_ENTITLED) -> tuple[Code, str]:
    with pytest.raises(GatewayError) as caught:
        parse_rules(username, CAT, entitlements)
    return caught.value.code, caught.value.detail


# (username, code, detail): one row per decision; the comment says which step order it pins.
ERRORS = [
    # 1. nothing to target
    ("", MISSING, "empty username"),
    ("-", MISSING, NO_TARGET),
    ("---", MISSING, NO_TARGET),
    ("session-abc", MISSING, NO_TARGET),
    ("foo-bar", MISSING, NO_TARGET),  # step 1 before step 2
    ("session-a-session-b", MISSING, NO_TARGET),  # step 1 before step 3
    ("us", MISSING, NO_TARGET),
    # 2. unknown names
    ("city-los-angeles", UNKNOWN, "angeles"),
    ("city-los-angeles-country-us", UNKNOWN, "angeles"),
    ("Country-us-isp-verizon", UNKNOWN, "Country"),  # names are case-sensitive
    ("country-us-foo", UNKNOWN, "foo"),  # a trailing token is a name
    ("country-us-foo-bar-country-gb", UNKNOWN, "foo"),  # step 2 before step 3
    ("country-XX-foo-1", UNKNOWN, "foo"),  # step 2 before step 4
    ("country-us-sessionid-abc", UNKNOWN, "sessionid"),
    # 3. duplicates
    ("country-us-country-gb", DUPLICATE, "country"),
    ("country-us-rotate-timed_5-rotate-requests_9", DUPLICATE, "rotate"),
    ("country-us-session-a-session", DUPLICATE, "session"),  # before the missing value
    ("country-XX-country-us", DUPLICATE, "country"),  # step 3 before step 4
    ("network-res-network-any", DUPLICATE, "network"),
    # 4. values: empty tokens first, then a missing value, then left to right
    ("country--us", INVALID, "empty token after country"),
    ("-country-us", INVALID, "empty token at start"),
    ("country-us-", INVALID, "empty token after us"),
    ("country-XX--isp-verizon", INVALID, "empty token after XX"),
    ("country-us-session", INVALID, "missing value for session"),
    ("country", INVALID, "missing value for country"),
    ("country-XX-asn-0", INVALID, "XX"),
    ("country-US", INVALID, "US"),
    ("country-usa", INVALID, "usa"),
    ("country-xk", INVALID, "xk"),  # user-assigned, not ISO 3166-1
    ("country-Any", INVALID, "Any"),
    ("country-us-region-texas", INVALID, "texas"),
    ("country-us-city-paris", INVALID, "paris"),
    ("country-us-city-Los_Angeles", INVALID, "Los_Angeles"),
    ("isp-comcast", INVALID, "comcast"),
    ("isp-any", INVALID, "any"),
    ("country-any-city-paris", INVALID, "paris"),  # step 4 before step 5
    ("asn-0", INVALID, "0"),
    ("asn-012", INVALID, "012"),
    ("asn-+12", INVALID, "+12"),
    ("asn- 12", INVALID, " 12"),
    ("asn-1_0", INVALID, "1_0"),
    ("asn-\u0661\u0662", INVALID, "??"),  # non-ASCII digits; details are ASCII
    ("asn-4294967296", INVALID, "4294967296"),
    ("asn-99999999999999999999999", INVALID, "99999999999999999999999"),
    ("asn-x", INVALID, "x"),
    ("network-wifi", INVALID, "wifi"),
    ("network-res_res", INVALID, "res_res"),
    ("network-any_res", INVALID, "any_res"),
    ("network-RES", INVALID, "RES"),
    ("network-res__mob", INVALID, "res__mob"),
    ("country-us-session-" + "a" * 33, INVALID, "a" * 33),
    ("country-us-session-a.b", INVALID, "a.b"),
    ("country-us-session-a-rotate-timed_0", INVALID, "timed_0"),
    ("country-us-session-a-rotate-timed_604801", INVALID, "timed_604801"),
    ("country-us-session-a-rotate-requests_1000001", INVALID, "requests_1000001"),
    ("country-us-session-a-rotate-timed_", INVALID, "timed_"),
    ("country-us-session-a-rotate-timed", INVALID, "timed"),
    ("country-us-session-a-rotate-daily_5", INVALID, "daily_5"),
    ("country-us-onerror-retry_0", INVALID, "retry_0"),
    ("country-us-onerror-retry_11", INVALID, "retry_11"),
    ("country-us-onerror-retry_01", INVALID, "retry_01"),
    ("country-us-onerror-retry", INVALID, "retry"),
    ("country-us-onerror-ignore", INVALID, "ignore"),
    ("country-us-bind-nodes", INVALID, "nodes"),
    ("country-us-prefer-similar", INVALID, "similar"),
    ("country-us-bind-node-rotate-x", INVALID, "x"),  # step 4 before step 5
    # 5. combinations, in SPEC order
    ("country-us-session-a-bind-node-rotate-timed_5", COMBINATION,
     "bind-node cannot be combined with rotate"),
    ("country-us-session-a-bind-node-rotate-requests_5", COMBINATION,
     "bind-node cannot be combined with rotate"),
    ("country-us-session-a-bind-node-onerror-replace", COMBINATION,
     "bind-node cannot be combined with onerror-replace"),
    ("country-us-session-a-prefer-lookalike-bind-node", COMBINATION,
     "bind-node cannot be combined with prefer-lookalike"),
    ("country-us-bind-node-rotate-timed_5", COMBINATION,
     "bind-node cannot be combined with rotate"),  # before the missing session
    ("country-us-bind-node", COMBINATION, "bind-node requires session"),
    ("country-us-rotate-timed_5", COMBINATION, "rotate requires session"),
    ("country-us-prefer-lookalike", COMBINATION, "prefer-lookalike requires session"),
    ("city-los_angeles", COMBINATION, "city requires a specific country"),
    ("country-any-region-california", COMBINATION, "region requires a specific country"),
    ("region-california-city-los_angeles", COMBINATION, "region requires a specific country"),
    ("city-los_angeles-rotate-timed_5", COMBINATION, "rotate requires session"),
]


@pytest.mark.parametrize(("username", "code", "detail"), ERRORS, ids=[e[0] or "''" for e in ERRORS])
def test_errors(username: str, code: Code, detail: str) -> None:
    assert error_of(username) == (code, detail)


ONLY_COUNTRY = Entitlements(rules=frozenset({"country"}))
RES_ONLY = Entitlements(networks=frozenset({Network.RES}))

ENTITLEMENT_ERRORS = [
    ("country-us-session-a", ONLY_COUNTRY, "session"),
    ("isp-verizon", ONLY_COUNTRY, "isp"),
    ("country-us", Entitlements(rules=frozenset({"isp"})), "country"),
    ("country-us-network-mob", RES_ONLY, "mob"),
    ("network-res_mob", RES_ONLY, "mob"),
    ("network-dc_res", RES_ONLY, "dc"),  # the networks in the order written
    ("network-mob-session-a", Entitlements(frozenset({"network"}), RES_ONLY.networks), "mob"),
    ("session-a-network-mob", Entitlements(frozenset({"network"}), RES_ONLY.networks), "session"),
    ("country-any-network-res", ONLY_COUNTRY, "network"),
]


@pytest.mark.parametrize(("username", "entitlements", "detail"), ENTITLEMENT_ERRORS)
def test_entitlement_errors(username: str, entitlements: Entitlements, detail: str) -> None:
    assert error_of(username, entitlements) == (NOT_ALLOWED, detail)


def test_combination_is_checked_before_entitlements() -> None:
    assert error_of("country-us-bind-node", ONLY_COUNTRY)[0] is COMBINATION
    assert error_of("country-US-session-a", ONLY_COUNTRY)[0] is INVALID


def test_any_is_always_entitled() -> None:
    nothing = Entitlements(rules=frozenset(), networks=frozenset({Network.RES}))
    assert parse_rules("country-any", CAT, nothing) == Rules()
    assert parse_rules("network-any", CAT, nothing) == Rules()
    assert parse_rules("network-any", CAT, RES_ONLY).networks is None  # selection restricts


def test_every_error_is_a_400() -> None:
    for username, *_ in ERRORS:
        with pytest.raises(GatewayError) as caught:
            parse_rules(username, CAT)
        assert caught.value.status == 400


def test_a_full_username() -> None:
    rules = parse_rules(
        "prefer-lookalike-network-mob_res-rotate-requests_1000000-asn-4294967295"
        "-session-Ab_9-isp-verizon-onerror-retry_10-city-new_york-region-new_york-country-us",
        CAT,
    )
    assert rules == Rules(
        country="us",
        region="new_york",
        city="new_york",
        isp="verizon",
        asn=4294967295,
        networks=frozenset({Network.RES, Network.MOB}),
        session="Ab_9",
        rotate=Rotate(RotateKind.REQUESTS, 1_000_000),
        onerror=OnError(OnErrorMode.RETRY, 10),
        prefer_lookalike=True,
    )
    assert rules.canonical() == (
        "country-us-region-new_york-city-new_york-isp-verizon-asn-4294967295-network-res_mob"
        "-session-Ab_9-rotate-requests_1000000-onerror-retry_10-prefer-lookalike"
    )


@pytest.mark.parametrize(
    ("username", "expected"),
    [
        ("country-us", Rules(country="us")),
        ("country-any", Rules()),
        ("network-any", Rules()),
        ("network-res_mob_dc", Rules(networks=ALL_NETWORKS)),
        ("asn-1", Rules(asn=1)),
        ("country-gb-onerror-fail", Rules(country="gb", onerror=OnError(OnErrorMode.FAIL))),
        ("country-gb-onerror-replace", Rules(country="gb")),
        (
            "country-us-session-s-rotate-timed_604800",
            Rules(country="us", session="s", rotate=Rotate(RotateKind.TIMED, 604800)),
        ),
        ("country-us-session-s-bind-node", Rules(country="us", session="s", bind_node=True)),
        (
            "country-us-session-s-bind-node-onerror-retry_1",
            Rules(country="us", session="s", bind_node=True, onerror=OnError(OnErrorMode.RETRY, 1)),
        ),
        (
            "country-us-session-" + "Z" * 32 + "-bind-node-onerror-fail",
            Rules(
                country="us", session="Z" * 32, bind_node=True, onerror=OnError(OnErrorMode.FAIL)
            ),
        ),
    ],
)
def test_valid(username: str, expected: Rules) -> None:
    assert parse_rules(username, CAT) == expected


@pytest.mark.parametrize(
    ("usernames", "canonical"),
    [
        (["network-any", "country-any", "country-any-network-any"], "country-any"),
        (["isp-verizon-country-any", "isp-verizon", "network-any-isp-verizon"], "isp-verizon"),
        (["country-de-onerror-replace", "onerror-replace-country-de"], "country-de"),
        (
            ["network-mob_res-country-us", "country-us-network-res_mob"],
            "country-us-network-res_mob",
        ),
        (
            ["session-x-bind-node-country-fr", "bind-node-country-fr-session-x"],
            "country-fr-session-x-bind-node",
        ),
    ],
)
def test_canonical(usernames: list[str], canonical: str) -> None:
    for username in usernames:
        assert parse_rules(username, CAT).canonical() == canonical


def test_a_new_catalogue_is_seen_at_once() -> None:
    with pytest.raises(GatewayError):
        parse_rules("country-fr-city-paris", CAT)  # now cached as a failure
    grown = CAT.with_attrs([NodeAttrs(country="fr", region="idf", city="paris", isp="orange")])
    assert grown is not CAT
    assert parse_rules("country-fr-city-paris", grown).city == "paris"
    assert "idf" in grown.regions and "orange" in grown.isps
    assert CAT.with_attrs([NodeAttrs(city="munich")]) is CAT  # nothing new: same object
    assert Catalogue.empty().with_attrs([NodeAttrs()]) == Catalogue.empty()  # "" is no name


def test_entitlements_of_a_package() -> None:
    package = Package(
        id="p", org_id="o", name="n", key_hash="h", networks=frozenset({Network.DC}),
        rules=frozenset({"country"}),
    )
    assert Entitlements.of(package) == Entitlements(frozenset({"country"}), frozenset({Network.DC}))


def test_rules_is_a_pure_module() -> None:
    source = Path(__file__).parents[2] / "src" / "exitgate" / "rules.py"
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert not imported & {"asyncio", "socket", "ssl", "selectors", "exitgate.net"}


# -- properties -------------------------------------------------------------------------------

COUNTRIES = sorted(COUNTRY_CODES)


@st.composite
def valid_rules(draw: st.DrawFn) -> Rules:
    """Any Rules that parse_rules can produce (with CAT, all entitled)."""
    country = draw(st.one_of(st.none(), st.sampled_from(COUNTRIES)))
    specific = country is not None
    region = draw(st.one_of(st.none(), st.sampled_from(sorted(CAT.regions)))) if specific else None
    city = draw(st.one_of(st.none(), st.sampled_from(sorted(CAT.cities)))) if specific else None
    isp = draw(st.one_of(st.none(), st.sampled_from(sorted(CAT.isps))))
    asn = draw(st.one_of(st.none(), st.integers(1, 4_294_967_295)))
    networks = draw(st.one_of(st.none(), st.frozensets(st.sampled_from(Network), min_size=1)))
    session = draw(st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_]{1,32}", fullmatch=True)))
    bind_node = session is not None and draw(st.booleans())
    rotate = None
    prefer = False
    if session is not None and not bind_node:
        rotate = draw(
            st.one_of(
                st.none(),
                st.builds(Rotate, st.just(RotateKind.TIMED), st.integers(1, 604_800)),
                st.builds(Rotate, st.just(RotateKind.REQUESTS), st.integers(1, 1_000_000)),
            )
        )
        prefer = draw(st.booleans())
    onerror = draw(
        st.one_of(
            st.just(OnError()),
            st.just(OnError(OnErrorMode.FAIL)),
            st.builds(OnError, st.just(OnErrorMode.RETRY), st.integers(1, 10)),
        )
    )
    return Rules(country, region, city, isp, asn, networks, session, rotate, onerror, bind_node,
                 prefer)


def pairs_of(rules: Rules) -> list[str]:
    tokens = rules.canonical().split("-")
    return [f"{tokens[i]}-{tokens[i + 1]}" for i in range(0, len(tokens), 2)]


@settings(deadline=None)
@given(valid_rules())
def test_canonical_round_trips(rules: Rules) -> None:
    assert parse_rules(rules.canonical(), CAT) == rules


@settings(deadline=None)
@given(valid_rules().flatmap(lambda r: st.tuples(st.just(r), st.permutations(pairs_of(r)))))
def test_any_order_is_the_same_rules(case: tuple[Rules, list[str]]) -> None:
    rules, pairs = case
    shuffled = parse_rules("-".join(pairs), CAT)
    assert shuffled == rules
    assert shuffled.canonical() == rules.canonical()


def assert_parses_or_400(username: str) -> None:
    try:
        rules = parse_rules(username, CAT)
    except GatewayError as err:
        assert err.status == 400
        assert err.code in {MISSING, UNKNOWN, DUPLICATE, INVALID, COMBINATION, NOT_ALLOWED}
        assert err.detail.isascii() and "\n" not in err.detail
    else:
        assert parse_rules(rules.canonical(), CAT) == rules


@settings(deadline=None)
@given(st.text())
def test_any_text_is_rules_or_a_400(username: str) -> None:
    assert_parses_or_400(username)


@settings(deadline=None)
@given(st.from_regex(r"[a-z0-9_-]*", fullmatch=True))
def test_any_username_alphabet_text_is_rules_or_a_400(username: str) -> None:
    assert_parses_or_400(username)


TOKENS = [
    *sorted(RULE_NAMES),
    "", "us", "any", "US", "res", "mob_dc", "timed_5", "requests_0", "retry_3", "fail",
    "replace", "node", "lookalike", "los_angeles", "verizon", "california", "15169", "0", "x",
]


@settings(deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=12).map("-".join))
def test_near_valid_usernames_are_rules_or_a_400(username: str) -> None:
    assert_parses_or_400(username)


def test_name_sets() -> None:
    targeting = {"country", "region", "city", "isp", "asn", "network"}
    assert targeting == TARGETING_NAMES
    assert targeting | {"session", "rotate", "onerror", "bind", "prefer"} == RULE_NAMES
