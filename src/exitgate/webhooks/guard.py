"""Where webhooks may go: http(s) URLs whose every address is public, unless allowed.

Checked when an endpoint is created (so a mistake is a 422 at once) and again at every
delivery, after a fresh DNS lookup: a name may be re-pointed at 127.0.0.1 or at the
metadata service later. Every address the name resolves to must be public (not private,
loopback, link-local, multicast, reserved, unspecified, nor an IPv4-mapped one of those),
and the delivery then connects to one of exactly those checked addresses (the worker pins
it, see `delivery`), so a second lookup cannot swap in another (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class DestinationRefused(ValueError):
    """The URL may not receive webhooks; the message says why."""


@dataclass(frozen=True, slots=True)
class Destination:
    scheme: str
    host: str  # as written in the URL (a name or a literal address)
    port: int
    addresses: tuple[str, ...]  # resolved and checked, in resolver order


def check_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an acceptable URL; DestinationRefused otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise DestinationRefused(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise DestinationRefused("the URL must start with http:// or https://")
    if not parts.hostname:
        raise DestinationRefused("the URL has no host")
    if parts.username or parts.password:
        raise DestinationRefused("the URL must not carry credentials")
    if parts.fragment:
        raise DestinationRefused("the URL must not carry a #fragment")
    default = 443 if parts.scheme == "https" else 80
    return parts.scheme, parts.hostname, port or default


def is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


async def resolve(url: str, allow_private: bool) -> Destination:
    """Resolve the URL's host and check every address; DestinationRefused on any doubt."""
    scheme, host, port = check_url(url)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        found = [literal]
    else:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise DestinationRefused(f"cannot resolve {host}: {exc.strerror or exc}") from None
        found = []
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).partition("%")[0])
            if address not in found:
                found.append(address)
        if not found:
            raise DestinationRefused(f"{host} has no address")
    if not allow_private:
        for address in found:
            if not is_public(address):
                raise DestinationRefused(
                    f"{host} resolves to {address}, a private or loopback address "
                    "(set [webhooks] allow_private = true to allow it)"
                )
    return Destination(scheme, host, port, tuple(str(a) for a in found))
