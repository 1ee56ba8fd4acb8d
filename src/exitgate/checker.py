"""`exitgate checker`: tells a caller which address (and where) it comes from (SPEC 8).

    GET /api/ipinfo  ->  {"status": true, "reason": "",
                          "data": {"ip", "country_code", "country_name", "region", "city",
                                   "isp", "carrier"}}

Users point a client through the gateway at it to see the exit a rule gave them, or call it
directly to learn the public address to put on a package's allowlist.

Geo comes from a MaxMind DB file when one is configured (the optional `maxminddb` package
reads it); without one every field but `ip` is "". The record layouts understood are
GeoIP2/GeoLite2 City or Country (`country.iso_code`, `subdivisions[0].names.en`,
`city.names.en`), GeoIP2 ISP / GeoLite2 ASN (`isp`, `autonomous_system_organization`,
mobile codes) and flat ones (`country_code`, `region`, `city`, `isp`, `carrier`). An address
the file does not cover (or an IPv6 address in an IPv4-only file) answers empty fields.

`X-Forwarded-For` is believed only with `trust_forwarded=True` (the checker behind one reverse
proxy): then its rightmost valid address, the one that proxy appended, is the caller. The
leftmost entries are whatever the client chose to send.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final, Protocol

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from exitgate.geo import country_name

_FIELDS: Final = ("country_code", "country_name", "region", "city", "isp", "carrier")
_NO_STORE: Final = {"Cache-Control": "no-store"}  # the answer depends on who asks


class _Reader(Protocol):
    def get(self, ip_address: str) -> Any: ...
    def close(self) -> None: ...


def _open_mmdb(path: str) -> _Reader:
    try:
        import maxminddb
    except ImportError as exc:  # optional dependency: only needed with a geo file
        raise RuntimeError(
            "the checker's MMDB file needs the 'maxminddb' package (pip install maxminddb)"
        ) from exc
    reader: _Reader = maxminddb.open_database(path)
    return reader


def _dig(record: Any, *path: str | int) -> str:
    """The string at `path` inside a decoded MMDB record, or ""."""
    value = record
    for step in path:
        if isinstance(step, int):
            if not isinstance(value, list) or len(value) <= step:
                return ""
        elif not isinstance(value, Mapping):
            return ""
        value = value[step] if isinstance(step, int) else value.get(step)
    return value if isinstance(value, str) else ""


def _first(record: Any, *paths: tuple[str | int, ...]) -> str:
    for path in paths:
        if text := _dig(record, *path):
            return text
    return ""


def geo_fields(record: Any) -> dict[str, str]:
    """The `data` fields (without `ip`) from one MMDB record; "" for whatever is missing."""
    code = _first(
        record,
        ("country", "iso_code"),
        ("registered_country", "iso_code"),
        ("country_code",),
        ("country",),  # flat layouts put the code itself here
    ).upper()
    isp = _first(
        record, ("isp",), ("traits", "isp"), ("autonomous_system_organization",),
        ("organization",), ("as_name",),
    )
    mobile = bool(record.get("mobile_network_code")) if isinstance(record, Mapping) else False
    carrier = _first(record, ("carrier",), ("traits", "mobile_carrier")) or (isp if mobile else "")
    return {
        "country_code": code if len(code) == 2 else "",
        "country_name": _first(
            record, ("country", "names", "en"), ("registered_country", "names", "en"),
            ("country_name",),
        ) or country_name(code),
        "region": _first(record, ("subdivisions", 0, "names", "en"), ("region",)),
        "city": _first(record, ("city", "names", "en"), ("city",)),
        "isp": isp,
        "carrier": carrier,
    }


def _caller_ip(request: Request, trust_forwarded: bool) -> str:
    peer = request.client.host if request.client else ""
    if trust_forwarded:
        for value in reversed(request.headers.getlist("x-forwarded-for")):
            for hop in reversed(value.split(",")):
                if (address := _normalise(hop.strip())) is not None:
                    return address
    return _normalise(peer) or peer


def _normalise(text: str) -> str | None:
    """A canonical address string (IPv4-mapped IPv6 shown as IPv4), or None if not an IP."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _failure(status: int, reason: str) -> JSONResponse:
    return JSONResponse(
        {"status": False, "reason": reason, "data": None}, status_code=status, headers=_NO_STORE
    )


async def _http_error(_request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException) and exc.status_code == 405:
        return _failure(405, "method not allowed")
    return _failure(404, "not found")


def create_checker_app(
    mmdb_path: str | None = None, *, trust_forwarded: bool = False
) -> ASGIApp:
    """The checker as an ASGI app. A bad `mmdb_path` fails here, before anything listens."""
    reader = _open_mmdb(mmdb_path) if mmdb_path else None

    def lookup(ip: str) -> dict[str, str]:
        record = None
        if reader is not None:
            # ValueError: not an address, or IPv6 in an IPv4-only file. Either way: no geo.
            with contextlib.suppress(ValueError):
                record = reader.get(ip)
        if record is None:
            return dict.fromkeys(_FIELDS, "")
        return geo_fields(record)

    async def ipinfo(request: Request) -> Response:
        ip = _caller_ip(request, trust_forwarded)
        return JSONResponse(
            {"status": True, "reason": "", "data": {"ip": ip, **lookup(ip)}}, headers=_NO_STORE
        )

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if reader is not None:
                reader.close()

    return Starlette(
        routes=[Route("/api/ipinfo", ipinfo, methods=["GET"])],
        exception_handlers={404: _http_error, 405: _http_error},
        lifespan=lifespan,
    )


async def serve_checker(
    host: str, port: int, mmdb_path: str | None = None, *, trust_forwarded: bool = False
) -> None:
    """Run the checker on the current event loop until cancelled (or SIGINT/SIGTERM)."""
    app = create_checker_app(mmdb_path, trust_forwarded=trust_forwarded)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # leave the process's logging alone
        access_log=False,
        proxy_headers=False,  # uvicorn would trust X-Forwarded-For from loopback; we decide
        lifespan="on",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    try:
        await server.serve()
    except asyncio.CancelledError:
        # uvicorn stops cleanly only through should_exit; a cancelled serve() would leave the
        # listening socket and the lifespan open. Shut down, then let the cancellation go on.
        if server.started:
            await server.shutdown()
        raise
