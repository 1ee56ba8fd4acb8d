"""A real gateway for end-to-end tests, running in a thread with its own event loop.

Tests drive it with real, blocking clients (curl, requests, httpx) from the test thread and
seed it through its own services (`gw.call(gw.service.create_org(...))`), exactly as the admin
API would.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import uvloop

from exitgate.app import Bound, Gateway
from exitgate.model import Network, Node, NodeAttrs, NodeKind, Package
from exitgate.services import AccountService
from exitgate.settings import Settings, load_settings
from exitgate.store.base import NewNode, NewPackage

T = TypeVar("T")
TOKEN = "test-admin-token"


class GatewayThread:
    def __init__(self, tmp: Path, **sections: dict[str, Any]) -> None:
        overrides: dict[str, dict[str, Any]] = {
            "proxy": {"listen": "127.0.0.1:0", "handshake_timeout": 3.0},
            "admin": {"listen": "127.0.0.1:0", "token": TOKEN},
            "hub": {"listen": "127.0.0.1:0", "token": "test-hub-token"},
            "store": {"url": f"sqlite:///{tmp / 'exitgate.db'}"},
            "exit": {"allow_private": True, "connect_timeout": 3.0, "response_timeout": 5.0},
            # set, so no gateway writes a webhooks.key file (a PostgreSQL one: into the cwd)
            "webhooks": {"secret_key": "test-webhook-key"},
        }
        for name, values in sections.items():
            overrides.setdefault(name, {}).update(values)
        self.settings: Settings = load_settings(None, env={}, overrides=overrides)
        self.gateway = Gateway(self.settings)
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.bound: Bound = self.call(self.gateway.start())

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    @property
    def service(self) -> AccountService:
        assert self.gateway.service is not None
        return self.gateway.service

    @property
    def proxy_host(self) -> str:
        return self.bound.proxy[0]

    @property
    def proxy_port(self) -> int:
        return self.bound.proxy[1]

    def proxy_url(self, user: str, key: str, scheme: str = "http") -> str:
        return f"{scheme}://{user}:{key}@{self.proxy_host}:{self.proxy_port}"

    # -- seeding -------------------------------------------------------------------------------
    def org(self, name: str = "acme", credits: float | None = None) -> str:
        return self.call(self.service.create_org(name, credits)).id

    def package(self, org_id: str | None = None, **fields: Any) -> tuple[Package, str]:
        if org_id is None:
            org_id = self.org()
        return self.call(self.service.create_package(NewPackage(org_id=org_id, **fields)))

    def direct_node(
        self,
        bind: str = "",
        country: str = "us",
        city: str = "",
        region: str = "",
        isp: str = "",
        asn: int = 0,
        network: Network = Network.DC,
    ) -> Node:
        attrs = NodeAttrs(country, region, city, isp, asn, network)
        return self.call(
            self.service.create_node(
                NewNode(kind=NodeKind.DIRECT, attrs=attrs, bind_address=bind, ip=bind)
            )
        )

    def upstream_node(self, url: str, country: str = "us", network: Network = Network.DC) -> Node:
        attrs = NodeAttrs(country=country, network=network)
        new = NewNode(kind=NodeKind.UPSTREAM, attrs=attrs, url=url)
        return self.call(self.service.create_node(new))

    def stop(self) -> None:
        try:
            self.call(self.gateway.stop(grace=1.0))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            self.loop.close()


def basic(user: str, key: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()


def raw_exchange(host: str, port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes, half-close, read everything until the gateway closes."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            head, sep, body = b"".join(chunks).partition(b"\r\n\r\n")
            for line in head.split(b"\r\n") if sep else ():
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length" and len(body) >= int(value):
                    return b"".join(chunks)
        return b"".join(chunks)


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body
