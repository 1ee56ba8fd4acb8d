"""The dashboard's session book and path classification (the guard's pure parts)."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from exitgate.admin.dashboard import auth
from exitgate.admin.dashboard.auth import (
    SessionBook,
    cookie_args,
    cookies_of,
    is_open,
    is_ours,
)


def test_sessions_are_opaque_expire_and_close() -> None:
    now = [1000.0]
    book = SessionBook(ttl=60, clock=lambda: now[0])
    a, b = book.open(), book.open()
    assert a.id != b.id and a.csrf != b.csrf and len(a.id) >= 43
    assert book.get(a.id) is a and book.get("") is None and book.get("forged") is None
    book.close(a.id)
    assert book.get(a.id) is None
    now[0] += 60
    assert book.get(b.id) is None  # expired exactly at ttl


def test_the_book_is_bounded_oldest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "MAX_SESSIONS", 5)
    book = SessionBook(ttl=60)
    first = book.open()
    rest = [book.open() for _ in range(5)]
    assert book.get(first.id) is None
    assert all(book.get(s.id) is s for s in rest)


def test_flash_messages_are_read_once() -> None:
    s = SessionBook(ttl=60).open()
    s.say("saved")
    s.say("bad", "error")
    assert s.take_flash() == [("ok", "saved"), ("error", "bad")]
    assert s.take_flash() == []


def test_the_guard_owns_every_path_but_the_api_health_and_metrics() -> None:
    for path in ("/", "/packages", "/login", "/static/x.js", "/v1x", "/nope"):
        assert is_ours(path), path
    for path in ("/v1", "/v1/orgs", "//v1/orgs", "/x/../v1/orgs", "/openapi.json", "/healthz"):
        assert not is_ours(path), path
    assert not is_ours("/metrics")
    assert is_open("/login") and is_open("/static/x.js") and is_open("/favicon.ico")
    assert not is_open("/static/../packages") and not is_open("/loginx") and not is_open("/")


def test_cookies_are_parsed_and_a_stranger_cookie_does_not_hide_ours() -> None:
    scope = {"headers": [(b"cookie", b"a=1; eg_session=abc")]}
    assert cookies_of(scope)["eg_session"] == "abc"
    odd = {"headers": [(b"cookie", b'x="\\x; json={"a":1}; eg_session=ok')]}
    assert cookies_of(odd)["eg_session"] == "ok"
    assert cookies_of({"headers": []}) == {}


def test_the_cookie_is_secure_exactly_when_served_over_tls() -> None:
    def request(scheme: str) -> Request:
        scope = {"type": "http", "scheme": scheme, "path": "/", "headers": [], "server": ("a", 1)}
        return Request(scope)

    for scheme, secure in (("https", True), ("http", False)):
        args = cookie_args(request(scheme), 60)
        assert args["secure"] is secure
        assert args["httponly"] is True and args["samesite"] == "strict"
