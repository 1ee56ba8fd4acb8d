"""The admin port's gatekeeper: a pure ASGI middleware that runs before routing and before
any body is read.

1. Token. Paths under `/v1` and `/openapi.json` need `Authorization: Bearer <admin token>`
   (compared in constant time); without it: 401 at once, the body left unread and the
   connection closed. Exception: GET and HEAD under `/v1/self/` (self-service, which
   authenticates by package key itself). Everything else (`/healthz`, `/metrics`, the
   dashboard's `/`, `/login`, `/static/...`) is passed on without the admin token.
   The decision looks at the path as sent and at its normalised form (`//`, `.`, `..`
   collapsed): a path counts as protected if either form is, and as self-service only if
   both are.
2. Size. Every body, any path: a `Content-Length` over `max_body_bytes` is 413 up front; a
   chunked body is counted while read and 413 the moment it passes the cap.
3. Depth. A JSON body (no Content-Type, or a `json` one) nested deeper than `max_json_depth`
   is 422 naming the problem: Python's recursive JSON parser would otherwise fail on it.
   Checked without recursion (see `json_depth_exceeds`).

The body (at most `max_body_bytes`) is read here and replayed to the app. Error answers are
JSON `{"detail": ...}` like the API's own, and close the connection when a body was sent.
"""

from __future__ import annotations

import hmac
import json
import re
from array import array
from collections.abc import Awaitable, Callable, MutableMapping
from itertools import accumulate
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_MAX_BODY = 1 << 20
DEFAULT_MAX_DEPTH = 32
PROTECTED = ("/v1", "/openapi.json")
SELF_SERVICE = "/v1/self/"
SELF_SERVICE_METHODS = frozenset({"GET", "HEAD"})

# A JSON string, escapes included (unrolled: linear, no backtracking).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPEN = b"\x01"
_AS_STEPS = bytes.maketrans(b"[]{}", b"\x01\xff\x01\xff")  # as signed bytes: +1, -1


def json_depth_exceeds(body: bytes, limit: int) -> bool:
    """True when the brackets of `body` (strings aside) nest deeper than `limit`.

    No recursion and no Python loop per byte: strings are cut out and everything but brackets
    dropped (C speed), then the running depth is a C-level `accumulate` over +1/-1 bytes
    (about 30 ms for a 1 MiB body of brackets, the worst case). An opener never closed counts
    as open (a recursive parser nests into it); `[` and `{` count alike. Stray closers may
    hide depth after them, but a parser stops at the first one anyway.
    """
    brackets = _STRING.sub(b"", body).translate(_AS_STEPS, _NOT_BRACKETS)
    if len(brackets) <= limit:
        return False  # too few openers to nest deeper
    if _OPEN * (limit + 1) in brackets:
        return True  # the common attack, found without the walk
    return max(accumulate(array("b", brackets))) > limit


def normalise(path: str) -> str:
    parts: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if parts:
                parts.pop()
            continue
        parts.append(segment)
    tail = "/" if path.endswith("/") and parts else ""
    return "/" + "/".join(parts) + tail


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def needs_token(method: str, path: str) -> bool:
    """Whether a request needs the admin token (the rules in the module docstring)."""
    forms = (path, normalise(path))
    protected = any(_under(p, prefix) for p in forms for prefix in PROTECTED)
    if not protected:
        return False
    self_service = all(p.startswith(SELF_SERVICE) for p in forms)
    return not (self_service and method in SELF_SERVICE_METHODS)


class AdminGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str,
        max_body_bytes: int = DEFAULT_MAX_BODY,
        max_json_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        if not token:
            raise ValueError("the admin token must not be empty")
        self.app = app
        self.expected = b"Bearer " + token.encode("utf-8")
        self.max_body = max_body_bytes
        self.max_depth = max_json_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        length_values = [v for k, v in headers if k == b"content-length"]
        chunked = any(k == b"transfer-encoding" for k, _ in headers)
        sends_body = chunked or any(v.strip() not in (b"", b"0") for v in length_values)

        if needs_token(scope["method"], scope["path"]) and not self._authorized(headers):
            await _answer(
                send,
                401,
                "missing or invalid admin token",
                close=sends_body,
                extra=[(b"www-authenticate", b"Bearer")],
            )
            return
        if length_values:
            lengths = {v.strip() for v in length_values}
            if len(lengths) != 1 or not next(iter(lengths)).isdigit():
                await _answer(send, 400, "invalid Content-Length", close=True)
                return
            if int(next(iter(lengths))) > self.max_body:
                await _answer(send, 413, self._too_large(), close=True)
                return
        if not sends_body:
            await self.app(scope, receive, send)
            return
        body = await self._read_body(receive)
        if body is None:
            await _answer(send, 413, self._too_large(), close=True)
            return
        if self._json(headers) and json_depth_exceeds(body, self.max_depth):
            problem = [
                {
                    "loc": ["body"],
                    "msg": f"JSON nested deeper than {self.max_depth} levels",
                    "type": "json_too_deep",
                }
            ]
            await _answer(send, 422, problem, close=True)
            return
        await self.app(scope, _replay(body, receive), send)

    def _authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        given = [v for k, v in headers if k == b"authorization"]
        if len(given) != 1:
            return False
        value = given[0].strip()
        if value[:7].lower() == b"bearer ":
            value = b"Bearer " + value[7:].lstrip()
        return hmac.compare_digest(value, self.expected)

    def _too_large(self) -> str:
        return f"request body larger than {self.max_body} bytes"

    @staticmethod
    def _json(headers: list[tuple[bytes, bytes]]) -> bool:
        types = [v.lower() for k, v in headers if k == b"content-type"]
        return not types or any(b"json" in t for t in types)

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, or None once it passes the cap (reading stops there)."""
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # http.disconnect: the app will see an empty body and a gone client
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            parts.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(parts)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _answer(
    send: Send,
    status: int,
    detail: Any,
    *,
    close: bool,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    payload = json.dumps({"detail": detail}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *(extra or []),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


__all__ = ["AdminGuard", "json_depth_exceeds", "needs_token", "normalise"]
