"""Dashboard log-in: server-side sessions, the cookie guard, CSRF tokens, security headers.

A session is an opaque random id (32 bytes, URL-safe) in an HttpOnly, SameSite=Strict cookie
(Secure when the request came over TLS); everything else (expiry, CSRF token, flash messages)
stays in this process. Sessions do not survive a restart: the operator logs in again.

`DashboardGuard` is pure ASGI and runs before any route, so a request without a live session
is turned away before its body is read: GET and HEAD are redirected to `/login`, everything
else gets 403. It leaves alone what is not the dashboard's: `/v1/*`, `/openapi.json`
(the Bearer-token API), `/healthz` and `/metrics`. `/login` and `/static/` are open. It also
puts the security headers (a strict CSP without inline script or style, nosniff,
no-referrer, no framing, no caching of pages) on every dashboard response.

CSRF: each session has a random token; every form that changes something carries it in a
hidden `csrf` field, and `checked_form` refuses a form without the right one with 403. The
login form has no session yet: it carries a double-submit token that must equal the value of
a short-lived HttpOnly cookie set by the login page.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException, Request
from starlette.datastructures import FormData
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exitgate.admin.guard import normalise

COOKIE = "eg_session"
LOGIN_COOKIE = "eg_login"
NOT_OURS = ("/v1", "/openapi.json", "/healthz", "/metrics")
OPEN = ("/login", "/static/", "/favicon.ico")  # the browser asks for an icon before log-in
MAX_SESSIONS = 1000  # the oldest go first beyond this: a bound on what login spam can hold
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


@dataclass(slots=True)
class Session:
    id: str
    csrf: str
    expires: float
    flash: list[tuple[str, str]] = field(default_factory=list)  # (kind, text)

    def say(self, text: str, kind: str = "ok") -> None:
        self.flash.append((kind, text))

    def take_flash(self) -> list[tuple[str, str]]:
        out, self.flash = self.flash, []
        return out


class SessionBook:
    def __init__(self, ttl: float, clock: Callable[[], float] = time.time) -> None:
        self.ttl = ttl
        self.clock = clock
        self._sessions: dict[str, Session] = {}

    def open(self) -> Session:
        while len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), self.clock() + self.ttl)
        self._sessions[s.id] = s
        return s

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        s = self._sessions.get(session_id)
        if s is None:
            return None
        if s.expires <= self.clock():
            del self._sessions[session_id]
            return None
        return s

    def close(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)


def cookies_of(scope: Scope) -> dict[str, str]:
    """Starlette's lenient parser (as `Request.cookies`): another app's odd cookie on the same
    host (cookies ignore ports) must not hide ours, as it would with `SimpleCookie`."""
    jar: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        if name == b"cookie":
            jar.update(cookie_parser(value.decode("latin-1")))
    return jar


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p.rstrip("/") or path.startswith(p.rstrip("/") + "/") for p in prefixes)


def is_ours(path: str) -> bool:
    """The API's paths (as sent or normalised, as `AdminGuard` reads them) are not ours."""
    return not any(_under(p, NOT_OURS) for p in (path, normalise(path)))


def is_open(path: str) -> bool:
    """Open only if open as sent and once normalised (`/static/../x` is not)."""
    return all(_under(p, OPEN) for p in (path, normalise(path)))


class DashboardGuard:
    """Pure ASGI: the session check (before any body is read) and the security headers."""

    def __init__(self, app: ASGIApp, book: SessionBook) -> None:
        self.app = app
        self.book = book

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_ours(scope["path"]):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]

        async def send_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.extend(SECURITY_HEADERS)
                if not path.startswith("/static/"):
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        if not is_open(path):
            session = self.book.get(cookies_of(scope).get(COOKIE))
            if session is None:
                await _refuse(scope, send_headers)
                return
            scope.setdefault("state", {})["dashboard_session"] = session
        await self.app(scope, receive, send_headers)


async def _refuse(scope: Scope, send: Send) -> None:
    if scope["method"] in ("GET", "HEAD"):
        status, headers, body = 303, [(b"location", b"/login")], b""
    else:
        status, headers, body = 403, [(b"content-type", b"text/plain")], b"login required\n"
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def session_of(request: Request) -> Session:
    session = getattr(request.state, "dashboard_session", None)
    if not isinstance(session, Session):  # the guard let it through: a wiring mistake
        raise HTTPException(403, "login required")
    return session


async def checked_form(request: Request) -> FormData:
    """The posted form, after its CSRF token matched the session's (403 otherwise)."""
    session = session_of(request)
    form = await request.form()
    given = form.get("csrf")
    if not isinstance(given, str) or not hmac.compare_digest(given, session.csrf):
        raise HTTPException(403, "missing or wrong CSRF token")
    return form


def cookie_args(request: Request, max_age: float) -> dict[str, Any]:
    return {
        "httponly": True,
        "samesite": "strict",
        "secure": request.url.scheme == "https",
        "max_age": int(max_age),
        "path": "/",
    }


__all__ = [
    "COOKIE",
    "CSP",
    "LOGIN_COOKIE",
    "DashboardGuard",
    "Session",
    "SessionBook",
    "checked_form",
    "cookie_args",
    "session_of",
]
