"""Dialing a target through one exit node.

`dial(node, target)` returns a `Conn` whose far end is the target, or raises:
- `NodeFailure`: the node could not be reached or used (its bind address is gone, the upstream
  proxy refused us or rejected its credentials, the agent is offline). Routing may replace it.
- `GatewayError(TARGET_UNREACHABLE | GATEWAY_TIMEOUT | DISALLOWED)`: the node works, the
  target does not (DNS failure, refused, no route, too slow) or resolves to a forbidden
  address. Never counted against the node.

This is the boundary where foreign exceptions (OSError, gaierror, TimeoutError) become
catalogued errors, in the manner of httpcore's `map_exceptions`.

For upstream HTTP proxies silence is ambiguous (a dead proxy, or a live one still waiting on a
slow target); a proxy that accepted our TCP connection but did not answer the CONNECT in time
is reported as `GATEWAY_TIMEOUT`. A SOCKS5 proxy is a node failure until it has accepted our
credentials, a target problem after.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
from collections.abc import Callable, Coroutine
from functools import lru_cache
from typing import Any

from exitgate.admission import DestinationPolicy
from exitgate.errors import Code, GatewayError, SocksReply
from exitgate.model import Node, NodeKind, Target, parse_ip
from exitgate.net.conn import Conn, ConnectionClosed
from exitgate.net.deadline import within
from exitgate.wire.upstream import (
    HttpConnectClient,
    Socks5Client,
    UpstreamFailure,
    UpstreamProxy,
    parse_proxy_url,
)

_NODE_ERRNOS = frozenset({errno.EADDRNOTAVAIL, errno.EADDRINUSE, errno.EINVAL, errno.EACCES})


class NodeFailure(Exception):
    def __init__(self, node: Node, detail: str) -> None:
        super().__init__(detail)
        self.node = node
        self.detail = detail


AgentDialer = Callable[[Node, Target, float], Coroutine[Any, Any, Conn]]
AddrInfo = list[tuple[Any, ...]]
Resolver = Callable[[str, int, int], Coroutine[Any, Any, AddrInfo]]


async def system_resolver(host: str, port: int, family: int) -> AddrInfo:
    loop = asyncio.get_running_loop()
    return await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)


class Dialer:
    """Opens connections through exits; one per gateway, configured once."""

    def __init__(
        self,
        policy: DestinationPolicy,
        connect_timeout: float,
        agent_dialer: AgentDialer | None = None,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.policy = policy
        self.connect_timeout = connect_timeout
        self.agent_dialer = agent_dialer
        self.resolver = resolver

    async def dial(self, node: Node, target: Target) -> Conn:
        match node.kind:
            case NodeKind.DIRECT:
                return await self._direct(node, target)
            case NodeKind.UPSTREAM:
                return await self._upstream(node, target)
            case NodeKind.AGENT:
                if self.agent_dialer is None:
                    raise NodeFailure(node, "Agent hub is not running")
                return await self.agent_dialer(node, target, self.connect_timeout)

    # -- direct -------------------------------------------------------------------------------
    async def _direct(self, node: Node, target: Target) -> Conn:
        loop = asyncio.get_running_loop()
        family = socket.AF_UNSPEC
        local: tuple[str, int] | None = None
        if node.bind_address:
            bind = ipaddress.ip_address(node.bind_address)
            family = socket.AF_INET if bind.version == 4 else socket.AF_INET6
            local = (node.bind_address, 0)
        try:
            with within(self.connect_timeout):
                addresses = await self._resolve(target, family)
                last: OSError | None = None
                for address in addresses:
                    try:
                        _, conn = await loop.create_connection(
                            Conn, address, target.port, local_addr=local
                        )
                        return conn
                    # kept without its traceback: that holds this frame, which holds
                    # `last`, a cycle only the cyclic GC would free
                    except ConnectionRefusedError as exc:
                        last = exc.with_traceback(None)
                    except OSError as exc:
                        if exc.errno in _NODE_ERRNOS:
                            raise NodeFailure(
                                node, f"Exit cannot use its source address: {exc.strerror}"
                            ) from None
                        last = exc.with_traceback(None)
        except TimeoutError:
            raise GatewayError(
                Code.GATEWAY_TIMEOUT,
                f"Connect to {target.authority} timed out",
                socks_reply=SocksReply.TTL_EXPIRED,
            ) from None
        raise _target_error(target, last)

    async def _resolve(self, target: Target, family: int) -> list[str]:
        ip = parse_ip(target.host)
        if ip is not None:
            if family != socket.AF_UNSPEC and (ip.version == 4) != (family == socket.AF_INET):
                raise GatewayError(
                    Code.TARGET_UNREACHABLE,
                    f"{target.host} is not reachable from this exit's address family",
                    proxy_status="destination_ip_unroutable",
                )
            return [target.host]
        try:
            infos = await self.resolver(target.host, target.port, family)
        except (socket.gaierror, UnicodeError):
            raise GatewayError(
                Code.TARGET_UNREACHABLE,
                f"DNS lookup failed for {target.host}",
                proxy_status="dns_error",
            ) from None
        addresses: list[str] = []
        denied: GatewayError | None = None
        for info in infos:
            address = str(info[4][0])
            if address in addresses:
                continue
            try:
                self.policy.check_address(ipaddress.ip_address(address))
            except GatewayError as exc:
                denied = exc
                continue
            addresses.append(address)
        if not addresses:
            if denied is not None:
                raise denied
            raise GatewayError(
                Code.TARGET_UNREACHABLE,
                f"DNS lookup failed for {target.host}",
                proxy_status="dns_error",
            )
        return addresses

    # -- upstream -----------------------------------------------------------------------------
    async def _upstream(self, node: Node, target: Target) -> Conn:
        try:
            proxy = _proxy(node.url)
        except ValueError as exc:
            raise NodeFailure(node, f"Upstream URL unusable: {exc}") from None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(Conn, proxy.host, proxy.port)
        except (OSError, TimeoutError) as exc:
            raise NodeFailure(node, f"Upstream proxy unreachable: {_reason(exc)}") from None
        try:
            async with asyncio.timeout(self.connect_timeout):
                if proxy.scheme == "http":
                    await _http_handshake(conn, HttpConnectClient(proxy, target))
                else:
                    await _socks_handshake(conn, Socks5Client(proxy, target))
        except UpstreamFailure as exc:
            conn.abort()
            raise _upstream_error(node, target, exc) from None
        except ConnectionClosed:
            conn.abort()
            raise NodeFailure(node, "Upstream proxy closed the connection") from None
        except TimeoutError:
            conn.abort()
            raise GatewayError(
                Code.GATEWAY_TIMEOUT, f"Connect to {target.authority} timed out"
            ) from None
        except BaseException:
            conn.abort()
            raise
        return conn


@lru_cache(maxsize=4096)
def _proxy(url: str) -> UpstreamProxy:
    return parse_proxy_url(url)


async def _http_handshake(conn: Conn, client: HttpConnectClient) -> None:
    conn.write(client.initial())
    while True:
        await conn.read_more()
        data = bytes(conn.buffer)
        conn.buffer.clear()
        if client.receive_data(data):
            conn.buffer += client.trailing_data()
            return


async def _socks_handshake(conn: Conn, client: Socks5Client) -> None:
    conn.write(client.initial())
    while not client.established:
        await conn.read_more()
        data = bytes(conn.buffer)
        conn.buffer.clear()
        out = client.receive_data(data)
        if out:
            conn.write(out)
    conn.buffer += client.trailing_data()


def _upstream_error(node: Node, target: Target, exc: UpstreamFailure) -> Exception:
    match exc.kind:
        case "node":
            return NodeFailure(node, f"Upstream proxy failed: {exc.detail}")
        case "target_refused":
            return GatewayError(
                Code.TARGET_UNREACHABLE,
                f"Connection to {target.authority} refused",
                proxy_status="connection_refused",
                socks_reply=SocksReply.CONNECTION_REFUSED,
            )
        case "target_timeout":
            return GatewayError(Code.GATEWAY_TIMEOUT, f"Connect to {target.authority} timed out")
        case _:
            return GatewayError(
                Code.TARGET_UNREACHABLE, f"{target.authority} unreachable: {exc.detail}"
            )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__


def _target_error(target: Target, exc: OSError | None) -> GatewayError:
    if isinstance(exc, ConnectionRefusedError):
        return GatewayError(
            Code.TARGET_UNREACHABLE,
            f"Connection to {target.authority} refused",
            proxy_status="connection_refused",
            socks_reply=SocksReply.CONNECTION_REFUSED,
        )
    reason = _reason(exc) if exc is not None else "no address"
    return GatewayError(Code.TARGET_UNREACHABLE, f"{target.authority} unreachable: {reason}")
