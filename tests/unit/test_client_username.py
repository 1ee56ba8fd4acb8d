"""exitgate.client usernames: typed rules ↔ text through the gateway's own grammar."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exitgate.client import Username, UsernameError, every, parse_username, retry, timed, username
from exitgate.errors import Code, GatewayError
from exitgate.geo import COUNTRY_CODES
from exitgate.model import Network
from exitgate.rules import NAME_RE, Catalogue, OnError, OnErrorMode, parse_rules

names = st.from_regex(r"[a-z0-9]{1,8}(_[a-z0-9]{1,8}){0,2}", fullmatch=True)
sessions = st.from_regex(r"[A-Za-z0-9_]{1,32}", fullmatch=True)
networks = st.none() | st.frozensets(st.sampled_from(list(Network)), min_size=1)


@st.composite
def usernames(draw: st.DrawFn) -> Username:
    country = draw(st.none() | st.sampled_from(sorted(COUNTRY_CODES)))
    with_country = country is not None
    session = draw(st.none() | sessions)
    bind_node = session is not None and draw(st.booleans())
    rotate = None
    prefer = False
    if session is not None and not bind_node:
        rotate = draw(
            st.none()
            | st.integers(1, 604_800).map(timed)
            | st.integers(1, 1_000_000).map(every)
        )
        prefer = draw(st.booleans())
    onerrors = [OnError(), OnError(OnErrorMode.FAIL)]
    onerror = draw(st.sampled_from(onerrors) | st.integers(1, 10).map(retry))
    return Username(
        country=country,
        region=draw(st.none() | names) if with_country else None,
        city=draw(st.none() | names) if with_country else None,
        isp=draw(st.none() | names),
        asn=draw(st.none() | st.integers(1, 4_294_967_295)),
        network=draw(networks),
        session=session,
        rotate=rotate,
        onerror=onerror,
        bind_node=bind_node,
        prefer_lookalike=prefer,
    )


@given(usernames())
def test_round_trip(u: Username) -> None:
    text = str(u)
    back = Username.parse(text)
    assert back == u
    assert str(back) == text


@given(usernames())
def test_the_gateway_reads_the_same_rules(u: Username) -> None:
    """The gateway, with a pool that knows the names, parses what the client wrote as-is."""
    catalogue = Catalogue(
        frozenset({u.region} - {None}),  # type: ignore[arg-type]
        frozenset({u.city} - {None}),  # type: ignore[arg-type]
        frozenset({u.isp} - {None}),  # type: ignore[arg-type]
    )
    assert parse_rules(str(u), catalogue) == u.to_rules()


tokens = st.sampled_from(
    ["country", "us", "de", "any", "city", "region", "isp", "new_york", "x", "asn", "7922",
     "0", "network", "res", "mob_res", "res_res", "session", "abc", "rotate", "timed_5",
     "requests_0", "onerror", "fail", "retry_3", "bind", "node", "prefer", "lookalike", "",
     "Country", "a_b"]
)


@given(st.lists(tokens, max_size=10).map("-".join))
def test_client_and_gateway_agree_on_any_text(text: str) -> None:
    """Same answer, or the same refusal, for any text (names known to the gateway's pool)."""
    known = frozenset(t for t in text.split("-") if NAME_RE.fullmatch(t))
    catalogue = Catalogue(known, known, known)
    try:
        rules = parse_rules(text, catalogue)
    except GatewayError as exc:
        with pytest.raises(UsernameError) as info:
            Username.parse(text)
        assert (info.value.code, info.value.detail) == (exc.code, exc.detail)
    else:
        assert Username.parse(text).to_rules() == rules


def test_typed_arguments_are_normalised() -> None:
    u = Username(country="US", city="New York", network="mob_res", session="abc",
                 rotate="timed_300", onerror="retry_2")
    assert str(u) == "country-us-city-new_york-network-res_mob-session-abc-rotate-timed_300" \
        "-onerror-retry_2"
    assert u == Username(country="us", city="new_york", network=[Network.RES, "mob"],
                         session="abc", rotate=timed(300), onerror=retry(2))
    assert username(country="de", network="any") == "country-de"
    assert str(Username()) == "country-any"
    assert parse_username("network-any") == Username()


@pytest.mark.parametrize(
    ("kwargs", "code", "detail"),
    [
        ({"session": "a-b"}, Code.ERR_INVALID_VALUE, "a-b"),
        ({"country": "zz"}, Code.ERR_INVALID_VALUE, "zz"),
        ({"rotate": "timed_5"}, Code.ERR_INVALID_COMBINATION, "rotate requires session"),
        ({"city": "berlin"}, Code.ERR_INVALID_COMBINATION, "city requires a specific country"),
        ({"asn": 0}, Code.ERR_INVALID_VALUE, "0"),
        ({"network": "tor"}, Code.ERR_INVALID_VALUE, "tor"),
        ({"onerror": "sometimes"}, Code.ERR_INVALID_VALUE, "sometimes"),
        ({"session": "s", "bind_node": True, "rotate": timed(5)}, Code.ERR_INVALID_COMBINATION,
         "bind-node cannot be combined with rotate"),
    ],
)
def test_invalid_rules_carry_the_gateways_code(
    kwargs: dict[str, object], code: Code, detail: str
) -> None:
    with pytest.raises(UsernameError) as info:
        Username(**kwargs)  # type: ignore[arg-type]
    assert (info.value.code, info.value.detail) == (code, detail)


def test_parse_refusals_name_the_token() -> None:
    with pytest.raises(UsernameError) as info:
        Username.parse("country-us-city-los-angeles")
    assert info.value.code is Code.ERR_UNKNOWN_PARAM
    assert info.value.detail == "angeles"
