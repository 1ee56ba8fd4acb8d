"""The SOCKS5 edge (RFC 1928 + RFC 1929) over the sans-IO core in `wire.socks5`.

Gates 1-2 answer in the RFC 1929 sub-negotiation (status 0x01 on failure), gates 3-7 in the
CONNECT reply (the catalogue's reply byte). A client offering only "no authentication" is
accepted when its address is on a package's allowlist, and refused with method 0xFF otherwise
(recorded as ERR_AUTH_REQUIRED). The whole negotiation must finish within the handshake
deadline set at accept; the dial has its own (connect) timeout.

The negotiation is one synchronous step function over the sans-IO core (`_step`), with two
drivers: `begin` runs it from the connection's callbacks (`Conn.on_ready`), so the three
round trips of a SOCKS5 handshake cost no task and no future, and a task starts only for
what must await (admission's limits, routing, the dial); `run` awaits the same step function
for connections that already have a task (TLS and PROXY-protocol listeners).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final, Literal

from exitgate.admission import Identity
from exitgate.errors import Code, GatewayError, SocksReply
from exitgate.model import Protocol, Target
from exitgate.net.conn import Conn
from exitgate.net.context import ProxyContext
from exitgate.net.relay import start_tunnel
from exitgate.net.udp_assoc import associate
from exitgate.wire.socks5 import (
    NEED_DATA,
    Credentials,
    Greeting,
    Request,
    Socks5Error,
    Socks5Server,
)

METHOD_NO_AUTH = 0x00
METHOD_USERPASS = 0x02
METHOD_NONE = 0xFF
CMD_CONNECT = 0x01
CMD_UDP_ASSOCIATE = 0x03

log = logging.getLogger("exitgate.server")


class _Wait(enum.Enum):
    WAIT = "WAIT"


_WAIT: Final = _Wait.WAIT  # `_step`: the negotiation needs more bytes
Launch = Callable[[Coroutine[Any, Any, None]], None]


class SocksSession:
    def __init__(self, ctx: ProxyContext, conn: Conn) -> None:
        self.ctx = ctx
        self.conn = conn
        self.client = conn.peername[0]
        self.core = Socks5Server()
        self.udp = False  # the request is a UDP ASSOCIATE (net/udp_assoc.py)
        self.started = 0.0  # time.monotonic() when the CONNECT request arrived
        self.identity: Identity | None = None  # after a successful RFC 1929 sub-negotiation

    def _step(self) -> tuple[Identity, Target] | Literal[_Wait.WAIT] | None:
        """Advance the negotiation over what is buffered: `_WAIT` for more bytes, None when
        the client was turned away (answered here), or the identity and target of a request.
        Socks5Error: the peer broke the protocol (its reply is written by the driver)."""
        buffer = self.conn.buffer
        core = self.core
        if buffer:
            core.receive_data(bytes(buffer))
            buffer.clear()
        while True:
            event = core.next_event()
            if event is NEED_DATA:
                return _WAIT
            if isinstance(event, Greeting):
                if not self._greet(event):
                    return None
            elif isinstance(event, Credentials):
                try:
                    self.identity = self.ctx.admission.authenticate(
                        (event.username, event.password), self.client
                    )
                except GatewayError as err:
                    self.conn.write(core.auth_reply(False))
                    self.ctx.rejected(err, protocol=Protocol.SOCKS5, client=self.client)
                    return None
                self.conn.write(core.auth_reply(True))
            else:
                return self._requested(event)

    def _requested(self, request: Request) -> tuple[Identity, Target] | None:
        if request.command != CMD_CONNECT:
            if request.command != CMD_UDP_ASSOCIATE or self.ctx.udp is None:
                self.conn.write(self.core.reply(SocksReply.COMMAND_NOT_SUPPORTED))
                return None
            self.udp = True
        identity = self.identity
        if identity is None:
            # "no authentication" chosen: the allowlist names the package (gates 1-2 now).
            try:
                identity = self.ctx.admission.authenticate(None, self.client)
            except GatewayError as err:
                self._refuse(err, request.target)
                return None
        return identity, request.target

    def _greet(self, greeting: Greeting) -> bool:
        """Choose a method; False when none is acceptable (the client is turned away)."""
        if METHOD_USERPASS in greeting.methods:
            self.conn.write(self.core.select_method(METHOD_USERPASS))
            return True
        if METHOD_NO_AUTH in greeting.methods and self.ctx.admission.directory.packages_for_ip(
            self.client
        ):
            self.conn.write(self.core.select_method(METHOD_NO_AUTH))
            return True
        self.conn.write(self.core.select_method(METHOD_NONE))
        err = GatewayError(Code.ERR_AUTH_REQUIRED)
        self.ctx.rejected(err, protocol=Protocol.SOCKS5, client=self.client)
        return False

    def _refuse(self, err: GatewayError, target: Target) -> None:
        self.conn.write(self.core.reply(err.socks_reply))
        self.ctx.rejected(
            err,
            protocol=Protocol.SOCKS5,
            client=self.client,
            target=target.authority,
            started=self.started,
        )

    def begin(self, launch: Launch, finish: Callable[[], None]) -> None:
        """Negotiate from the connection's callbacks; `launch` gets the coroutine that serves
        the request, `finish()` is called instead when the connection ends before one."""
        try:
            negotiated = self._step()
        except Socks5Error as exc:
            self.conn.write(exc.reply)
            negotiated = None
        except Exception:
            log.exception("connection handler failed")
            negotiated = None
        if negotiated is _WAIT:
            if self.conn.eof:
                finish()
            else:
                self.conn.on_ready = lambda: self.begin(launch, finish)
            return
        self.conn.clear_deadline()
        if negotiated is None:
            finish()
            return
        launch(self.serve(negotiated))

    async def run(self) -> None:
        try:
            while (negotiated := self._step()) is _WAIT:  # under the deadline set at accept
                await self.conn.read_more()
        except Socks5Error as exc:
            self.conn.write(exc.reply)
            return
        self.conn.clear_deadline()
        if negotiated is not None:
            await self.serve(negotiated)

    async def serve(self, negotiated: tuple[Identity, Target]) -> None:
        """The request, once negotiated: authorize, route, dial, answer, relay."""
        ctx = self.ctx
        identity, target = negotiated
        self.started = time.monotonic()
        if self.udp:
            await associate(ctx, self.conn, self.core, identity, target)
            return
        try:
            admitted = await ctx.admission.authorize(identity, Protocol.SOCKS5, target)
        except GatewayError as err:
            self._refuse(err, target)
            return
        try:
            route = await ctx.connector.connect(admitted)
        except BaseException as exc:
            admitted.lease.release()
            if isinstance(exc, GatewayError):
                self._refuse(exc, target)
                return
            raise
        host, port = route.conn.sockname
        answer = self.core.reply(SocksReply.SUCCEEDED, (host or "0.0.0.0", port))
        early = self.core.trailing_data()
        if early:
            self.conn.buffer[:0] = early
        # owns the leases from here
        start_tunnel(
            ctx, admitted, self.conn, route, answer,
            started=self.started, status=SocksReply.SUCCEEDED,
        )  # fmt: skip
