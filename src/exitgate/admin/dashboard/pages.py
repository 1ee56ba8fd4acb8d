"""Log-in, overview, packages and organizations pages.

Every change is a POST of a form carrying the session's CSRF token (`checked_form`), answered
with a redirect back to the page (post/redirect/get) and a flash message; a bad value is a
flash naming the field, never a traceback. The one exception is key rotation: the new key is
shown once in the answer itself (no redirect, `no-store`), as the API returns it once.
"""

from __future__ import annotations

import hmac
import math
import secrets
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import ValidationError

from exitgate.admin.dashboard import views
from exitgate.admin.dashboard.auth import (
    COOKIE,
    LOGIN_COOKIE,
    SessionBook,
    cookie_args,
    cookies_of,
    session_of,
)
from exitgate.admin.dashboard.core import Pages, Parts
from exitgate.admin.dashboard.forms import Form, back, field, opt_float, opt_int, problem
from exitgate.admin.schemas import OrgCreate, PackageCreate, PackagePatch
from exitgate.model import Limits, PackageStatus
from exitgate.store.base import NewPackage, NotFound, PackageUpdate

LIMIT_FIELDS = ("rps_limit", "concurrency_limit", "traffic_limit_bytes")


def routes(parts: Parts, pages: Pages, book: SessionBook, token: str) -> APIRouter:
    r = APIRouter(include_in_schema=False)
    expected = token.encode()

    # -- log-in ----------------------------------------------------------------------------------
    @r.get("/login")
    async def login_page(request: Request) -> Response:
        # Keep a nonce the browser already holds: a second tab (or any request redirected
        # here) must not invalidate the form of the first.
        held = cookies_of(request.scope).get(LOGIN_COOKIE, "")
        nonce = held if len(held) == 32 else secrets.token_urlsafe(24)
        response = pages.render(request, "login.html", {"nonce": nonce, "failed": False})
        response.set_cookie(LOGIN_COOKIE, nonce, **cookie_args(request, 600))
        return response

    @r.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form()
        nonce = cookies_of(request.scope).get(LOGIN_COOKIE, "")
        given_nonce = field(form, "nonce")
        if not nonce or not hmac.compare_digest(given_nonce.encode(), nonce.encode()):
            return HTMLResponse("missing or wrong CSRF token\n", status_code=403)
        if not hmac.compare_digest(field(form, "token").encode(), expected):
            fresh = secrets.token_urlsafe(24)
            context = {"nonce": fresh, "failed": True}
            refused = pages.render(request, "login.html", context, status=401)
            refused.set_cookie(LOGIN_COOKIE, fresh, **cookie_args(request, 600))
            return refused
        session = book.open()
        response = back("/")
        response.set_cookie(COOKIE, session.id, **cookie_args(request, book.ttl))
        response.delete_cookie(LOGIN_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    @r.post("/logout")
    async def logout(request: Request, form: Form) -> Response:
        book.close(session_of(request).id)
        response = back("/login")
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    @r.get("/favicon.ico")
    async def favicon() -> Response:
        return RedirectResponse("/static/favicon.svg", status_code=301)

    # -- overview --------------------------------------------------------------------------------
    @r.get("/")
    async def overview(request: Request) -> Response:
        cards = await views.overview(parts)
        return pages.render(request, "overview.html", {"cards": cards})

    @r.get("/fragments/cards")
    async def cards(request: Request) -> Response:
        cards = await views.overview(parts)
        return pages.render(request, "_cards.html", {"cards": cards})

    @r.get("/data/history")
    async def history(span: str = "hour") -> Response:
        return JSONResponse(await views.history(parts, span))

    @r.get("/data/packages/{package_id}/usage")
    async def package_usage(package_id: str) -> Response:
        await parts.service.get_package(package_id)
        now = time.time()
        buckets = await parts.usage.buckets(package_id, since=now - 48 * 3600, limit=48)
        buckets = sorted(buckets, key=lambda b: b.hour)
        return JSONResponse(
            {
                "from": int(now - 48 * 3600),
                "to": int(now // 3600 * 3600 + 7200),  # room for the current hour's bars
                "x": [b.hour for b in buckets],
                "bytes_up": [b.bytes_up for b in buckets],
                "bytes_down": [b.bytes_down for b in buckets],
                "requests": [b.requests for b in buckets],
            }
        )

    # -- packages --------------------------------------------------------------------------------
    @r.get("/packages")
    async def packages(request: Request) -> Response:
        rows = []
        for p in await parts.service.list_packages():
            usage = await parts.usage.totals(p.id)
            used = usage["bytes_up"] + usage["bytes_down"]
            rows.append({"p": p, "used": used, "cap": p.limits.traffic_bytes})
        orgs = await parts.service.list_orgs()
        return pages.render(request, "packages.html", {"rows": rows, "orgs": orgs})

    @r.get("/packages/{package_id}")
    async def package(request: Request, package_id: str) -> Response:
        return await _package_page(request, package_id)

    async def _package_page(
        request: Request, package_id: str, new_key: str = "", status: int = 200
    ) -> Response:
        p = await parts.service.get_package(package_id)
        usage = await parts.usage.totals(package_id)
        buckets = await parts.usage.buckets(package_id, limit=168)
        errors: dict[str, int] = {}
        for b in buckets:
            for code, n in b.errors.items():
                errors[code] = errors.get(code, 0) + n
        context: dict[str, Any] = {
            "p": p,
            "usage": usage,
            "used": usage["bytes_up"] + usage["bytes_down"],
            "errors_by_code": sorted(errors.items(), key=lambda kv: -kv[1]),
            "recent": await views.recent_errors(parts, package_id),
            "new_key": new_key,
            "statuses": list(PackageStatus),
        }
        return pages.render(request, "package.html", context, status=status)

    @r.post("/packages/{package_id}/status")
    async def set_status(request: Request, package_id: str, form: Form) -> Response:
        session = session_of(request)
        try:
            status = PackageStatus(field(form, "status"))
        except ValueError:
            session.say("status: one of active, paused, suspended", "error")
            return back(f"/packages/{package_id}")
        await parts.service.update_package(package_id, PackageUpdate(status=status))
        session.say(f"package {package_id} is {status.value}")
        return back(f"/packages/{package_id}")

    @r.post("/packages/{package_id}/limits")
    async def set_limits(request: Request, package_id: str, form: Form) -> Response:
        session = session_of(request)
        try:
            body = PackagePatch.model_validate({n: opt_int(form, n) for n in LIMIT_FIELDS})
        except (ValueError, ValidationError) as exc:
            session.say(problem(exc), "error")
            return back(f"/packages/{package_id}")
        update = PackageUpdate(
            rps_limit=body.rps_limit,
            concurrency_limit=body.concurrency_limit,
            traffic_limit_bytes=body.traffic_limit_bytes,
        )
        await parts.service.update_package(package_id, update)
        session.say("limits saved")
        return back(f"/packages/{package_id}")

    @r.post("/packages/{package_id}/key")
    async def rotate(request: Request, package_id: str, form: Form) -> Response:
        key = await parts.service.rotate_key(package_id)
        return await _package_page(request, package_id, new_key=key)

    # -- organizations ---------------------------------------------------------------------------
    @r.get("/orgs")
    async def orgs(request: Request) -> Response:
        rows = []
        all_packages = await parts.service.list_packages()
        for o in await parts.service.list_orgs():
            count = sum(1 for p in all_packages if p.org_id == o.id)
            rows.append({"o": o, "packages": count})
        return pages.render(request, "orgs.html", {"rows": rows})

    @r.post("/orgs")
    async def create_org(request: Request, form: Form) -> Response:
        session = session_of(request)
        try:
            body = OrgCreate.model_validate(
                {"name": field(form, "name"), "credits": opt_float(form, "credits")}
            )
        except (ValueError, ValidationError) as exc:
            session.say(problem(exc), "error")
            return back("/orgs")
        org = await parts.service.create_org(body.name, body.credits)
        session.say(f"organization {org.id} created")
        return back("/orgs")

    @r.post("/orgs/{org_id}/credits")
    async def add_credits(request: Request, org_id: str, form: Form) -> Response:
        session = session_of(request)
        try:
            delta = opt_float(form, "delta")
            if delta is None or not math.isfinite(delta):
                raise ValueError("delta: a finite number")
        except ValueError as exc:
            session.say(str(exc), "error")
            return back("/orgs")
        org = await parts.service.add_credits(org_id, delta)
        session.say(f"{org.name}: credits now {org.credits}")
        return back("/orgs")

    @r.post("/packages")
    async def create_package(request: Request, form: Form) -> Response:
        session = session_of(request)
        try:
            body = PackageCreate.model_validate(
                {"org_id": field(form, "org_id"), "name": field(form, "name")}
                | {name: opt_int(form, name) for name in LIMIT_FIELDS}
            )
            limits = Limits(
                rps=body.rps_limit,
                concurrency=body.concurrency_limit,
                traffic_bytes=body.traffic_limit_bytes,
            )
            package, key = await parts.service.create_package(
                NewPackage(org_id=body.org_id, name=body.name, limits=limits)
            )
        except (ValueError, ValidationError) as exc:
            session.say(problem(exc), "error")
            return back("/packages")
        except NotFound:
            session.say("org_id: unknown organization", "error")
            return back("/packages")
        return await _package_page(request, package.id, new_key=key, status=201)

    return r


__all__ = ["routes"]
