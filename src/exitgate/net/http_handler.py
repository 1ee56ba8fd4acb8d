"""The HTTP proxy edge: CONNECT tunnels and absolute-form forwarding with keep-alive.

Every request on a kept-alive client connection is authenticated, admitted and routed on its
own. The connection to the target is kept for the next request when that request goes to the
same target through the same node, and dropped otherwise. Request body and response are pumped
concurrently, so `Expect: 100-continue` and early answers (413, 401) work without deadlock.

An error answers with the catalogue's response. The connection stays open after an error only
when nothing of the request is left unread (a forwarded request without a body); a CONNECT
error, or one with a body in flight, closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from exitgate.admission import Admitted
from exitgate.errors import Code, GatewayError, http_error_response
from exitgate.model import Node, Protocol, Target
from exitgate.net.conn import Conn, ConnectionClosed
from exitgate.net.connect import Route
from exitgate.net.context import ProxyContext, uncounted
from exitgate.net.relay import start_tunnel
from exitgate.tasks import spawn
from exitgate.wire.http1 import (
    MALFORMED,
    BodyFramer,
    BodyKind,
    HttpError,
    RequestHead,
    absolute_target,
    connect_target,
    forward_request_head,
    forward_response_head,
    parse_request_head,
    parse_response_head,
    proxy_credentials,
    request_body,
    request_keep_alive,
    response_body,
    response_keep_alive,
)

RESPOND_WITH = ("ip", "country", "region", "city", "isp", "asn", "uid")


@dataclass(slots=True)
class _BodyProgress:
    """Whether a request body went out whole (else the connection cannot carry another)."""

    complete: bool = False


@dataclass(slots=True)
class _Kept:
    node: Node
    target: Target
    conn: Conn


def plain_response(status: int, reason: str, text: str) -> bytes:
    body = f"{text}\n".encode("ascii", "replace")
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("ascii") + body


async def read_request_head(conn: Conn, max_size: int) -> RequestHead:
    buffer = conn.buffer
    while True:
        parsed = parse_request_head(buffer, max_size)
        if parsed is not None:
            head, used = parsed
            conn.consume(used)
            return head
        # Parse again only when a line may have ended: a head trickling in byte by byte
        # must not cost a full re-parse per byte.
        while True:
            seen = len(buffer)
            await conn.read_more()
            if buffer.find(b"\n", max(seen - 1, 0)) != -1 or len(buffer) > max_size:
                break


def credentials(head: RequestHead) -> tuple[str, str] | None:
    found = proxy_credentials(head)
    if found is MALFORMED:
        raise GatewayError(Code.AUTH_FAILED, "Malformed Proxy-Authorization header")
    return found


async def pump_message_body(
    src: Conn, dst: Conn, framer: BodyFramer, tick: Callable[[int], None], head: bytes = b""
) -> None:
    """Relay one message body verbatim from `src` to `dst`, as far as `framer` says; bytes
    past the body stay in `src.buffer` for the next message. ConnectionClosed when either side
    goes away first (for an until-close body that is its end).

    `head` (already counted) goes out with the first body bytes in one write: one send
    syscall per small response instead of two, the largest single cost of forwarding.
    """
    buffer = src.buffer
    if head and (framer.done or not buffer):
        dst.write(head)
        head = b""
    while not framer.done:
        if not buffer:
            await src.read_more()
            continue
        n = framer.feed(buffer)
        if n == len(buffer):
            chunk = bytes(buffer)
            buffer.clear()
        else:
            chunk = bytes(buffer[:n])
            src.consume(n)
        if head:
            chunk = head + chunk
            head = b""
        dst.write(chunk)
        tick(n)
        await dst.drain()


def session_header(route: Route) -> bytes:
    """`X-Exitgate-Session: new|kept|rotated|replaced` for requests with a session."""
    if route.session is None:
        return b""
    return b"X-Exitgate-Session: " + route.session.value.encode() + b"\r\n"


def node_headers(head: RequestHead, node: Node, seen_ip: str) -> str:
    raw = head.get(b"respond-with")
    if not raw:
        return ""
    wanted = {part.strip().lower() for part in raw.decode("latin-1").split(",")}
    values = {
        "ip": node.ip or seen_ip,
        "country": node.attrs.country,
        "region": node.attrs.region,
        "city": node.attrs.city,
        "isp": node.attrs.isp,
        "asn": str(node.attrs.asn) if node.attrs.asn else "",
        "uid": node.id,
    }
    return "".join(
        f"Node-{name.upper() if name in ('ip', 'asn') else name.capitalize()}: {values[name]}\r\n"
        for name in RESPOND_WITH
        if name in wanted
    )


class HttpSession:
    """One client connection speaking HTTP/1.1 to the proxy."""

    def __init__(self, ctx: ProxyContext, conn: Conn) -> None:
        self.ctx = ctx
        self.conn = conn
        self.client = conn.peername[0]
        self.kept: _Kept | None = None
        self.tick_up: Callable[[int], None] = uncounted
        self.tick_down: Callable[[int], None] = uncounted
        self.session_header = b""
        # A client that vanishes mid-forward takes its target connection with it, so a slow
        # target cannot hold the request (and its concurrency slot) until the response timeout.
        conn.on_lost = self._drop_kept

    async def run(self) -> None:
        try:
            first = True
            while True:
                if not first:
                    self.conn.set_deadline(self.ctx.proxy.idle_timeout)
                first = False
                try:
                    head = await read_request_head(self.conn, self.ctx.proxy.max_head_size)
                except HttpError as exc:
                    self.conn.write(plain_response(exc.status, exc.reason, str(exc)))
                    return
                self.conn.clear_deadline()
                if head.method == "CONNECT":
                    await self.tunnel(head)
                    return
                if not await self.forward(head):
                    return
        except ConnectionClosed:
            return
        finally:
            self._drop_kept()
            if not self.conn.spliced:
                self.conn.close()

    def _drop_kept(self) -> None:
        if self.kept is not None:
            self.kept.conn.close()
            self.kept = None

    def _fail(self, err: GatewayError, target: str, protocol: Protocol, *, close: bool) -> None:
        self.ctx.rejected(err, protocol=protocol, client=self.client, target=target)
        self.conn.write(http_error_response(err, close=close))

    # -- CONNECT ----------------------------------------------------------------------------
    async def tunnel(self, head: RequestHead) -> None:
        try:
            target = connect_target(head)
        except HttpError as exc:
            self.conn.write(plain_response(exc.status, exc.reason, str(exc)))
            return
        ctx = self.ctx
        try:
            identity = ctx.admission.authenticate(credentials(head), self.client)
            admitted = await ctx.admission.authorize(identity, Protocol.HTTPS, target)
        except GatewayError as err:
            self._fail(err, target.authority, Protocol.HTTPS, close=True)
            return
        try:
            route = await ctx.connector.connect(admitted)
        except BaseException as exc:
            admitted.lease.release()
            if isinstance(exc, GatewayError):
                self._fail(exc, target.authority, Protocol.HTTPS, close=True)
                return
            raise
        extra = node_headers(head, route.node, route.conn.sockname[0])
        answer = (
            f"HTTP/1.1 200 Connection established\r\n{extra}".encode("latin-1")
            + session_header(route)
            + b"\r\n"
        )
        start_tunnel(ctx, admitted, self.conn, route, answer)  # owns the leases from here

    # -- absolute-form forwarding -----------------------------------------------------------
    async def forward(self, head: RequestHead) -> bool:
        """Forward one request; True when the client connection may carry another."""
        ctx = self.ctx
        try:
            scheme, target, path = absolute_target(head)
            body_kind, body_length = request_body(head)
        except HttpError as exc:
            self.conn.write(plain_response(exc.status, exc.reason, str(exc)))
            return False
        has_body = body_kind is not BodyKind.NONE
        if scheme != "http":
            self.conn.write(
                plain_response(400, "Bad Request", f"Use CONNECT for {scheme}:// targets")
            )
            return False
        try:
            identity = ctx.admission.authenticate(credentials(head), self.client)
            admitted = await ctx.admission.authorize(identity, Protocol.HTTP, target)
        except GatewayError as err:
            # a throttled address has failed too often: its kept-alive connection goes too
            close = has_body or err.code is Code.AUTH_THROTTLED
            self._fail(err, target.authority, Protocol.HTTP, close=close)
            return not close
        try:
            return await self._forward_admitted(head, admitted, path, body_kind, body_length)
        finally:
            admitted.lease.release()  # a forwarded request holds its slot while in flight

    async def _forward_admitted(
        self, head: RequestHead, admitted: Admitted, path: str, body_kind: BodyKind, length: int
    ) -> bool:
        ctx = self.ctx
        target = admitted.target
        has_body = body_kind is not BodyKind.NONE
        try:
            route = await self._upstream_for(admitted)
        except GatewayError as err:
            self._fail(err, target.authority, Protocol.HTTP, close=has_body)
            return not has_body
        try:
            return await self._exchange(
                head, admitted, route, path=path, body_kind=body_kind, length=length
            )
        finally:
            ctx.connector.done(route)

    async def _exchange(
        self,
        head: RequestHead,
        admitted: Admitted,
        route: Route,
        *,
        path: str,
        body_kind: BodyKind,
        length: int,
    ) -> bool:
        """One request and its response over the route; True when the client may go on."""
        ctx = self.ctx
        target = admitted.target
        has_body = body_kind is not BodyKind.NONE
        upstream, node = route.conn, route.node
        self.session_header = session_header(route)

        def stop(err: GatewayError) -> None:
            err.package_id = admitted.package.id
            ctx.rejected(err, protocol=Protocol.HTTP, client=self.client, target=target.authority)
            self.conn.abort()
            upstream.abort()

        meter = ctx.meter(admitted, node, stop)
        self.tick_up, self.tick_down = ctx.ticks(meter)
        body = _BodyProgress()
        try:
            out_head = forward_request_head(head, target, path)
            upstream.write(out_head)
            self.tick_up(len(out_head))
            pump = (
                spawn(self._pump_body(upstream, body_kind, length, body), "http-request-body")
                if has_body
                else None
            )
            try:
                reusable = await self._relay_response(upstream, head, node, target)
            finally:
                if pump is not None:
                    if not pump.done():
                        pump.cancel()  # an early answer: the rest of the body is not wanted
                    with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                        await pump
        except GatewayError as err:
            self._drop_kept()
            self._fail(err, target.authority, Protocol.HTTP, close=True)
            return False
        except ConnectionClosed:
            self._drop_kept()
            return False
        finally:
            if meter is not None:
                meter.close()
        if not reusable or (has_body and not body.complete):
            # unread body bytes would be taken for the next request: close instead
            self._drop_kept()
            return False
        return request_keep_alive(head)

    async def _upstream_for(self, admitted: Admitted) -> Route:
        kept = self.kept
        usable = (
            kept
            if kept is not None
            and not kept.conn.closed
            and not kept.conn.eof
            and kept.target == admitted.target
            else None
        )
        if usable is None:
            self._drop_kept()
        elif (
            admitted.rules.session is None
            and usable.node.id in self.ctx.connector.index
            and self.ctx.connector.index.matches(usable.node, admitted.filters)
        ):
            # No session: any matching node will do, and the open connection is cheapest.
            return Route(usable.conn, usable.node)

        def reuse(node: Node) -> Conn | None:
            return usable.conn if usable is not None and node.id == usable.node.id else None

        route = await self.ctx.connector.connect(admitted, reuse)
        if usable is None or route.conn is not usable.conn:
            self._drop_kept()
            self.kept = _Kept(route.node, admitted.target, route.conn)
        return route

    async def _pump_body(
        self, upstream: Conn, kind: BodyKind, length: int, progress: _BodyProgress
    ) -> None:
        try:
            await pump_message_body(self.conn, upstream, BodyFramer(kind, length), self.tick_up)
        except ConnectionClosed:
            return  # the client is gone: `on_lost` aborts the target side
        progress.complete = True

    async def _relay_response(
        self, upstream: Conn, request: RequestHead, node: Node, target: Target
    ) -> bool:
        try:
            async with asyncio.timeout(self.ctx.exit.response_timeout):
                while True:
                    parsed = parse_response_head(upstream.buffer)
                    if parsed is None:
                        await upstream.read_more()
                        continue
                    response, used = parsed
                    upstream.consume(used)
                    if 100 <= response.status < 200 and response.status != 101:
                        interim = forward_response_head(
                            response, close=False, client_version=request.version
                        )
                        self.conn.write(interim)
                        self.tick_down(len(interim))
                        continue
                    break
        except TimeoutError:
            raise GatewayError(
                Code.GATEWAY_TIMEOUT, f"No response from {target.authority} in time"
            ) from None
        except ConnectionClosed:
            raise GatewayError(
                Code.TARGET_UNREACHABLE,
                f"{target.authority} closed the connection without answering",
                proxy_status="http_response_incomplete",
            ) from None
        except HttpError as exc:
            raise GatewayError(
                Code.TARGET_UNREACHABLE,
                f"{target.authority} sent an invalid response: {exc.reason}",
                proxy_status="http_protocol_error",
            ) from None
        kind, length = response_body(response, request.method)
        reusable = (
            kind is not BodyKind.UNTIL_CLOSE
            and response_keep_alive(response)
            and request_keep_alive(request)
        )
        out_head = forward_response_head(
            response, close=not reusable, client_version=request.version
        )
        if self.session_header:
            out_head = out_head[:-2] + self.session_header + b"\r\n"
        self.tick_down(len(out_head))
        await self._pump_response_body(upstream, kind, length, out_head)
        return reusable

    async def _pump_response_body(
        self, upstream: Conn, kind: BodyKind, length: int, head: bytes
    ) -> None:
        framer = BodyFramer(kind, length)
        try:
            await pump_message_body(upstream, self.conn, framer, self.tick_down, head)
        except ConnectionClosed:
            if kind is not BodyKind.UNTIL_CLOSE or not upstream.eof:
                raise
