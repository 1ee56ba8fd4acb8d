"""The proxy tester: one request through the gateway's own proxy port, as a client would.

It goes through the full data path (authentication, admission, selection, relay), so what it
shows is what a client gets: the status and, on failure, the exact `X-SOAX-Error` code. The
destination policy of the proxy applies (private targets are refused unless allowed), so the
tester reaches nothing a package key could not. The key is used for this one request and is
never echoed back, logged or kept.

The exit address is what the target reports: a JSON body with `ip` (an ipinfo-style checker,
tests' origin `/ip`), or else the first IP address in a short text body. The node is the one
whose address or bind address is that exit address, if any.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from exitgate.admin.dashboard.core import Parts

TIMEOUT = 15.0
MAX_BODY = 2000
_IP = re.compile(r"[0-9a-fA-F:.]{3,45}")


@dataclass(frozen=True, slots=True)
class TestResult:
    ok: bool
    status: int = 0
    error_code: str = ""
    error_detail: str = ""
    exit_ip: str = ""
    node_id: str = ""
    elapsed_ms: float = 0.0
    body: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_url(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("the URL must be http:// or https:// with a host")
    return url.strip()


def _exit_ip(body: str) -> str:
    try:
        found = json.loads(body)
        if isinstance(found, dict) and isinstance(found.get("ip"), str):
            return str(found["ip"])
    except ValueError:
        pass
    for candidate in _IP.findall(body[:500]):
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            continue
    return ""


async def run(parts: Parts, url: str, rules: str, key: str) -> TestResult:
    """ValueError for a bad URL; every other outcome is a `TestResult`."""
    target = check_url(url)
    host, port = parts.proxy
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    user = quote(rules.strip() or "country-any", safe="")
    proxy = f"http://{user}:{quote(key.strip(), safe='')}@{host}:{port}"
    started = time.perf_counter()
    try:
        async with httpx.AsyncClient(proxy=proxy, timeout=TIMEOUT, verify=False) as client:  # noqa: S501 - a tester shows what the exit reaches
            response = await client.get(target)
    except httpx.ProxyError as exc:  # a CONNECT refused by the gateway: status in the text
        return TestResult(False, error_detail=str(exc), elapsed_ms=_ms(started))
    except httpx.HTTPError as exc:
        detail = f"{type(exc).__name__}: {exc}"
        return TestResult(False, error_detail=detail, elapsed_ms=_ms(started))
    elapsed = _ms(started)
    code = response.headers.get("x-soax-error", "")
    body = response.text[:MAX_BODY]
    if code:
        detail = response.headers.get("x-soax-detail", "")
        return TestResult(False, response.status_code, code, detail, elapsed_ms=elapsed, body=body)
    exit_ip = _exit_ip(body)
    node_id = ""
    if exit_ip:
        for node in await parts.service.list_nodes():
            if exit_ip in (node.ip, node.bind_address):
                node_id = node.id
                break
    return TestResult(
        200 <= response.status_code < 400,
        response.status_code,
        exit_ip=exit_ip,
        node_id=node_id,
        elapsed_ms=elapsed,
        body=body,
    )


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
