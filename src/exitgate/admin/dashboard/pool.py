"""Nodes, agents, live sessions, coverage and the proxy tester pages."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from exitgate.admin.dashboard import tester, views
from exitgate.admin.dashboard.auth import session_of
from exitgate.admin.dashboard.core import Pages, Parts
from exitgate.admin.dashboard.forms import Form, back, field, opt_int, problem
from exitgate.admin.schemas import NodeCreate
from exitgate.model import Network, NodeAttrs, NodeKind, NodeState
from exitgate.services import NodeFilter
from exitgate.store.base import NewNode, NodeUpdate

FILTERS = ("kind", "country", "city", "network", "state")


def _filters(request: Request) -> tuple[NodeFilter, dict[str, str], str]:
    """The node filter from the query; an unknown value is reported, not a 500."""
    q = {name: request.query_params.get(name, "").strip().lower() for name in FILTERS}
    try:
        f = NodeFilter(
            kind=NodeKind(q["kind"]) if q["kind"] else None,
            state=NodeState(q["state"]) if q["state"] else None,
            network=Network(q["network"]) if q["network"] else None,
            country=q["country"] or None,
            city=q["city"].replace(" ", "_") or None,
        )
    except ValueError as exc:
        return NodeFilter(), q, str(exc)
    return f, q, ""


def routes(parts: Parts, pages: Pages) -> APIRouter:
    r = APIRouter(include_in_schema=False)

    # -- nodes -----------------------------------------------------------------------------------
    @r.get("/nodes")
    async def nodes(request: Request) -> Response:
        f, q, bad = _filters(request)
        all_nodes = await views.nodes(parts)
        rows = await views.nodes(parts, f)
        choices = {
            name: sorted({str(n[name]) for n in all_nodes if n[name]})
            for name in ("country", "city")
        }
        context: dict[str, Any] = {
            "rows": rows,
            "q": q,
            "bad": bad,
            "choices": choices,
            "kinds": [k.value for k in NodeKind],
            "states": [s.value for s in NodeState],
            "networks": [n.value for n in Network],
        }
        template = "_nodes_table.html" if request.headers.get("hx-request") else "nodes.html"
        return pages.render(request, template, context)

    @r.post("/nodes")
    async def add_node(request: Request, form: Form) -> Response:
        session = session_of(request)
        kind = field(form, "kind")
        try:
            given: dict[str, Any] = {
                "kind": kind,
                "country": field(form, "country"),
                "city": field(form, "city"),
                "isp": field(form, "isp"),
                "asn": opt_int(form, "asn") or 0,
                "network": field(form, "network") or "dc",
                "ip": field(form, "ip"),
            }
            if kind == "upstream":
                given["url"] = field(form, "url")
            else:
                given["bind_address"] = field(form, "bind_address")
            body = NodeCreate.model_validate(given)
        except (ValueError, ValidationError) as exc:
            session.say(problem(exc), "error")
            return back("/nodes")
        new = NewNode(
            kind=NodeKind(body.kind),
            attrs=NodeAttrs(
                country=body.country,
                region=body.region,
                city=body.city,
                isp=body.isp,
                asn=body.asn,
                network=body.network,
            ),
            state=body.state,
            url=body.url or "",
            bind_address=body.bind_address or "",
            ip=body.ip,
        )
        node = await parts.service.create_node(new)
        session.say(f"node {node.id} added")
        return back("/nodes")

    @r.post("/nodes/{node_id}/state")
    async def set_state(request: Request, node_id: str, form: Form) -> Response:
        session = session_of(request)
        try:
            state = NodeState(field(form, "state"))
        except ValueError:
            session.say("state: one of online, offline, draining", "error")
            return back("/nodes")
        await parts.service.update_node(node_id, NodeUpdate(state=state))
        session.say(f"node {node_id} is {state.value}")
        return back("/nodes")

    @r.post("/nodes/{node_id}/delete")
    async def delete_node(request: Request, node_id: str, form: Form) -> Response:
        await parts.service.delete_node(node_id)
        session_of(request).say(f"node {node_id} deleted")
        return back("/nodes")

    # -- agents, sessions, coverage ----------------------------------------------------------------
    @r.get("/agents")
    async def agents(request: Request) -> Response:
        return pages.render(request, "agents.html", {"rows": views.agents(parts)})

    @r.get("/sessions")
    async def sessions(request: Request) -> Response:
        rows = await views.live_sessions(parts)
        return pages.render(request, "sessions.html", {"rows": rows})

    @r.post("/sessions/{package_id}/{session_id}/end")
    async def end_session(
        request: Request, package_id: str, session_id: str, form: Form
    ) -> Response:
        ended = await parts.sessions.end(package_id, session_id)
        session_of(request).say(
            f"session {session_id} ended" if ended else f"session {session_id} was already gone"
        )
        return back("/sessions")

    @r.get("/coverage")
    async def coverage(request: Request) -> Response:
        return pages.render(request, "coverage.html", {"cov": await views.coverage(parts)})

    # -- proxy tester ----------------------------------------------------------------------------
    @r.get("/tester")
    async def tester_page(request: Request) -> Response:
        context = {"result": None, "url": "", "rules": "country-any", "error": ""}
        return pages.render(request, "tester.html", context)

    @r.post("/tester")
    async def run_tester(request: Request, form: Form) -> Response:
        url, rules = field(form, "url"), field(form, "rules")
        context: dict[str, Any] = {"result": None, "url": url, "rules": rules, "error": ""}
        try:
            context["result"] = await tester.run(parts, url, rules, field(form, "key"))
        except ValueError as exc:
            context["error"] = str(exc)
        return pages.render(request, "tester.html", context)

    return r
