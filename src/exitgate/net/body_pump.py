"""Relaying one HTTP message body, verbatim, as far as its framing says.

`pump_message_body` moves bytes from one `Conn` to another with a `BodyFramer` deciding where
the body ends; it counts exactly what it writes, and turns a framing error into `BodyError`,
which says whether anything of the message already went out (so the caller knows whether an
error answer is still possible).
"""

from __future__ import annotations

from collections.abc import Callable

from exitgate.net.conn import Conn
from exitgate.wire.http1 import BodyFramer, HttpError


class BodyError(Exception):
    """A body's framing broke mid-relay. `relayed`: some of the message (its head, say)
    already went out, so the receiver cannot be given an error answer any more."""

    def __init__(self, error: HttpError, *, relayed: bool) -> None:
        super().__init__(error.reason)
        self.error = error
        self.relayed = relayed


async def pump_message_body(
    src: Conn, dst: Conn, framer: BodyFramer, tick: Callable[[int], None], head: bytes = b""
) -> None:
    """Relay one message body verbatim from `src` to `dst`, as far as `framer` says; bytes
    past the body stay in `src.buffer` for the next message. ConnectionClosed when either side
    goes away first (for an until-close body that is its end).

    `head` goes out with the first body bytes in one write: one send syscall per small
    response instead of two, the largest single cost of forwarding. What is written is what
    `tick` counts, head included, so a body cut short is metered exactly as far as it went.
    Malformed framing raises `BodyError` (nothing of the bad part is relayed).
    """
    buffer = src.buffer
    if head and (framer.done or not buffer):
        dst.write(head)
        tick(len(head))
        head = b""
    while not framer.done:
        if not buffer:
            await src.read_more()
            continue
        try:
            n = framer.feed(buffer)
        except HttpError as exc:
            raise BodyError(exc, relayed=not head) from None
        if n == len(buffer):
            chunk = bytes(buffer)
            buffer.clear()
        else:
            chunk = bytes(buffer[:n])
            src.consume(n)
        if head:
            tick(len(head))
            chunk = head + chunk
            head = b""
        dst.write(chunk)
        tick(n)
        await dst.drain()
