"""The admin guard's pure parts: which paths need the token, and the JSON depth bound."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from exitgate.admin.guard import json_depth_exceeds, needs_token, normalise

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab,:'),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(alphabet='[]{}"\\ab', max_size=4), inner, max_size=3),
    max_leaves=40,
)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@given(JSON, st.integers(min_value=1, max_value=8))
def test_depth_bound_matches_the_real_nesting(value: Any, limit: int) -> None:
    """Brackets inside strings (escaped quotes too) do not count; containers do."""
    body = json.dumps(value).encode()
    assert json_depth_exceeds(body, limit) == (_depth(value) > limit)


@given(st.integers(min_value=0, max_value=100), st.integers(min_value=1, max_value=40))
def test_unclosed_openers_count(levels: int, limit: int) -> None:
    assert json_depth_exceeds(b"[" * levels, limit) == (levels > limit)
    assert json_depth_exceeds(b'{"a":' * levels, limit) == (levels > limit)


def test_huge_bodies_are_quick() -> None:
    assert json_depth_exceeds(b"[" * (1 << 20), 32)
    assert json_depth_exceeds((b"[" * 32 + b"]") * 30_000, 32)
    assert not json_depth_exceeds(b"[]" * (1 << 19), 32)


def test_paths() -> None:
    for path in ("/v1", "/v1/orgs", "/v1/packages/p/usage", "/openapi.json", "//v1/orgs",
                 "/x/../v1/orgs", "/v1/self/../orgs", "/./v1/nodes", "/v1/self"):
        assert needs_token("GET", path), path
    for path in ("/", "/healthz", "/metrics", "/login", "/static/app.js", "/v10", "/v1x"):
        assert not needs_token("GET", path), path
        assert not needs_token("POST", path), path
    assert not needs_token("GET", "/v1/self/usage")
    assert not needs_token("HEAD", "/v1/self/usage")
    assert needs_token("POST", "/v1/self/usage")
    assert needs_token("DELETE", "/v1/self/x")


@given(st.lists(st.sampled_from(["", ".", "..", "v1", "self", "orgs", "x"]), max_size=8))
def test_normalised_path_never_escapes_the_rules(segments: list[str]) -> None:
    """Whatever the dot segments, a path that routes under /v1 outside /v1/self/ needs it."""
    path = "/" + "/".join(segments)
    norm = normalise(path)
    assert norm.startswith("/") and "//" not in norm
    assert "/./" not in norm + "/" and "/../" not in norm + "/"
    if norm == "/v1" or (norm.startswith("/v1/") and not norm.startswith("/v1/self/")):
        assert needs_token("GET", path)
