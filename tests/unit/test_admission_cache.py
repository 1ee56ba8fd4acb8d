"""Gate 4's memo (issue 10): a username parses once per package entitlements and catalogue,
and a change to either (or a key rotation, at gate 1) takes effect on the next request."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from exitgate.admission import PARSED_CACHE_SIZE, Admission, Admitted
from exitgate.errors import Code, GatewayError
from exitgate.model import Network, Node, NodeAttrs, NodeKind, Org, Package, Protocol, Target
from exitgate.registry import Registry
from exitgate.store.keys import hash_key

TARGET = Target("example.com", 443)


def _setup() -> tuple[Registry, Admission, Package]:
    registry = Registry()
    registry.put_org(Org("o1", "acme", None))
    package = Package("p1", "o1", "main", hash_key("key-one"))
    registry.put_package(package)
    registry.put_node(Node("n1", NodeKind.DIRECT, NodeAttrs(country="us", network=Network.DC)))
    return registry, Admission(registry), package


def _admit(admission: Admission, username: str, key: str = "key-one") -> Admitted:
    identity = admission.authenticate((username, key), "203.0.113.9")
    return asyncio.run(admission.authorize(identity, Protocol.HTTPS, TARGET))


def test_the_same_username_parses_once() -> None:
    _, admission, _ = _setup()
    first = _admit(admission, "country-us-session-abc")
    again = _admit(admission, "country-us-session-abc")
    assert again.rules is first.rules and again.filters is first.filters
    assert first.rules.country == "us" and first.rules.session == "abc"
    other = _admit(admission, "country-us-session-xyz")
    assert other.rules.session == "xyz"


def test_a_package_change_applies_at_once() -> None:
    registry, admission, package = _setup()
    assert _admit(admission, "country-us-session-abc").rules.session == "abc"
    # the package loses the session rule: the memoised parse must not be used
    registry.put_package(dataclasses.replace(package, rules=frozenset({"country"})))
    with pytest.raises(GatewayError) as refused:
        _admit(admission, "country-us-session-abc")
    assert refused.value.code.value.startswith("ERR_") and refused.value.package_id == "p1"
    # and a narrowed network set narrows the node filters
    registry.put_package(dataclasses.replace(package, networks=frozenset({Network.DC})))
    assert _admit(admission, "country-us").filters.networks == frozenset({Network.DC})


def test_a_key_rotation_applies_at_once() -> None:
    registry, admission, package = _setup()
    _admit(admission, "country-us")
    registry.put_package(dataclasses.replace(package, key_hash=hash_key("key-two")))
    with pytest.raises(GatewayError) as refused:
        _admit(admission, "country-us")
    assert refused.value.code is Code.AUTH_FAILED
    assert _admit(admission, "country-us", key="key-two").rules.country == "us"


def test_a_new_catalogue_name_is_seen_at_once() -> None:
    registry, admission, _ = _setup()
    with pytest.raises(GatewayError) as refused:
        _admit(admission, "country-us-city-springfield")
    assert refused.value.code is Code.ERR_INVALID_VALUE and "springfield" in refused.value.detail
    registry.put_node(
        Node("n2", NodeKind.DIRECT, NodeAttrs(country="us", city="springfield", network=Network.DC))
    )
    assert _admit(admission, "country-us-city-springfield").rules.city == "springfield"


def test_the_memo_is_bounded() -> None:
    _, admission, _ = _setup()
    package = admission.directory.package_by_key("key-one")
    assert package is not None
    for i in range(PARSED_CACHE_SIZE + 10):
        admission._rules(f"country-us-session-s{i}", package)
    assert 0 < len(admission._parsed) <= PARSED_CACHE_SIZE
