"""The ipinfo checker (SPEC 8): in-process through httpx's ASGI transport, and over a real
loopback socket through uvicorn."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from exitgate.checker import create_checker_app, geo_fields, serve_checker

EMPTY_GEO = {
    "country_code": "",
    "country_name": "",
    "region": "",
    "city": "",
    "isp": "",
    "carrier": "",
}

CITY_RECORD = {
    "country": {"iso_code": "US", "names": {"en": "United States", "de": "USA"}},
    "subdivisions": [{"iso_code": "CA", "names": {"en": "California"}}],
    "city": {"names": {"en": "Los Angeles"}},
    "isp": "Verizon Wireless",
    "mobile_country_code": "310",
    "mobile_network_code": "004",
}


@pytest.fixture(scope="module")
def mmdb_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    mmdb_writer = pytest.importorskip("mmdb_writer")
    netaddr = pytest.importorskip("netaddr")
    writer = mmdb_writer.MMDBWriter(ip_version=4, database_type="GeoIP2-City")
    writer.insert_network(netaddr.IPSet(["127.0.0.0/8"]), CITY_RECORD)
    writer.insert_network(
        netaddr.IPSet(["192.0.2.0/24"]),  # TEST-NET-1: only ever named in a header here
        {"country_code": "de", "region": "Bavaria", "city": "Munich", "isp": "Telekom"},
    )
    path = tmp_path_factory.mktemp("geo") / "test.mmdb"
    writer.to_db_file(str(path))
    return str(path)


async def get(app: Any, path: str = "/api/ipinfo", **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://checker") as client:
        return await client.get(path, **kwargs)


async def test_ipinfo_without_geo_names_the_caller_only() -> None:
    response = await get(create_checker_app())
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert response.json() == {
        "status": True,
        "reason": "",
        "data": {"ip": "203.0.113.7", **EMPTY_GEO},
    }


async def test_unknown_path_is_a_json_404() -> None:
    response = await get(create_checker_app(), "/api/nothing")
    assert response.status_code == 404
    assert response.json() == {"status": False, "reason": "not found", "data": None}


async def test_wrong_method_is_a_json_405() -> None:
    transport = httpx.ASGITransport(app=create_checker_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://checker") as client:
        response = await client.post("/api/ipinfo")
    assert response.status_code == 405
    assert response.json() == {"status": False, "reason": "method not allowed", "data": None}


async def test_forwarded_for_is_ignored_unless_trusted() -> None:
    headers = {"X-Forwarded-For": "198.51.100.1, 192.0.2.9"}
    untrusted = await get(create_checker_app(), headers=headers)
    assert untrusted.json()["data"]["ip"] == "203.0.113.7"
    trusted = await get(create_checker_app(trust_forwarded=True), headers=headers)
    # the rightmost hop is the one our reverse proxy appended; the rest is client-chosen
    assert trusted.json()["data"]["ip"] == "192.0.2.9"


async def test_trusted_forwarded_for_skips_garbage_and_falls_back_to_the_peer() -> None:
    app = create_checker_app(trust_forwarded=True)
    skipped = await get(app, headers={"X-Forwarded-For": "198.51.100.1, not-an-ip"})
    assert skipped.json()["data"]["ip"] == "198.51.100.1"
    garbage = await get(app, headers={"X-Forwarded-For": "unknown"})
    assert garbage.json()["data"]["ip"] == "203.0.113.7"
    mapped = await get(app, headers={"X-Forwarded-For": "::ffff:198.51.100.2"})
    assert mapped.json()["data"]["ip"] == "198.51.100.2"


async def test_geo_from_an_mmdb_file(mmdb_file: str) -> None:
    app = create_checker_app(mmdb_file, trust_forwarded=True)
    city = await get(app, headers={"X-Forwarded-For": "127.0.0.1"})
    assert city.json()["data"] == {
        "ip": "127.0.0.1",
        "country_code": "US",
        "country_name": "United States",
        "region": "California",
        "city": "Los Angeles",
        "isp": "Verizon Wireless",
        "carrier": "Verizon Wireless",  # mobile network codes: the ISP is a carrier
    }
    flat = await get(app, headers={"X-Forwarded-For": "192.0.2.200"})
    assert flat.json()["data"] == {
        "ip": "192.0.2.200",
        "country_code": "DE",  # upper, whatever the file says
        "country_name": "Germany",  # from the ISO table when the file has no name
        "region": "Bavaria",
        "city": "Munich",
        "isp": "Telekom",
        "carrier": "",
    }
    uncovered = await get(app)  # 203.0.113.7 is not in the file
    assert uncovered.json()["data"] == {"ip": "203.0.113.7", **EMPTY_GEO}
    ipv6 = await get(app, headers={"X-Forwarded-For": "2001:db8::1"})  # IPv4-only file
    assert ipv6.json()["data"] == {"ip": "2001:db8::1", **EMPTY_GEO}


def test_a_missing_mmdb_file_fails_at_creation(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        create_checker_app(str(tmp_path / "absent.mmdb"))


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({}, EMPTY_GEO),
        ("not a map", EMPTY_GEO),
        ({"country": {"iso_code": "usa"}}, EMPTY_GEO),  # not alpha-2: dropped
        (
            {"registered_country": {"iso_code": "FR"}, "autonomous_system_organization": "OVH"},
            {**EMPTY_GEO, "country_code": "FR", "country_name": "France", "isp": "OVH"},
        ),
        (
            {"subdivisions": [], "city": {"names": {"fr": "Paris"}}, "carrier": "Orange"},
            {**EMPTY_GEO, "carrier": "Orange"},
        ),
    ],
)
def test_geo_fields_tolerates_partial_records(record: Any, expected: dict[str, str]) -> None:
    assert geo_fields(record) == expected


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_listening(port: int) -> None:
    for _ in range(200):
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.02)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise AssertionError(f"checker never listened on {port}")


@pytest.mark.parametrize(
    ("trust", "ip", "country"),
    [(False, "127.0.0.1", "US"), (True, "192.0.2.1", "DE")],
)
async def test_served_over_a_real_socket_until_cancelled(
    mmdb_file: str, trust: bool, ip: str, country: str
) -> None:
    port = free_port()
    async with asyncio.TaskGroup() as group:
        server = group.create_task(
            serve_checker("127.0.0.1", port, mmdb_file, trust_forwarded=trust)
        )
        await wait_listening(port)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            info = await client.get("/api/ipinfo", headers={"X-Forwarded-For": "192.0.2.1"})
            missing = await client.get("/")
        server.cancel()
    assert server.cancelled()
    assert info.status_code == 200
    body = info.json()
    assert body["status"] is True
    assert body["data"]["ip"] == ip  # untrusted: uvicorn must not apply the header either
    assert body["data"]["country_code"] == country
    assert missing.status_code == 404
    assert missing.json() == {"status": False, "reason": "not found", "data": None}
    with pytest.raises(OSError):  # the listener is gone after cancellation
        await asyncio.open_connection("127.0.0.1", port)
