"""The HTTP proxy edge: CONNECT tunnels and absolute-form forwarding with keep-alive.

Every request on a kept-alive client connection is authenticated, admitted and routed on its
own. The connection to the target is kept for the next request when that request goes to the
same target through the same node, and dropped otherwise. Request body and response are pumped
concurrently, so `Expect: 100-continue` and early answers (413, 401) work without deadlock.

An error answers with the catalogue's response. The connection stays open after an error only
when nothing of the request is left unread (a forwarded request without a body) and the client
did not ask to close; a CONNECT error, or one with a body in flight, closes it.

Malformed framing never escapes as an exception: a broken request body is a plain 400 and a
close; a broken response (head or body) is 502 TARGET_UNREACHABLE while nothing of it reached
the client, else both sides close. Each is one rate-limited WARNING (`ctx.warnings`).

Deadlines: the first head has the handshake deadline set at accept; every later head on a
kept-alive connection has `idle_timeout` to start and `handshake_timeout` to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from exitgate.admission import Admitted
from exitgate.errors import Code, GatewayError, http_error_response
from exitgate.model import Node, Protocol, Target
from exitgate.net.body_pump import BodyError, pump_message_body
from exitgate.net.conn import Conn, ConnectionClosed
from exitgate.net.connect import Route
from exitgate.net.context import ProxyContext, uncounted
from exitgate.net.http_heads import (
    KeptCredentials,
    apply_ban,
    credentials,
    exit_header,
    node_headers,
    plain_response,
    read_request_head,
    session_header,
)
from exitgate.net.relay import start_tunnel
from exitgate.tasks import spawn
from exitgate.wire.http1 import (
    BodyFramer,
    BodyKind,
    HttpError,
    RequestHead,
    absolute_target,
    connect_target,
    forward_request_head,
    forward_response_head,
    parse_response_head,
    request_body,
    request_keep_alive,
    response_body,
    response_keep_alive,
)


class _BodyProgress:
    """Whether a request body went out whole (else the connection cannot carry another), or
    the framing error that stopped it. Written out: a dataclass's generated `__init__` stays
    interpreted in the compiled build, and one is made per forwarded request."""

    __slots__ = ("complete", "error")

    def __init__(self) -> None:
        self.complete = False
        self.error: HttpError | None = None


class _Malformed(Exception):
    """The target's response cannot be relayed (head or body framing)."""

    def __init__(self, reason: str, *, relayed: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.relayed = relayed


class _Kept:
    """The target connection a client connection keeps for its next request."""

    __slots__ = ("conn", "node", "target")

    def __init__(self, node: Node, target: Target, conn: Conn) -> None:
        self.node = node
        self.target = target
        self.conn = conn


class HttpSession:
    """One client connection speaking HTTP/1.1 to the proxy."""

    def __init__(self, ctx: ProxyContext, conn: Conn, client: str = "") -> None:
        self.ctx = ctx
        self.conn = conn
        self.client = client or conn.peername[0]
        self.kept: _Kept | None = None
        self.tick_up: Callable[[int], None] = uncounted
        self.tick_down: Callable[[int], None] = uncounted
        self.session_header = b""
        self._answering = False  # a final response head went (or is going) to the client
        self.started = 0.0  # time.monotonic() when the current request's head arrived
        self.status = 0  # the current forwarded response's status (access log)
        self.admitted: Admitted | None = None  # the request in `_exchange`, for auto-bans
        self.kept_credentials = KeptCredentials()  # gates 1-2 for this connection's requests
        # A client that vanishes mid-forward takes its target connection with it, so a slow
        # target cannot hold the request (and its concurrency slot) until the response timeout.
        conn.on_lost = self._drop_kept

    async def run(self) -> None:
        try:
            proxy = self.ctx.proxy
            finish_within: float | None = None  # the first head: the deadline set at accept
            while True:
                try:
                    head = await read_request_head(self.conn, proxy.max_head_size, finish_within)
                except HttpError as exc:
                    self.conn.write(plain_response(exc.status, exc.reason, str(exc)))
                    return
                self.started = time.monotonic()
                self.conn.clear_deadline()
                if head.method == "CONNECT":
                    await self.tunnel(head)
                    return
                if not await self.forward(head):
                    return
                # A kept-alive connection (after any answer, an error too) waits for the next
                # head up to the idle timeout; once it starts, it has the handshake timeout.
                self.conn.set_deadline(proxy.idle_timeout)
                finish_within = proxy.handshake_timeout
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
        self.ctx.rejected(
            err, protocol=protocol, client=self.client, target=target, started=self.started
        )
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
            # one request per connection: nothing to keep (`KeptCredentials`)
            identity = ctx.admission.authenticate(credentials(head), self.client)
            admitted = await ctx.admission.authorize(identity, Protocol.HTTPS, target)
        except GatewayError as err:
            self._fail(err, target.authority, Protocol.HTTPS, close=True)
            return
        try:
            await apply_ban(ctx, head, admitted)
            route = await ctx.connector.connect(admitted)
        except BaseException as exc:
            admitted.lease.release()
            if isinstance(exc, GatewayError):
                self._fail(exc, target.authority, Protocol.HTTPS, close=True)
                return
            raise
        # `Respond-With` is rare: the exit's socket address is asked for only then
        extra = node_headers(head, route.node, route.conn) if head.get(b"respond-with") else ""
        answer = (
            f"HTTP/1.1 200 Connection established\r\n{extra}".encode("latin-1")
            + session_header(route)
            + exit_header(route)
            + b"\r\n"
        )
        # owns the leases from here
        start_tunnel(ctx, admitted, self.conn, route, answer, started=self.started)

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
            identity = self.kept_credentials.authenticate(ctx.admission, head, self.client)
            admitted = await ctx.admission.authorize(identity, Protocol.HTTP, target)
        except GatewayError as err:
            # a client's close is kept; a throttled address has failed too often: its
            # kept-alive connection goes too
            go_on = (
                not has_body and request_keep_alive(head) and err.code is not Code.AUTH_THROTTLED
            )
            self._fail(err, target.authority, Protocol.HTTP, close=not go_on)
            return go_on
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
            await apply_ban(ctx, head, admitted)
            route = await self._upstream_for(admitted)
        except GatewayError as err:
            go_on = not has_body and request_keep_alive(head)  # a client's close is kept too
            self._fail(err, target.authority, Protocol.HTTP, close=not go_on)
            return go_on
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
        self.session_header = session_header(route) + exit_header(route)
        self.admitted = admitted
        outcome = ""  # how the request ended; "": answered by `_fail` (counted there)

        def stop(err: GatewayError) -> None:
            nonlocal outcome
            outcome = err.code
            err.package_id = admitted.package.id
            ctx.rejected(
                err, protocol=Protocol.HTTP, client=self.client, target=target.authority,
                final=False,
            )  # fmt: skip
            self.conn.abort()
            upstream.abort()

        meter = ctx.meter(admitted, node, stop)
        self.tick_up, self.tick_down = ctx.ticks(meter)
        self._answering = False
        body = _BodyProgress()
        ctx.stats.tunnels_active += 1
        self.status = 0
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
            # a request body that broke after the response: the client is told below
            outcome = outcome or ("ABORTED" if body.error is not None else "OK")
        except _Malformed as bad:
            outcome = outcome or Code.TARGET_UNREACHABLE  # recorded by `_malformed`
            self._drop_kept()
            self._malformed(bad, admitted)
            return False
        except GatewayError as err:
            self._drop_kept()
            if body.error is not None:  # the target went because the request body broke
                outcome = outcome or "ABORTED"
                self._body_failed(body.error)
                return False
            self._fail(err, target.authority, Protocol.HTTP, close=True)
            return False
        except ConnectionClosed:
            outcome = outcome or "ABORTED"  # client or target left before the response ended
            self._drop_kept()
            if body.error is not None:
                self._body_failed(body.error)
            return False
        finally:
            ctx.stats.tunnels_active -= 1
            meter.close()
            if outcome:
                ctx.served(
                    admitted, self.client, route, meter,
                    started=self.started, code=outcome, status=self.status,
                )  # fmt: skip
        if body.error is not None:
            self._body_failed(body.error)
            return False
        if not reusable or (has_body and not body.complete):
            # unread body bytes would be taken for the next request: close instead
            self._drop_kept()
            return False
        return request_keep_alive(head)

    def _kept_for(self, target: Target) -> _Kept | None:
        """The kept target connection, when it is still open and goes to `target`."""
        # Plain statements, not one conditional expression: mypyc 2.4 compiled that one,
        # inside the coroutine below, to a reference-count release of a value never loaded
        # (a crash, flagged by gcc's maybe-uninitialized) once `Target.__eq__` was native.
        kept = self.kept
        if kept is None or kept.conn.closed or kept.conn.eof:
            return None
        if kept.target != target:
            return None
        return kept

    async def _upstream_for(self, admitted: Admitted) -> Route:
        usable = self._kept_for(admitted.target)
        if usable is None:
            self._drop_kept()
        elif (
            admitted.rules.session is None
            and self.ctx.connector.router.memory is None  # spreading: the router chooses
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
        except BodyError as exc:
            # The target has a part of a body that will never end: drop it, which stops the
            # response wait; `_exchange` then answers 400 (or closes, if answering already).
            progress.error = exc.error
            upstream.abort()
            return
        progress.complete = True

    def _body_failed(self, error: HttpError) -> None:
        """A malformed request body: one (rate-limited) warning; 400 (the caller then closes)
        unless the response already started: then the client connection is reset."""
        self.ctx.warnings.warning("malformed request body", self.client, error.reason)
        if self._answering:
            self.conn.abort()  # a response is half out: do not let it look complete
        else:
            text = f"Malformed request body: {error.reason}"
            self.conn.write(plain_response(error.status, error.phrase, text))

    def _malformed(self, bad: _Malformed, admitted: Admitted) -> None:
        """A target sent what cannot be relayed: 502 TARGET_UNREACHABLE while nothing went to
        the client, else both sides close. One warning line (rate-limited per address)."""
        target = admitted.target.authority
        err = GatewayError(
            Code.TARGET_UNREACHABLE,
            f"{target} sent a malformed response: {bad.reason}",
            proxy_status="http_protocol_error",
        )
        err.package_id = admitted.package.id
        self.ctx.warnings.warning("malformed response", self.client, f"{target}: {bad.reason}")
        # recorded for the package like any error, but without `rejected`'s INFO line
        self.ctx.recorder.error(
            err.package_id, err, protocol=Protocol.HTTP, client=self.client, target=target
        )
        self.ctx.usage.error(admitted.package.id, err.code)
        if bad.relayed:
            self.conn.close()
        else:
            self.conn.write(http_error_response(err, close=True))

    async def _relay_response(
        self, upstream: Conn, request: RequestHead, node: Node, target: Target
    ) -> bool:
        # The response head is due within the response timeout: the target connection's own
        # deadline (a float per request on a kept connection) aborts it when it passes.
        upstream.set_deadline(self.ctx.exit.response_timeout)
        try:
            while True:
                parsed = parse_response_head(upstream.buffer)
                if parsed is None:
                    await upstream.read_more()
                    continue
                response, used = parsed
                upstream.consume(used)
                self.status = response.status
                if 100 <= response.status < 200 and response.status != 101:
                    interim = forward_response_head(
                        response, close=False, client_version=request.version
                    )
                    self.conn.write(interim)
                    self.tick_down(len(interim))
                    continue
                break
        except ConnectionClosed:
            if upstream.expired:
                raise GatewayError(
                    Code.GATEWAY_TIMEOUT, f"No response from {target.authority} in time"
                ) from None
            raise GatewayError(
                Code.TARGET_UNREACHABLE,
                f"{target.authority} closed the connection without answering",
                proxy_status="http_response_incomplete",
            ) from None
        except HttpError as exc:
            raise _Malformed(exc.reason, relayed=False) from None
        finally:
            upstream.clear_deadline()
        if self.admitted is not None:
            await self.ctx.connector.response_status(self.admitted, node, response.status)
        try:
            kind, length = response_body(response, request.method)
        except HttpError as exc:
            raise _Malformed(exc.reason, relayed=False) from None
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
        self._answering = True
        await self._pump_response_body(upstream, kind, length, out_head)
        return reusable

    async def _pump_response_body(
        self, upstream: Conn, kind: BodyKind, length: int, head: bytes
    ) -> None:
        framer = BodyFramer(kind, length)
        try:
            await pump_message_body(upstream, self.conn, framer, self.tick_down, head)
        except BodyError as exc:
            raise _Malformed(exc.error.reason, relayed=exc.relayed) from None
        except ConnectionClosed:
            if kind is not BodyKind.UNTIL_CLOSE or not upstream.eof:
                raise
