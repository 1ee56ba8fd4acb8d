"""A small synchronous client for the admin API (used by the CLI; handy in scripts).

Every non-2xx answer and every transport failure becomes `AdminError(status, message)` with
the API's own message (a 422 lists `field: problem` pairs); status 0 means the API was not
reached. Messages never carry the token. Proxy environment variables are ignored
(`trust_env=False`): the admin API is reached directly, and a stray `HTTP_PROXY` must not
receive the bearer token.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

DEFAULT_ADMIN_URL = "http://127.0.0.1:8090"


class AdminError(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"{status}: {message}" if status else message)


class AdminClient:
    def __init__(
        self,
        base_url: str = DEFAULT_ADMIN_URL,
        token: str = "",
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
            trust_env=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
    ) -> Any:
        """The decoded JSON answer (None for 204); AdminError otherwise."""
        try:
            answer = self._http.request(method, path, json=json, params=params)
        except httpx.HTTPError as exc:
            reason = str(exc) or type(exc).__name__
            where = f"cannot reach the admin API at {self.base_url}"
            raise AdminError(0, f"{where}: {reason}") from None
        if answer.is_success:
            return None if answer.status_code == 204 or not answer.content else answer.json()
        raise AdminError(answer.status_code, _message(answer))

    # organizations

    def create_org(self, name: str, credits: float | None = None) -> dict[str, Any]:
        body = {"name": name, "credits": credits}
        org: dict[str, Any] = self.request("POST", "/v1/orgs", json=body)
        return org

    def list_orgs(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.request("GET", "/v1/orgs")
        return found

    def get_org(self, org_id: str) -> dict[str, Any]:
        org: dict[str, Any] = self.request("GET", f"/v1/orgs/{_seg(org_id)}")
        return org

    def update_org(self, org_id: str, **fields: Any) -> dict[str, Any]:
        org: dict[str, Any] = self.request("PATCH", f"/v1/orgs/{_seg(org_id)}", json=fields)
        return org

    # packages

    def create_package(self, org_id: str, **fields: Any) -> dict[str, Any]:
        """The new package, with its `key` (shown this once)."""
        package: dict[str, Any] = self.request(
            "POST", "/v1/packages", json={"org_id": org_id, **fields}
        )
        return package

    def list_packages(self, org_id: str | None = None) -> list[dict[str, Any]]:
        params = {"org_id": org_id} if org_id else None
        found: list[dict[str, Any]] = self.request("GET", "/v1/packages", params=params)
        return found

    def get_package(self, package_id: str) -> dict[str, Any]:
        package: dict[str, Any] = self.request("GET", f"/v1/packages/{_seg(package_id)}")
        return package

    def update_package(self, package_id: str, **fields: Any) -> dict[str, Any]:
        path = f"/v1/packages/{_seg(package_id)}"
        package: dict[str, Any] = self.request("PATCH", path, json=fields)
        return package

    def rotate_key(self, package_id: str) -> str:
        """The new key; the old one fails at once."""
        answer = self.request("POST", f"/v1/packages/{_seg(package_id)}/key")
        return str(answer["key"])

    def package_usage(
        self,
        package_id: str,
        since: str | None = None,
        until: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Hourly buckets, newest first; `since`/`until` are ISO 8601 (UTC without a zone)."""
        params = {
            k: v for k, v in (("since", since), ("until", until), ("limit", limit)) if v is not None
        }
        path = f"/v1/packages/{_seg(package_id)}/usage"
        found: list[dict[str, Any]] = self.request("GET", path, params=params or None)
        return found

    def package_errors(self, package_id: str) -> list[dict[str, Any]]:
        """The recent-errors log, newest first: {time, code, detail, protocol, client, target}."""
        path = f"/v1/packages/{_seg(package_id)}/errors"
        found: list[dict[str, Any]] = self.request("GET", path)
        return found

    # nodes

    def create_node(self, kind: str, **fields: Any) -> dict[str, Any]:
        node: dict[str, Any] = self.request("POST", "/v1/nodes", json={"kind": kind, **fields})
        return node

    def list_nodes(self, **filters: Any) -> list[dict[str, Any]]:
        params = {k: v for k, v in filters.items() if v is not None}
        found: list[dict[str, Any]] = self.request("GET", "/v1/nodes", params=params)
        return found

    def get_node(self, node_id: str) -> dict[str, Any]:
        node: dict[str, Any] = self.request("GET", f"/v1/nodes/{_seg(node_id)}")
        return node

    def update_node(self, node_id: str, **fields: Any) -> dict[str, Any]:
        node: dict[str, Any] = self.request("PATCH", f"/v1/nodes/{_seg(node_id)}", json=fields)
        return node

    def delete_node(self, node_id: str) -> None:
        self.request("DELETE", f"/v1/nodes/{_seg(node_id)}")

    # sessions

    def list_sessions(self, package_id: str) -> list[dict[str, Any]]:
        """A package's live sessions, oldest first: {session, node_id, rules, age, ...}."""
        params = {"package_id": package_id}
        found: list[dict[str, Any]] = self.request("GET", "/v1/sessions", params=params)
        return found

    def end_session(self, package_id: str, session_id: str) -> None:
        """Forget a session now; AdminError 404 when it is not live."""
        self.request("DELETE", f"/v1/sessions/{_seg(package_id)}/{_seg(session_id)}")

    # bans (issue 13)

    def list_bans(self, package_id: str) -> list[dict[str, Any]]:
        """A package's live exit bans: {domain, node_id, until, expires_in, reason, ...}."""
        found: list[dict[str, Any]] = self.request("GET", f"/v1/packages/{_seg(package_id)}/bans")
        return found

    def add_ban(self, package_id: str, domain: str, node_id: str, ttl: int) -> dict[str, Any]:
        body = {"domain": domain, "node_id": node_id, "ttl": ttl}
        ban: dict[str, Any] = self.request(
            "POST", f"/v1/packages/{_seg(package_id)}/bans", json=body
        )
        return ban

    def lift_bans(
        self, package_id: str, domain: str | None = None, node_id: str | None = None
    ) -> int:
        """Lift bans (all, a domain's, or one); how many were lifted."""
        path = f"/v1/packages/{_seg(package_id)}/bans"
        if domain is not None:
            path += f"/{_seg(domain)}"
            if node_id is not None:
                path += f"/{_seg(node_id)}"
        elif node_id is not None:
            raise ValueError("name the domain to lift one exit's ban")
        answer: dict[str, int] = self.request("DELETE", path)
        return answer["lifted"]


def _seg(text: str) -> str:
    """An id as one path segment: `../x` or `..` must not walk to another endpoint."""
    return quote(text, safe="").replace(".", "%2E") if text in (".", "..") else quote(text, safe="")


def _message(answer: httpx.Response) -> str:
    try:
        body = answer.json()
    except ValueError:
        return answer.reason_phrase or f"HTTP {answer.status_code}"
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if not isinstance(item, dict):
                continue
            loc = [str(x) for x in item.get("loc", ()) if x not in ("body", "query", "path")]
            parts.append(f"{'.'.join(loc) or 'body'}: {item.get('msg', 'invalid')}")
        if parts:
            return "; ".join(parts)
    return answer.reason_phrase or f"HTTP {answer.status_code}"
